"""train_scripts/pretrain_mae.py end to end: it learns, writes what a long run needs, resumes exactly after a kill,
and hands a timm-loadable encoder to fine-tuning."""
import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import timm
from safetensors import safe_open
from timm.task import ClassificationTask

from helpers import train_epochs
from timm_mlit import _io
from timm_mlit.mae import checkpoint as ckpt
from timm_mlit.mae.pretrain import main as pretrain_main
from timm_mlit.mae.pretrain import parse_args

SCRIPT = Path(__file__).resolve().parents[1] / 'train_scripts' / 'pretrain_mae.py'
SMALL = ['--model', 'mlit_xxs', '--dataset', '', '--workers', '0', '--device', 'cpu', '--no-progress']


def _steps(run: Path):
    with open(run / 'steps.csv') as f:
        return [(int(r['epoch']), int(r['step']), float(r['loss'])) for r in csv.DictReader(f)]


def test_table3_defaults_per_size_and_yaml_config(tmp_path):
    args = parse_args(['--model', 'mlit_s'])
    assert args.lr_base == 3e-4 and args.weight_decay == 0.05 and args.opt == 'adamw' and args.scale == [0.6, 1.0]
    assert args.hflip == 0.5 and args.mean == [0.5] * 3 and args.std == [0.5] * 3 and args.mask_ratio == 0.75
    assert (args.alpha, args.beta) == (0.1, 0.5)
    from timm_mlit.mae.arguments import TABLE3, fill_defaults
    assert TABLE3 == {'mlit_s': dict(epochs=4000, batch_size=840), 'mlit_xs': dict(epochs=6000, batch_size=1280),
                      'mlit_xxs': dict(epochs=8000, batch_size=1280)}
    args.world_size = 1
    fill_defaults(args)
    assert (args.epochs, args.batch_size, args.warmup_epochs) == (4000, 840, 200)  # warm-up 5%: Table 3's 200
    assert args.lr == pytest.approx(3e-4 * 840 / 256)
    cfg = tmp_path / 'c.yaml'
    cfg.write_text('model: mlit_xs\nepochs: 12\nbatch_size: 8\n')
    args = parse_args(['--config', str(cfg), '--epochs', '20'])
    assert (args.model, args.epochs, args.batch_size) == ('mlit_xs', 20, 8)  # the command line wins
    cfg.write_text('not_an_option: 1\n')
    with pytest.raises(SystemExit):
        parse_args(['--config', str(cfg)])


def test_pretraining_learns_and_writes_what_a_long_run_needs(smooth_folder, tmp_path):
    """200 updates on smooth images: the reconstruction loss ends well below predicting the mean."""
    torch.manual_seed(0)
    run = pretrain_main(SMALL + [
        '--data-dir', str(smooth_folder), '--batch-size', '16', '--epochs', '25', '--lr', '2e-3',
        '--warmup-epochs', '2', '--output', str(tmp_path), '--experiment', 'run', '--recon-interval', '12',
        '--plot-interval', '12', '--checkpoint-interval', '12'])
    from timm.data import create_dataset, create_transform
    plain = create_dataset('', root=str(smooth_folder), split='train', transform=create_transform(
        36, crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3))
    pixels = torch.stack([plain[i][0] for i in range(len(plain))])
    predict_the_mean = (pixels - pixels.mean(0)).pow(2).mean().item()
    history = [json.loads(line) for line in (run / 'log.jsonl').read_text().splitlines()]
    assert len(history) == 25 and len(_steps(run)) == 25 * 8
    first, last = history[0]['mse_masked'], history[-1]['mse_masked']
    print(f'\nMAE on smooth images: masked MSE {first:.4f} -> {last:.4f}; predicting the mean: {predict_the_mean:.4f}')
    assert last < 0.5 * predict_the_mean and last < 0.5 * first
    for name in ('log.csv', 'loss_curve.png', 'expert_load.png', 'recon_epoch00011.png', 'recon_epoch00024.png',
                 'last.pth', 'encoder.safetensors'):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    assert len(history[-1]['expert_load']) == 9 + 4
    assert not list(run.glob('*.tmp-*'))


