"""The train.py recipes (YAML files beside this module), shipped as package data: a clone and an installed package
read the same files. ``mlit-config`` (:mod:`timm_mlit.recipes`) lists, prints and writes them by name;
:func:`recipe_path` finds one by name or path, :func:`recipe_dataset` says which data it reads (its header's
``# Dataset:`` line), and :data:`TRAIN_PY_KEYS` are the keys a recipe may hold."""
import os
from pathlib import Path
from typing import FrozenSet, List, Union

__all__ = ['RECIPE_DIR', 'TRAIN_PY_KEYS', 'list_recipes', 'recipe_path', 'recipe_dataset']

RECIPE_DIR = Path(__file__).resolve().parent
_SUFFIX = '.yaml'

# every argument of timm's train.py by its dest name (pytorch-image-models train.py at commit aa4b5850,
# 2026-08-08): what a recipe's keys must be (train.py's parser.set_defaults(**yaml) ignores any other key)
TRAIN_PY_KEYS: FrozenSet[str] = frozenset((
    'aa', 'amp', 'amp_dtype', 'aug_repeats', 'aug_splits', 'batch_size', 'bce_loss', 'bce_pos_weight', 'bce_sum',
    'bce_target_thresh', 'bn_eps', 'bn_momentum', 'channels_last', 'checkpoint_hist', 'class_map', 'clip_grad',
    'clip_mode', 'color_jitter', 'color_jitter_prob', 'config', 'cooldown_epochs', 'crop_pct', 'cutmix',
    'cutmix_minmax', 'data', 'data_dir', 'dataset', 'dataset_download', 'dataset_trust_remote_code', 'decay_epochs',
    'decay_milestones', 'decay_rate', 'device', 'device_modules', 'dist_bn', 'distill_loss_weight', 'drop',
    'drop_block', 'drop_connect', 'drop_path', 'epoch_repeats', 'epochs', 'eval_metric', 'experiment', 'fast_norm',
    'fuser', 'gaussian_blur_prob', 'gp', 'grad_accum_steps', 'grad_checkpointing', 'grayscale_prob',
    'head_init_bias', 'head_init_scale', 'hflip', 'img_size', 'in_chans', 'initial_checkpoint', 'input_img_mode',
    'input_key', 'input_size', 'interpolation', 'jsd_loss', 'kd_distill_type', 'kd_loss_type', 'kd_model_name',
    'kd_student_feature_dim', 'kd_teacher_feature_dim', 'kd_temperature', 'kd_token_distill_type', 'layer_decay',
    'layer_decay_min_scale', 'layer_decay_no_opt_scale', 'local_rank', 'log_interval', 'log_wandb', 'lr', 'lr_base',
    'lr_base_scale', 'lr_base_size', 'lr_cycle_decay', 'lr_cycle_limit', 'lr_cycle_mul', 'lr_k_decay', 'lr_noise',
    'lr_noise_pct', 'lr_noise_std', 'mean', 'min_lr', 'mixup', 'mixup_mode', 'mixup_off_epoch', 'mixup_prob',
    'mixup_switch_prob', 'model', 'model_dtype', 'model_ema', 'model_ema_decay', 'model_ema_force_cpu',
    'model_ema_warmup', 'model_kwargs', 'momentum', 'naflex_loader', 'naflex_loss_scale', 'naflex_max_seq_len',
    'naflex_patch_size_probs', 'naflex_patch_sizes', 'naflex_patchify_channels_first', 'naflex_train_seq_lens',
    'no_aug', 'no_ddp_bb', 'no_prefetcher', 'no_resume_opt', 'num_classes', 'opt', 'opt_betas', 'opt_eps',
    'opt_kwargs', 'output', 'patience_epochs', 'pin_mem', 'pretrained', 'pretrained_path', 'ratio', 'recount',
    'recovery_interval', 'remode', 'reprob', 'resplit', 'resume', 'save_images', 'scale', 'sched',
    'sched_on_updates', 'seed', 'smoothing', 'split_bn', 'start_epoch', 'std', 'sync_bn', 'synchronize_step',
    'target_key', 'task_loss_weight', 'torchcompile', 'torchcompile_mode', 'torchscript', 'train_batch_sizes',
    'train_batches_per_epoch', 'train_crop_mode', 'train_img_sizes', 'train_interpolation', 'train_num_samples',
    'train_size_probs', 'train_size_random_mix', 'train_size_schedule', 'train_size_schedule_spread', 'train_split',
    'tta', 'use_multi_epochs_loader', 'val_interval', 'val_num_samples', 'val_split', 'validation_batch_size',
    'variable_batch_loss_scale', 'vflip', 'wandb_project', 'wandb_resume_id', 'wandb_tags', 'warmup_epochs',
    'warmup_lr', 'warmup_prefix', 'weight_decay', 'worker_seeding', 'workers'
))


def list_recipes() -> List[str]:
    """The names (file stems) of the shipped recipes, sorted."""
    return sorted(p.stem for p in RECIPE_DIR.glob(f'*{_SUFFIX}'))


def recipe_path(name_or_path: Union[str, os.PathLike]) -> Path:
    """The YAML file for a recipe name (``table6_scratch_cifar10``, with or without ``.yaml``) or an existing path.

    An existing file wins over a shipped recipe of the same name. Raises ``FileNotFoundError`` naming the input and the
    shipped names when it is neither."""
    text = os.fspath(name_or_path)
    if not text:
        raise ValueError('recipe: got an empty name; pass a recipe name (mlit-config --list) or a YAML file path')
    given = Path(text).expanduser()
    if given.is_file():
        return given
    stem = text[:-len(_SUFFIX)] if text.endswith(_SUFFIX) else text
    if os.sep not in stem and '/' not in stem:
        shipped = RECIPE_DIR / f'{stem}{_SUFFIX}'
        if shipped.is_file():
            return shipped
    raise FileNotFoundError(
        f"recipe {text!r}: no such file and no shipped recipe of that name. Shipped recipes (mlit-config --list): "
        f"{', '.join(list_recipes())}; or pass the path of a YAML file.")


_DATASET = '# Dataset:'


def recipe_dataset(name_or_path: Union[str, os.PathLike]) -> str:
    """The data a recipe reads, from its header's ``# Dataset: ...`` line (continued on the ``#   `` lines below it);
    ``''`` when it has none (a user's own file)."""
    lines = recipe_path(name_or_path).read_text(encoding='utf-8').splitlines()
    for i, line in enumerate(lines):
        if line.startswith(_DATASET):
            text = [line[len(_DATASET):].strip()]
            for more in lines[i + 1:]:
                if not more.startswith('#   '):
                    break
                text.append(more[1:].strip())
            return ' '.join(text)
    return ''
