"""The train.py recipes (timm_mlit/configs, shipped in the wheel): only train.py's own arguments, the paper's
numbers, and the library calls train.py makes with them (CI has no train.py; docs/training.md shows the real train.py
runs)."""
import argparse
import math

import pytest
import torch
import torch.nn as nn
import timm
import yaml
from timm.data import create_dataset, create_loader, resolve_data_config
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.task import ClassificationTask
from timm.utils import ModelEmaV3

import timm_mlit
from helpers import train_epochs
from timm_mlit.recipes import RECIPE_DIR, recipe_path
from train_py_args import TRAIN_PY_DEFAULTS

CONFIGS = RECIPE_DIR
PAPER = sorted(CONFIGS.glob('table*.yaml'))  # mLiT's Tables 4-6
PRETRAIN = sorted(CONFIGS.glob('*_pretrain_mae.yaml'))  # pretrain_mae.py's, not train.py's
ALL = [p for p in sorted(CONFIGS.glob('*.yaml')) if p not in PRETRAIN]  # train.py's
OWN = [CONFIGS / 'own_data.yaml']  # your own ImageFolder (tests/test_own_data.py)
ZOO = [p for p in ALL if p not in PAPER + OWN]  # Mae-ViT-C100 and Mobile V-MoE

# Table 4, and the deviations of Tables 5 and 6: batch, base lr, layer decay, warm-up epochs, AutoAugment policy
TABLE4 = dict(batch_size=448, lr_base=5e-3, layer_decay=0.9, warmup_epochs=20, aa='cifar10', epochs=300)
TABLE5 = {
    'flowers102': (16, 10e-3, 0.9, 10, 'cifar10'), 'svhn': (256, 2.5e-3, 0.9, 10, 'svhn'),
    'cifar10': (256, 2.5e-3, 0.8, 5, 'cifar10'), 'cifar100': (128, 5e-3, 0.9, 5, 'cifar10')}
TABLE6 = {
    'flowers102': (16, 10e-3, 1.0, 10, 'cifar10'), 'svhn': (256, 1e-3, 1.0, 10, 'svhn'),
    'cifar10': (256, 1e-3, 1.0, 5, 'cifar10'), 'cifar100': (128, 2e-3, 1.0, 5, 'cifar10')}
NUM_CLASSES = {'cifar100': 100, 'cifar10': 10, 'svhn': 10, 'flowers102': 102}


def _cfg(path):
    with open(path) as f:
        return yaml.safe_load(f)


def _train_py_args(path, **overrides):
    """train.py's ``args``: its defaults, the YAML on top (parser.set_defaults), command-line overrides last."""
    args = argparse.Namespace(**TRAIN_PY_DEFAULTS)
    vars(args).update(_cfg(path))
    vars(args).update(overrides)
    return args


def test_there_is_a_config_per_table_and_dataset():
    names = {p.stem for p in PAPER}
    assert names == {'table4_finetune_cifar100'} | {f'table5_transfer_{d}' for d in TABLE5} | {
        f'table6_scratch_{d}' for d in TABLE6}


@pytest.mark.parametrize('path', ALL, ids=lambda p: p.stem)
def test_every_key_is_a_train_py_argument(path):
    unknown = set(_cfg(path)) - set(TRAIN_PY_DEFAULTS)
    assert not unknown, f'{path.name}: not train.py arguments: {sorted(unknown)}'