def test_kill_mid_epoch_then_resume_equals_an_uninterrupted_run(image_folder, tmp_path):
    common = SMALL + ['--data-dir', str(image_folder), '--batch-size', '16', '--epochs', '4', '--lr', '1e-3',
                      '--recon-interval', '100', '--plot-interval', '100', '--seed', '7']
    straight = pretrain_main(common + ['--output', str(tmp_path / 'a'), '--experiment', 'run'])

    run = tmp_path / 'b' / 'run'
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT)] + common + ['--output', str(tmp_path / 'b'), '--experiment', 'run'],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:  # wait for the epoch-2 checkpoint, then kill at once
        if (run / 'log.csv').is_file() and len((run / 'log.csv').read_text().splitlines()) >= 3 \
                and (run / 'last.pth').is_file() and torch.load(run / 'last.pth', weights_only=True)['epoch'] >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, 'the run ended before it could be killed'
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = ckpt.load_checkpoint(run / 'last.pth')['epoch']
    assert killed_at < 4
    (run / 'last.pth.tmp-99999').write_bytes(b'half a checkpoint')  # what a kill during a save leaves

    pretrain_main(common + ['--output', str(tmp_path / 'b'), '--resume', 'auto', '--experiment', 'run'])
    assert _steps(run) == _steps(straight)  # every update's loss, before and after the kill
    assert not list(run.glob('*.tmp-*'))  # the dead process's half-written file is gone
    a = torch.load(straight / 'last.pth', weights_only=True)
    b = torch.load(run / 'last.pth', weights_only=True)
    assert a['epoch'] == b['epoch'] == 4
    for name, value in a['model'].items():
        assert torch.equal(value, b['model'][name]), name
    with open(straight / 'log.csv') as fa, open(run / 'log.csv') as fb:
        assert [r['loss'] for r in csv.DictReader(fa)] == [r['loss'] for r in csv.DictReader(fb)]


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / 'last.pth'
    ckpt.save_checkpoint(path, {'epoch': 1})

    def dies_halfway(obj, f):
        Path(f).write_bytes(b'\x80partial')
        raise KeyboardInterrupt('killed while writing')

    monkeypatch.setattr(torch, 'save', dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(path, {'epoch': 2})
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {'epoch': 1}
    assert list(tmp_path.iterdir()) == [path]


def test_resume_errors_say_what_is_wrong(image_folder, tmp_path):
    with pytest.raises(ckpt.CheckpointError, match='No checkpoint'):
        ckpt.load_checkpoint(tmp_path / 'missing.pth')
    bad = tmp_path / 'bad.pth'
    bad.write_bytes(b'truncated')
    with pytest.raises(ckpt.CheckpointError, match='not a readable checkpoint'):
        ckpt.load_checkpoint(bad)
    run = pretrain_main(SMALL + ['--data-dir', str(image_folder), '--batch-size', '32', '--epochs', '1',
                                 '--output', str(tmp_path), '--experiment', 'r', '--recon-interval', '9'])
    with pytest.raises(ckpt.CheckpointError, match='pre-trains mlit_xxs, not mlit_xs'):
        pretrain_main(SMALL[2:] + ['--model', 'mlit_xs', '--data-dir', str(image_folder), '--resume',
                                   str(run / 'last.pth')])


def test_encoder_hand_off_to_timm_and_fine_tuning(image_folder, tmp_path):
    run = pretrain_main(SMALL + ['--data-dir', str(image_folder), '--batch-size', '32', '--epochs', '1',
                                 '--output', str(tmp_path), '--experiment', 'r', '--recon-interval', '9'])
    encoder_file = run / 'encoder.safetensors'
    with safe_open(str(encoder_file), 'pt') as f:
        assert f.metadata()['architecture'] == 'mlit_xxs'
        keys = set(f.keys())
    model = timm.create_model('mlit_xxs', num_classes=100)
    missing = set(model.state_dict()) - keys
    assert missing == {'head.weight', 'head.bias'} and not keys - set(model.state_dict())
    mae_state = torch.load(run / 'last.pth', weights_only=True)['model']

    # the two ways docs/mae.md names: create_model with the file, and train.py's --pretrained-path overlay
    for overlay in (dict(file=str(encoder_file)), dict(file=str(encoder_file), num_classes=-1)):
        model = timm.create_model('mlit_xxs', pretrained=True, pretrained_cfg_overlay=overlay, num_classes=4)
        for k in keys:
            assert torch.equal(model.state_dict()[k], mae_state[f'encoder.{k}']), k

    # fine-tuning through the library path train.py uses: the loss falls
    torch.manual_seed(0)
    task = ClassificationTask(model, nn.CrossEntropyLoss(), verbose=False)
    optimizer = timm.optim.create_optimizer_v2(model, 'adamw', lr=2e-3, weight_decay=0.05, layer_decay=0.9)
    from timm.data import create_dataset, create_loader
    loader = create_loader(create_dataset('', root=str(image_folder), split='train'), input_size=(3, 36, 36),
                           batch_size=32, is_training=True, mean=(0.5,) * 3, std=(0.5,) * 3, num_workers=0,
                           use_prefetcher=False)
    losses = train_epochs(task, optimizer, loader, 6)
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.3


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_resume_never_unpickles_code(tmp_path):
    """A crafted --resume file cannot run code: checkpoints load with weights_only=True."""
    marker = tmp_path / 'pwned'
    hostile = tmp_path / 'last.pth'
    torch.save({'model': {}, 'optimizer': {}, 'scheduler': {}, 'epoch': 0, 'rng': [_RunsCode(marker)]}, hostile)
    with pytest.raises(ckpt.CheckpointError, match='not loaded'):
        ckpt.load_checkpoint(hostile)
    assert not marker.exists()
    with pytest.raises(ckpt.CheckpointError, match='not loaded'):
        pretrain_main(SMALL + ['--resume', str(hostile)])
    assert not marker.exists()


def test_checkpoint_holds_only_tensors_and_plain_values(image_folder, tmp_path):
    import random
    run = pretrain_main(SMALL + ['--data-dir', str(image_folder), '--batch-size', '32', '--epochs', '1',
                                 '--output', str(tmp_path), '--experiment', 'r', '--recon-interval', '9'])
    state = torch.load(run / 'last.pth', weights_only=True)  # raises on any other object
    assert state['args']['model'] == 'mlit_xxs' and state['updates_per_epoch'] == 2
    # every RNG state survives the round trip
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    saved = ckpt.rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt.save_checkpoint(tmp_path / 'rng.pth', {'rng': saved})
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    ckpt.set_rng_state(torch.load(tmp_path / 'rng.pth', weights_only=True)['rng'])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_unreadable_resume_files_name_the_file_and_the_fix(tmp_path):
    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    with pytest.raises(ckpt.CheckpointError, match=r'--resume .*empty.pth: the file is empty \(0 bytes\)'):
        pretrain_main(SMALL + ['--resume', str(empty)])
    with pytest.raises(ckpt.CheckpointError, match='this is a folder'):
        ckpt.load_checkpoint(tmp_path)
    other = tmp_path / 'weights.pth'
    torch.save({'state_dict': {}}, other)
    with pytest.raises(ckpt.CheckpointError, match=r"expected the keys .* found \['state_dict'\]"):
        ckpt.load_checkpoint(other)


def test_resume_alone_takes_the_run_from_the_checkpoint(image_folder, tmp_path, monkeypatch):
    """`--resume last.pth` with nothing else: data, model, batch and schedule come from the checkpoint."""
    run = pretrain_main(SMALL + ['--data-dir', str(image_folder), '--batch-size', '32', '--epochs', '1',
                                 '--output', str(tmp_path), '--experiment', 'r', '--recon-interval', '9'])
    monkeypatch.chdir(tmp_path)  # nothing relative to the old working folder
    assert pretrain_main(['--resume', str(run / 'last.pth')]) == run  # all done: nothing to train
    pretrain_main(['--resume', str(run / 'last.pth'), '--epochs', '2'])
    state = torch.load(run / 'last.pth', weights_only=True)
    assert state['epoch'] == 2 and state['args']['data_dir'] == str(image_folder)
    assert state['args']['batch_size'] == 32 and len(_steps(run)) == 2 * 2


def _lr_of_fresh_schedule(epochs, warmup, lr, updates_per_epoch, at_update):
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    opt = create_optimizer_v2(nn.Linear(1, 1), 'adamw', lr=lr)
    sched, _ = create_scheduler_v2(opt, sched='cosine', num_epochs=epochs, warmup_epochs=warmup, warmup_lr=0.0,
                                   min_lr=0.0, updates_per_epoch=updates_per_epoch, step_on_epochs=False)
    sched.step_update(num_updates=at_update)
    return opt.param_groups[0]['lr']


def test_resume_with_another_batch_size_continues_the_new_runs_schedule(image_folder, tmp_path, caplog):
    """Batch 32 (2 updates / epoch) for 2 of 4 epochs, resumed with batch 16 (4 updates / epoch): the remaining
    epochs follow the 4-epoch schedule of the new run, not the checkpoint's (which would put them past its end, at
    LR 0)."""
    base = SMALL + ['--data-dir', str(image_folder), '--lr', '1e-3', '--warmup-epochs', '1', '--recon-interval', '9',
                    '--output', str(tmp_path), '--experiment', 'r']
    run = pretrain_main(base + ['--batch-size', '32', '--epochs', '2'])
    before = torch.load(run / 'last.pth', weights_only=True)['model']
    with caplog.at_level('WARNING', logger='timm_mlit.pretrain'):
        pretrain_main(['--resume', str(run / 'last.pth'), '--batch-size', '16', '--epochs', '4'])
    assert 'batch_size 32 -> 16' in caplog.text and 'updates per epoch 2 -> 4' in caplog.text
    history = [json.loads(line) for line in (run / 'log.jsonl').read_text().splitlines()]
    assert [h['epoch'] for h in history] == [0, 1, 2, 3]
    for h in history[2:]:  # the LR at the end of each resumed epoch: the new run's schedule
        expected = _lr_of_fresh_schedule(4, 1, 1e-3, 4, (h['epoch'] + 1) * 4)
        assert h['lr'] == pytest.approx(expected)
    assert history[2]['lr'] > 1e-4  # mid-cosine; the checkpoint's 2-epoch schedule would give 0 here
    after = torch.load(run / 'last.pth', weights_only=True)['model']
    moved = max((after[k].float() - before[k].float()).abs().max().item() for k in before)
    assert moved > 1e-4  # the resumed epochs trained


def test_bad_arguments_name_the_input_and_the_fix(image_folder, tmp_path):
    for ratio in ('1.0', '-0.5', '0'):
        with pytest.raises(SystemExit):
            parse_args(['--mask-ratio', ratio])
    with pytest.raises(ValueError, match='--mask-ratio 0.999 keeps 0 of the 144 patches'):
        pretrain_main(SMALL + ['--data-dir', str(image_folder), '--mask-ratio', '0.999', '--output', str(tmp_path)])
    for text in ('a: [1\n', '- 1\n- 2\n', 'just words\n'):
        cfg = tmp_path / 'c.yaml'
        cfg.write_text(text)
        with pytest.raises(SystemExit):
            parse_args(['--config', str(cfg)])
    with pytest.raises(SystemExit):
        parse_args(['--config', str(tmp_path / 'missing.yaml')])
    with pytest.raises(ValueError, match='--data-dir is missing'):
        pretrain_main(['--workers', '0', '--device', 'cpu'])
    with pytest.raises(ValueError, match=r'--data-dir .*nowhere: no such folder'):
        pretrain_main(SMALL + ['--data-dir', str(tmp_path / 'nowhere')])
    with pytest.raises(ValueError, match='--model nosuch: not a registered model'):
        pretrain_main(SMALL + ['--model', 'nosuch', '--data-dir', str(image_folder), '--output', str(tmp_path / 'o')])
    with pytest.raises(ValueError, match='no full batch'):
        pretrain_main(SMALL + ['--data-dir', str(image_folder), '--batch-size', '1000', '--output', str(tmp_path / 'o')])
    assert not (tmp_path / 'o').exists()  # a run that failed to start leaves no folder
    (tmp_path / 'file').write_text('x')
    with pytest.raises(ValueError, match='is a file'):
        pretrain_main(SMALL + ['--data-dir', str(image_folder), '--output', str(tmp_path / 'file')])
    for text, problem in (('epochs: [1]\n', 'is not a int'), ('scale: 0.5\n', 'is not a list of 2 floats'),
                          ('amp: "yes"\n', 'is not true or false')):
        (tmp_path / 'c.yaml').write_text(text)
        with pytest.raises(SystemExit):
            parse_args(['--config', str(tmp_path / 'c.yaml')])
    with pytest.raises(SystemExit):
        parse_args(['--model-kwargs', '[1'])


def test_bad_config_messages(tmp_path, capsys):
    cfg = tmp_path / 'c.yaml'
    cfg.write_text('- 1\n')
    with pytest.raises(SystemExit):
        parse_args(['--config', str(cfg)])
    assert f'--config {cfg} holds a list, expected a YAML mapping' in capsys.readouterr().err
    cfg.write_text('epochs: [1\n')
    with pytest.raises(SystemExit):
        parse_args(['--config', str(cfg)])
    assert 'is not valid YAML' in capsys.readouterr().err
    for text in ('lr: abc\n', 'epochs: "-5"\n'):  # a string argparse would convert: the message names the file
        cfg.write_text(text)
        with pytest.raises(SystemExit):
            parse_args(['--config', str(cfg)])
        err = capsys.readouterr().err
        assert f'--config {cfg}: {text.split(":")[0]}: ' in err and 'fix the value in the file' in err, err
    cfg.write_text('epochs: "5"\n')
    assert parse_args(['--config', str(cfg)]).epochs == 5


def test_image_folder_is_the_default_dataset_as_in_train_py(image_folder, cifar10_dir, tmp_path):
    assert parse_args([]).dataset == ''
    run = pretrain_main(['--data-dir', str(image_folder), '--workers', '0', '--device', 'cpu', '--no-progress',
                         '--batch-size', '32', '--epochs', '1', '--output', str(tmp_path), '--experiment', 'r'])
    assert (run / 'last.pth').is_file()
    with pytest.raises(ValueError, match='--dataset torch/cifar10'):  # torchvision's files, read as an ImageFolder
        pretrain_main(['--data-dir', str(cifar10_dir), '--workers', '0', '--device', 'cpu', '--output', str(tmp_path)])


def test_module_entry_point_prints_help():
    result = subprocess.run([sys.executable, '-m', 'timm_mlit.mae.pretrain', '--help'], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0 and 'usage: mlit-pretrain' in result.stdout and '--resume' in result.stdout
    # prose and options (issue 22): no reST markup, a description of a few lines between the usage and the options
    assert '`' not in result.stdout and ':func:' not in result.stdout
    description = result.stdout.split('\n\n')[1]
    assert 3 <= len(description.splitlines()) <= 10 and '--resume' in description, description


def test_console_and_logs_count_epochs_alike(image_folder, tmp_path, caplog):
    """Console, log.csv, log.jsonl and steps.csv number epochs the same way, from 0 as timm's train.py."""
    with caplog.at_level('INFO', logger='timm_mlit.pretrain'):
        run = pretrain_main(SMALL + ['--data-dir', str(image_folder), '--batch-size', '32', '--epochs', '2',
                                     '--output', str(tmp_path), '--experiment', 'r', '--recon-interval', '9'])
    console = [int(m.group(1)) for m in map(re.compile(r'epoch (\d+)/1 ').match, caplog.messages) if m]
    with open(run / 'log.csv') as f:
        logged = [int(r['epoch']) for r in csv.DictReader(f)]
    jsonl = [json.loads(line)['epoch'] for line in (run / 'log.jsonl').read_text().splitlines()]
    assert console == logged == jsonl == [0, 1]
    assert sorted({e for e, _, _ in _steps(run)}) == [0, 1]


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    (tmp_path / 'last.pth.tmp-99999999').write_bytes(b'x')  # no such process
    (tmp_path / f'last.pth.tmp-{os.getpid()}').write_bytes(b'x')  # a live writer: kept
    (tmp_path / 'notes.tmp-draft').write_bytes(b'x')  # not ours
    removed = _io.remove_stale_temporaries(tmp_path)
    assert [p.name for p in removed] == ['last.pth.tmp-99999999']
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f'last.pth.tmp-{os.getpid()}', 'notes.tmp-draft'])