@pytest.mark.parametrize('path', PAPER, ids=lambda p: p.stem)
def test_configs_hold_the_papers_numbers(path):
    cfg = _cfg(path)
    table, dataset = path.stem.split('_')[0], path.stem.split('_')[-1]
    if table == 'table4':
        want = TABLE4
    else:
        batch, lr, decay, warmup, aa = (TABLE5 if table == 'table5' else TABLE6)[dataset]
        want = dict(batch_size=batch, lr_base=lr, layer_decay=decay, warmup_epochs=warmup, aa=aa, epochs=100)
    for key, value in want.items():
        assert cfg[key] == pytest.approx(value) if isinstance(value, float) else cfg[key] == value, key
    # common to all (Table 4): AdamW, wd 0.05, cosine, linear LR scaling, flip, RRC [0.8, 1], mean = std = 0.5, fp16
    assert cfg['opt'] == 'adamw' and cfg['weight_decay'] == 0.05 and cfg['sched'] == 'cosine'
    assert cfg['lr_base_size'] == 256 and cfg['lr_base_scale'] == 'linear' and 'lr' not in cfg
    assert cfg['hflip'] == 0.5 and cfg['scale'] == [0.8, 1.0]
    assert cfg['mean'] == [0.5] * 3 and cfg['std'] == [0.5] * 3
    assert cfg['amp'] is True and cfg['amp_dtype'] == 'float16'
    assert cfg['num_classes'] == NUM_CLASSES[dataset]
    assert cfg['pretrained'] is (table != 'table6')
    assert cfg['device_modules'] == ['timm_mlit'] and cfg['model'].startswith('mlit_')
    # values the paper leaves open are set, not left to timm's defaults
    assert cfg['smoothing'] == 0.0 and cfg['model_ema'] is False and cfg['drop_path'] == 0.0
    assert cfg['color_jitter'] == 0.0 and cfg['mixup'] == 0.0 and cfg['cutmix'] == 0.0 and cfg['reprob'] == 0.0
    assert cfg['model_kwargs'] == {'expert_drop_rate': 0.1, 'expert_drop_mode': 'expert'}
    text = path.read_text()
    for key in ('smoothing', 'model_ema', 'drop_path', 'color_jitter', 'train_interpolation', 'warmup_lr', 'min_lr'):
        line = next(l for l in text.splitlines() if l.startswith(f'{key}:'))
        assert '#' in line, f'{path.name}: {key} needs its reason'


def _setup_like_train_py(args, data_dir):
    """The library calls of train.py's main(), in its order, with its arguments."""
    model = timm.create_model(
        args.model, pretrained=args.pretrained, in_chans=3, num_classes=args.num_classes, drop_rate=args.drop,
        drop_path_rate=args.drop_path, drop_block_rate=args.drop_block, global_pool=args.gp,
        bn_momentum=args.bn_momentum, bn_eps=args.bn_eps, **args.model_kwargs)
    data_config = resolve_data_config(vars(args), model=model)
    dataset = create_dataset(
        args.dataset, root=str(data_dir), split=args.train_split, is_training=True, batch_size=args.batch_size,
        download=False)
    loader = create_loader(
        dataset, input_size=data_config['input_size'], batch_size=args.batch_size, is_training=True,
        no_aug=args.no_aug, re_prob=args.reprob, scale=args.scale, ratio=args.ratio, hflip=args.hflip,
        vflip=args.vflip, color_jitter=args.color_jitter, auto_augment=args.aa,
        interpolation=args.train_interpolation, mean=data_config['mean'], std=data_config['std'], num_workers=0,
        use_prefetcher=False)
    if args.lr is None:  # train.py's LR rule
        batch_ratio = args.batch_size * args.grad_accum_steps / args.lr_base_size
        if args.lr_base_scale == 'sqrt':
            batch_ratio = batch_ratio ** 0.5
        args.lr = args.lr_base * batch_ratio
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args))
    scheduler, num_epochs = create_scheduler_v2(
        optimizer, **scheduler_kwargs(args, decreasing_metric=False), updates_per_epoch=len(loader))
    assert num_epochs == args.epochs  # warm-up inside the epochs, as the tables count them
    ema = ModelEmaV3(model, decay=args.model_ema_decay) if args.model_ema else None
    task = ClassificationTask(model, nn.CrossEntropyLoss(), verbose=False)
    return model, data_config, loader, optimizer, scheduler, ema, task


@pytest.fixture
def cifar10_folder(cifar10_dir, tmp_path):
    """The CIFAR-10 recipes read an ImageFolder tree; made from torchvision's files the way users make it."""
    from timm_mlit.data.prepare import prepare_cifar10
    return prepare_cifar10(str(tmp_path / 'cifar10_folder'), root=str(cifar10_dir))


def test_library_path_of_train_py_with_a_recipe(cifar10_folder):
    args = _train_py_args(
        recipe_path('table5_transfer_cifar10'), pretrained=False, batch_size=16, amp=False, model_ema=True,
        model_ema_decay=0.9)  # the recipe named as a user names it
    model, data_config, loader, optimizer, scheduler, ema, task = _setup_like_train_py(args, cifar10_folder)
    assert data_config['input_size'] == (3, 36, 36) and data_config['mean'] == (0.5, 0.5, 0.5)
    assert any(isinstance(t, timm_mlit.data.auto_augment.AutoAugment) for t in loader.dataset.transform.transforms)
    assert args.lr == pytest.approx(2.5e-3 * 16 / 256)  # linear scaling, not train.py's sqrt for AdamW
    scales = sorted({g['lr_scale'] for g in optimizer.param_groups})
    depth = len(model.blocks)
    assert scales == pytest.approx(sorted(0.8 ** i for i in range(depth + 2)))  # Table 5 CIFAR-10: decay 0.8
    ema_before = ema.module.blocks[0].mlp.experts.w.weight.clone()

    model.train()
    for step, (x, y) in enumerate(loader):
        result = task(x, y)
        assert torch.isfinite(result['loss']) and result['moe_loss'] > 0
        optimizer.zero_grad()
        result['loss'].backward()
        optimizer.step()
        scheduler.step_update(num_updates=step + 1)
        ema.update(model, step=step + 1)
        if step == 2:
            break
    assert not torch.equal(ema.module.blocks[0].mlp.experts.w.weight, ema_before)
    assert ema.module.moe_loss().item() == 0.0  # the EMA copy never carries the live loss
    assert optimizer.param_groups[0]['lr'] < args.lr  # still warming up from 0


def test_from_scratch_training_learns_and_keeps_experts_busy(cifar10_folder, capsys):
    """The Table 6 recipe from scratch (AutoAugment off, a short constant LR so that 60 steps show learning)."""
    torch.manual_seed(0)
    args = _train_py_args(
        CONFIGS / 'table6_scratch_cifar10.yaml', batch_size=32, amp=False, aa=None, warmup_epochs=0, lr=2e-3,
        epochs=20)
    model, _, loader, optimizer, _, _, task = _setup_like_train_py(args, cifar10_folder)
    loads = []
    losses = train_epochs(task, optimizer, loader, 8, after_step=lambda: loads.append(model.expert_load()))
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    with capsys.disabled():
        print(f'\nfrom-scratch run: {len(losses)} steps, loss {first:.3f} -> {last:.3f}; expert load per layer:')
        for name, share in loads[-1].items():
            print(f'  {name:<14} ' + ' '.join(f'{s:.2f}' for s in share.tolist()))
    assert last < first - 0.5 and last < math.log(10) - 0.5
    for name in loads[-1]:
        mean_share = torch.stack([step[name] for step in loads[-10:]]).mean(0)
        assert mean_share.min() > 0.03, f'{name}: an expert fell out of use ({mean_share.tolist()})'


def test_the_zoos_other_systems_have_train_py_configs_beside_mlits():
    assert {p.stem for p in ZOO} == {
        'maevit_c100_finetune_cifar100', 'mobile_vmoe_superclass_cifar100', 'mobile_vmoe_end_to_end_cifar100',
        'mobile_vmoe_imagenet'}
    assert {p.stem for p in PRETRAIN} == {'maevit_c100_pretrain_mae'}
    for path in ZOO:
        cfg = _cfg(path)
        assert cfg['device_modules'] == ['timm_mlit']
        assert timm.is_model(cfg['model']), path.name
    # side by side: the CIFAR runs share mLiT's optimisation and augmentation
    table4, table6 = _cfg(CONFIGS / 'table4_finetune_cifar100.yaml'), _cfg(CONFIGS / 'table6_scratch_cifar100.yaml')
    for path, base in [('maevit_c100_finetune_cifar100', table4), ('mobile_vmoe_superclass_cifar100', table6),
                       ('mobile_vmoe_end_to_end_cifar100', table6)]:
        cfg = _cfg(CONFIGS / f'{path}.yaml')
        assert {k: v for k, v in cfg.items() if k not in ('model', 'model_kwargs', 'pretrained')} == {
            k: v for k, v in base.items() if k not in ('model', 'model_kwargs', 'pretrained')}, path
    guided = _cfg(CONFIGS / 'mobile_vmoe_superclass_cifar100.yaml')['model_kwargs']
    assert guided['superclass_map'] == 'cifar100' and guided['router_loss_weight'] == 0.3
    imagenet = _cfg(CONFIGS / 'mobile_vmoe_imagenet.yaml')
    assert imagenet['model_kwargs']['router_loss_weight'] == 0.3 and imagenet['epochs'] == 300  # DeiT recipe