def test_checkpoints_of_the_earlier_format_still_resume(tmp_path):
    """Earlier versions stored NumPy's RNG state as an array: loaded with weights_only=True and NumPy's array
    reconstruction allowed, nothing else."""
    import random
    old = {'model': {}, 'optimizer': {}, 'scheduler': {}, 'epoch': 1, 'args': {'model': 'mlit_xxs'},
           'rng': [{'python': random.getstate(), 'numpy': np.random.get_state(), 'torch': torch.get_rng_state()}]}
    torch.save(old, tmp_path / 'last.pth')
    state = ckpt.load_checkpoint(tmp_path / 'last.pth')
    expected = np.random.rand()
    ckpt.set_rng_state(state['rng'][0])
    assert np.random.rand() == expected


def test_a_run_that_stopped_before_its_first_checkpoint_is_not_offered_as_a_resume(image_folder, tmp_path,
                                                                                   monkeypatch):
    """A new run that fails in its first epoch leaves its logs but no last.pth: running it again under the same
    --experiment is refused, and the message may not send the user to a --resume that cannot work."""
    from timm_mlit.mae import pretrain
    from timm_mlit.mae.arguments import UsageError

    def diverges(*args, **kwargs):
        raise FloatingPointError('non-finite loss in epoch 0: stopping (last checkpoint is intact).')
    argv = SMALL + ['--data-dir', str(image_folder), '--batch-size', '32', '--epochs', '1', '--output', str(tmp_path),
                    '--experiment', 'r']
    monkeypatch.setattr(pretrain, 'train_one_epoch', diverges)
    with pytest.raises(FloatingPointError):
        pretrain_main(argv)
    monkeypatch.undo()
    assert not (tmp_path / 'r' / 'last.pth').exists() and (tmp_path / 'r' / 'log.csv').is_file()
    with pytest.raises(UsageError) as e:
        pretrain_main(argv)
    message = str(e.value)
    assert 'holds a run already' in message and 'no last.pth' in message and 'another --experiment' in message
    assert 'overwrite its last.pth' not in message and 'Continue that run with --resume' not in message
    with pytest.raises(ckpt.CheckpointError, match='No checkpoint'):  # what that advice would have led to
        pretrain_main(SMALL + ['--data-dir', str(image_folder), '--output', str(tmp_path), '--experiment', 'r',
                               '--resume', 'auto'])