def test_maevit_pretraining_config_is_pretrain_maes():
    from timm_mlit.mae.pretrain import parse_args
    args = parse_args(['--config', str(CONFIGS / 'maevit_c100_pretrain_mae.yaml')])
    assert args.model == 'maevit_c100' and args.decoder_pos == 'separate'  # its own decoder table (the paper)
    assert args.model_kwargs['decoder_num_experts'] == 0
    by_name = vars(parse_args(['--config', 'maevit_c100_pretrain_mae']))  # mlit-pretrain takes the recipe's name
    assert by_name.pop('config') == 'maevit_c100_pretrain_mae' and by_name == {
        k: v for k, v in vars(args).items() if k != 'config'}


def test_pretrain_names_the_shipped_recipes_for_an_unknown_config(capsys):
    from timm_mlit.mae.pretrain import parse_args
    with pytest.raises(SystemExit):
        parse_args(['--config', 'maevit_c100_pretrain'])
    err = capsys.readouterr().err
    assert "--config maevit_c100_pretrain: recipe 'maevit_c100_pretrain': no such file" in err
    assert 'maevit_c100_pretrain_mae' in err


def test_mobile_vmoe_config_trains_through_train_pys_library_path(tmp_path, monkeypatch):
    """CIFAR-100's coarse labels guide the router: 20 experts, the router loss in the task's loss."""
    import torchvision.datasets.cifar
    from conftest import write_cifar
    monkeypatch.setattr(torchvision.datasets.cifar, 'check_integrity', lambda *args, **kwargs: True)
    data = write_cifar(tmp_path / 'c100', num_classes=100, n_train=64, n_test=16)
    args = _train_py_args(
        CONFIGS / 'mobile_vmoe_superclass_cifar100.yaml', model='mobile_vmoe_6x64_patch3_36', batch_size=16,
        amp=False, aa=None)
    model, data_config, loader, optimizer, _, _, task = _setup_like_train_py(args, data)
    assert model.num_experts == 20 and data_config['input_size'] == (3, 36, 36)
    losses = train_epochs(task, optimizer, loader, 1)
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    x, y = next(iter(loader))
    result = task(x, y)
    assert result['router_loss'] > 0 and 0 <= result['router_acc'] <= 1


FLOWERS = [p for p in PAPER if p.stem.endswith('flowers102')]


def _eval_transform_like_train_py(args, model):
    """train.py's evaluation transform: create_loader(is_training=False, input_size, interpolation, mean, std,
    crop_pct) from resolve_data_config; train.py passes no crop_mode, so timm's default 'center' applies."""
    from timm.data import create_transform
    data_config = resolve_data_config(vars(args), model=model)
    return create_transform(
        data_config['input_size'], is_training=False, interpolation=data_config['interpolation'],
        mean=data_config['mean'], std=data_config['std'], crop_pct=data_config['crop_pct'])