def test_keep_every_keeps_the_encoder_between_checkpoints(image_folder, tmp_path):
    """--keep-every N keeps the encoder every N epochs even where N is not a multiple of --checkpoint-interval
    (it was written only at checkpoints, so epochs 3, 9, ... of --keep-every 3 --checkpoint-interval 2 had none)."""
    run = pretrain_main(SMALL + ['--data-dir', str(image_folder), '--batch-size', '32', '--epochs', '4',
                                 '--checkpoint-interval', '2', '--keep-every', '3', '--recon-interval', '99',
                                 '--plot-interval', '99', '--output', str(tmp_path), '--experiment', 'r'])
    assert sorted(p.name for p in run.glob('encoder-epoch*')) == ['encoder-epoch00002.safetensors']
    with safe_open(run / 'encoder-epoch00002.safetensors', 'pt') as f:
        assert f.metadata()['mae_epochs'] == '3'
    assert torch.load(run / 'last.pth', weights_only=True)['epoch'] == 4


def test_a_missing_torchvision_folder_names_dataset_download(tmp_path):
    """The tags' printed MAE command reads --dataset torch/cifar100 --data-dir DATA/cifar100: without the files the
    error says how to fetch them."""
    with pytest.raises(ValueError, match=r'no such folder.*--dataset-download'):
        pretrain_main(SMALL[2:] + ['--dataset', 'torch/cifar100', '--data-dir', str(tmp_path / 'cifar100'),
                                   '--output', str(tmp_path / 'o')])
    assert not (tmp_path / 'o').exists()