@pytest.mark.parametrize('path', FLOWERS, ids=lambda p: p.stem)
def test_flowers102_images_are_resized_to_36x36_whole(path, tmp_path, monkeypatch):
    """Table 8: every image resized to 36x36, Flowers102 included. A non-square photo prepared as the recipe says
    (mlit-prepare-data flowers102 --size 36) reaches the model as the whole photo: its four differently coloured
    corners survive train.py's evaluation transform; the raw photo would lose its left and right quarters."""
    from PIL import Image
    from scipy.io import savemat
    import numpy as np
    import torchvision.datasets.flowers102
    from timm_mlit.data.prepare import prepare_flowers102
    # torchvision checks the real files' MD5 sums, which synthetic files cannot match; only that is off
    monkeypatch.setattr(torchvision.datasets.flowers102, 'check_integrity', lambda *args, **kwargs: True)
    text = path.read_text()
    assert 'mlit-prepare-data flowers102 --size 36' in text
    args = _train_py_args(path)
    assert args.crop_pct == 1.0 and args.scale == [0.8, 1.0]
    raw = tmp_path / 'raw'
    jpg = raw / 'flowers-102' / 'jpg'
    jpg.mkdir(parents=True)
    photo = np.zeros((500, 750, 3), np.uint8)  # 3:2 landscape, black, a 100-pixel square of colour in each corner
    photo[:100, :100], photo[:100, -100:], photo[-100:, :100], photo[-100:, -100:] = (
        (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255))
    for i in range(1, 7):
        Image.fromarray(photo).save(jpg / f'image_{i:05d}.jpg', format='PNG')  # lossless, under torchvision's name
    savemat(raw / 'flowers-102' / 'imagelabels.mat', {'labels': np.array([[1, 2, 3, 1, 2, 3]])})
    savemat(raw / 'flowers-102' / 'setid.mat', {
        'trnid': np.array([[1, 2]]), 'valid': np.array([[3, 4]]), 'tstid': np.array([[5, 6]])})
    out = prepare_flowers102(str(raw), str(tmp_path / 'flowers'), size=36)
    prepared = sorted((out / 'validation').rglob('*.png'))[0]
    model = timm.create_model(args.model, num_classes=args.num_classes, **args.model_kwargs)
    transform = _eval_transform_like_train_py(args, model)
    x = transform(Image.open(prepared).convert('RGB'))
    assert x.shape == (3, 36, 36)
    corners = {(0, 0): (1, -1, -1), (0, -1): (-1, 1, -1), (-1, 0): (-1, -1, 1), (-1, -1): (1, 1, 1)}
    for (r, c), rgb in corners.items():  # normalised with mean = std = 0.5: 255 -> 1, 0 -> -1
        assert torch.allclose(x[:, r, c], torch.tensor(rgb, dtype=x.dtype), atol=0.05), (r, c, x[:, r, c])
    # the raw photo through the same transform: the 750-pixel side is center-cropped to 500, its corners are gone
    cut = transform(Image.fromarray(photo))
    assert cut.shape == (3, 36, 36) and torch.allclose(cut[:, 0, 0], torch.tensor((-1., -1., -1.)), atol=0.05)


@pytest.mark.parametrize('path', ALL, ids=lambda p: p.stem)
def test_cosine_is_not_shifted_past_the_warmup(path):
    """warmup_prefix false: the run is `epochs` long, the warm-up climbs linearly from warmup_lr and the cosine takes
    over at t = warmup/epochs (the value each recipe's comment states), not at its start."""
    args = _train_py_args(path, lr=1.0)
    assert args.warmup_prefix is False and 'not shifted past the warm-up' in path.read_text()
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    updates = 10
    scheduler, num_epochs = create_scheduler_v2(
        optimizer, **scheduler_kwargs(args, decreasing_metric=False), updates_per_epoch=updates)
    assert num_epochs == args.epochs
    warm, total = args.warmup_epochs, args.epochs
    t = warm * updates if args.sched_on_updates else warm
    lr = scheduler._get_lr(t)[0]
    want = args.min_lr + 0.5 * (1 - args.min_lr) * (1 + math.cos(math.pi * warm / total))
    assert lr == pytest.approx(want)
    assert f'{100 * 0.5 * (1 + math.cos(math.pi * warm / total)):.1f}% of the peak' in path.read_text()
    before = scheduler._get_lr(t - 1)[0]  # the warm-up's last value: (t-1)/t of the way to the peak
    assert before == pytest.approx(args.warmup_lr + (t - 1) / t * (1 - args.warmup_lr))


def test_the_package_knows_the_same_train_py_keys_as_these_tests():
    """mlit-config checks a user's recipe against timm_mlit.configs.TRAIN_PY_KEYS, a copy of train.py's arguments:
    it must not drift from the record these tests build train.py's args from."""
    from timm_mlit.configs import TRAIN_PY_KEYS
    assert TRAIN_PY_KEYS == frozenset(TRAIN_PY_DEFAULTS)