def test_a_diverging_lr_stops_with_the_fix(image_folder, tmp_path, capsys):
    """A learning rate that blows the loss up stops the run in its first epoch with a DivergedError (one line from
    the command, not a traceback) naming the epoch, the update, its learning rate and --lr; no checkpoint is
    written. A rate beyond MAX_LR (which overflowed the optimiser's float32 step) is refused when parsed."""
    from timm_mlit.errors import DivergedError, UsageExit, run_command
    argv = SMALL + ['--data-dir', str(image_folder), '--batch-size', '16', '--epochs', '2', '--warmup-epochs', '0',
                    '--lr', '1000', '--output', str(tmp_path), '--experiment', 'r']
    with pytest.raises(DivergedError, match=r'not finite in epoch 0 \(first at update \d of 4, learning rate '
                                            r'[\d.]+\).*smaller --lr'):  # (the cosine has begun its descent)
        pretrain_main(argv)
    assert not (tmp_path / 'r' / 'last.pth').exists()
    with pytest.raises(UsageExit):
        run_command('mlit-pretrain', pretrain_main, argv[:-1] + ['r2'])
    assert 'mlit-pretrain: error: the loss is not finite in epoch 0' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        pretrain_main([a if a != '1000' else '1e38' for a in argv[:-1]] + ['r3'])
    assert "argument --lr: '1e38' is out of range; expected a learning rate > 0 and <= 1000" in capsys.readouterr().err


def test_a_link_loop_in_the_folder_is_refused(image_folder, tmp_path):
    """timm's reader follows symbolic links: a link back up the tree would be read until the path is too long, each
    image many times. Refused before any image is read, naming the link and the fix."""
    from timm_mlit.errors import UserInputError
    train = next(p for p in image_folder.iterdir() if p.name == 'train')
    (next(train.iterdir()) / 'again').symlink_to(train, target_is_directory=True)
    argv = SMALL + ['--data-dir', str(image_folder), '--batch-size', '16', '--epochs', '1', '--output', str(tmp_path),
                    '--experiment', 'r']
    with pytest.raises(UserInputError, match=r'again is .* reached through a symbolic link.*remove the link'):
        pretrain_main(argv)
    assert not (tmp_path / 'r').exists()
