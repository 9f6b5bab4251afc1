"""Hostile paths against every command that writes: nothing is written but regular files at the paths the user named,
nothing of the user's is replaced unasked, a folder that is published holds only its own files, and two writers of
one run folder are refused. One table per command; a new case is one line.

Each refusal leaves the hostile thing exactly as it was (its kind, and what a file holds or a link names) and the
file outside (``outside``, a stand-in for ``~/.cache/huggingface/token``) untouched."""
import json
import os
import signal
import stat
from pathlib import Path

import pytest
import timm
import torch

import timm_mlit  # noqa: F401
from timm_mlit import _io
from test_io import make, snapshot


def _refused(run, target: Path, outside: Path, exceptions=(SystemExit,)):
    """``run()`` refuses (raises one of ``exceptions``, a SystemExit with status 2) and changes nothing."""
    before = snapshot(target) if os.path.lexists(target) else None
    with pytest.raises(exceptions) as e:
        run()
    if isinstance(e.value, SystemExit):  # argparse's status 2, or sys.exit(message) (status 1)
        assert e.value.code == 2 or isinstance(e.value.code, str), e.value.code
    assert (snapshot(target) if os.path.lexists(target) else None) == before
    assert outside.read_text() == 'hf_secret'
    assert not [p for p in target.parent.iterdir() if '.tmp-' in p.name or p.name.startswith('.dry-run-')]
    return e.value


# --- mlit-config --out -------------------------------------------------------------------------------------------

@pytest.mark.parametrize('kind, flags', [
    ('fifo', ['--overwrite']),
    ('socket', ['--overwrite']),
    ('character device', ['--overwrite']),  # as root, /dev/null used to become a file holding the recipe
    ('symlink to a file', ['--overwrite']),
    ('broken symlink', ['--overwrite']),
    ('regular file', []),  # the user's file, no --overwrite
])
def test_mlit_config_out(kind, flags, tmp_path, outside, capsys):
    from timm_mlit.recipes import main
    target = tmp_path / 'recipe.yaml'
    make(kind, target, outside)
    _refused(lambda: main(['table6_scratch_cifar10', '--out', str(target)] + flags), target, outside)
    assert f'--out {target}' in capsys.readouterr().err


def test_mlit_config_writes_a_0644_file(tmp_path):
    from timm_mlit.recipes import main
    old = os.umask(0o022)
    try:
        main(['table6_scratch_cifar10', '--out', str(tmp_path / 'r.yaml')])
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / 'r.yaml').st_mode) == 0o644


# --- mlit-push --dry-run / --card-out / --stage-dir / --staged ----------------------------------------------------

PUSH = ['--model', 'mlit_xxs.c10', '--checkpoint', 'unused.pth.tar']


@pytest.mark.parametrize('name, kind, flags', [
    ('README.md', 'regular file', ['--dry-run', '{dir}']),  # the user's own card in the current folder
    ('config.json', 'regular file', ['--dry-run', '{dir}']),
    ('model.safetensors', 'regular file', ['--dry-run', '{dir}', '--repo-id', 'me/x']),
    ('README.md', 'fifo', ['--dry-run', '{dir}', '--overwrite']),
    ('config.json', 'symlink to a file', ['--dry-run', '{dir}', '--overwrite']),
    ('mlit_xxs.c10.md', 'regular file', ['--repo-id', 'me/x', '--card-out', '{dir}']),
    ('mlit_xxs.c10.md', 'socket', ['--repo-id', 'me/x', '--card-out', '{dir}', '--overwrite']),
])
def test_mlit_push_never_replaces_the_users_files(name, kind, flags, tmp_path, outside, capsys):
    from timm_mlit.hub.push import main
    folder = tmp_path / 'cwd'
    folder.mkdir()
    target = folder / name
    make(kind, target, outside)
    args = PUSH + [f.format(dir=folder) for f in flags]
    _refused(lambda: main(args), target, outside)
    assert str(target) in capsys.readouterr().err


@pytest.mark.parametrize('existing, flags', [
    ('user folder', ['--overwrite']),  # not a staged folder: --overwrite does not delete it
    ('symlink to a folder', ['--overwrite']),
    ('staged folder', []),  # a staged folder without --overwrite
])
def test_mlit_push_stage_dir_replaces_only_a_staged_folder(existing, flags, tmp_path, outside, capsys):
    from timm_mlit.hub.push import main
    run, stage_dir = tmp_path / 'run', tmp_path / 'stage'
    run.mkdir()
    stage_dir.mkdir()
    target = stage_dir / 'mlit_xxs.c10'
    if existing == 'user folder':
        target.mkdir()
        (target / 'notes.txt').write_text('mine')
    elif existing == 'symlink to a folder':
        target.symlink_to(outside.parent)
    else:
        target.mkdir()
        (target / 'README.md').write_text('card')
    _refused(lambda: main(['--model', 'mlit_xxs.c10', '--run-dir', str(run), '--stage-dir', str(stage_dir)] + flags),
             target, outside)
    assert 'mlit_xxs.c10' in capsys.readouterr().err
    assert sorted(os.listdir(outside.parent)) == ['token']


@pytest.mark.parametrize('name, link', [
    ('README.md', '{outside}'),  # the hole: the token published as the model card
    ('README.md', '../../elsewhere/token'),
    ('config.json', '{outside}'),
    ('model.safetensors', '{outside}'),
    ('README.md', '{missing}'),  # a broken link
])
def test_mlit_push_staged_never_follows_a_symlink_out(name, link, tmp_path, outside, capsys):
    from timm_mlit.hub.push import main
    folder = tmp_path / 'hub_cards' / 'mlit_xxs.c10'
    folder.mkdir(parents=True)
    for f in ('README.md', 'config.json', 'model.safetensors'):
        if f != name:
            (folder / f).write_text('{}')
    (folder / name).symlink_to(link.format(outside=outside, missing=tmp_path / 'missing'))
    _refused(lambda: main(['--staged', str(folder), '--endpoint', 'http://127.0.0.1:9', '--token', 'x']),
             folder / name, outside)
    err = capsys.readouterr().err
    assert str(folder / name) in err and ('outside' in err or 'broken symlink' in err)
    assert not (folder.parent / 'mlit_xxs.c10.md').exists()  # nothing copied beside it


# --- mlit-pretrain ----------------------------------------------------------------------------------------------

SMALL = ['--model', 'mlit_xxs', '--dataset', '', '--workers', '0', '--device', 'cpu', '--no-progress',
         '--batch-size', '16', '--epochs', '1']


@pytest.mark.parametrize('leftover', ['last.pth', 'log.csv', 'encoder.safetensors', 'notes.txt'])
def test_mlit_pretrain_refuses_a_run_folder_that_holds_a_run(leftover, image_folder, tmp_path, outside):
    from timm_mlit.mae.arguments import UsageError
    from timm_mlit.mae.pretrain import main
    run = tmp_path / 'out' / 'run'
    run.mkdir(parents=True)
    target = run / leftover
    target.write_bytes(b'a finished run\'s file')
    e = _refused(lambda: main(SMALL + ['--data-dir', str(image_folder), '--output', str(tmp_path / 'out'),
                                       '--experiment', 'run']), target, outside, UsageError)
    assert 'holds a run already' in str(e) and '--resume' in str(e)
    assert os.listdir(run) == [leftover]


def test_mlit_pretrain_two_writers_of_one_run_folder(image_folder, tmp_path, outside):
    from timm_mlit.mae.pretrain import main
    run = tmp_path / 'out' / 'run'
    run.mkdir(parents=True)
    with _io.FolderLock(run):  # another run holds the folder
        e = _refused(lambda: main(SMALL + ['--data-dir', str(image_folder), '--output', str(tmp_path / 'out'),
                                           '--experiment', 'run']), run / _io.FolderLock.NAME, outside, _io.BusyError)
    assert 'another run' in str(e) and str(run) in str(e)
    assert os.listdir(run) == [_io.FolderLock.NAME]


# --- mlit-run-info ----------------------------------------------------------------------------------------------

GOOD = {'hardware': 'test CPU', 'wall_time_s': 5.0, 'jpeg_copy': False}


@pytest.mark.parametrize('kind, flags, named', [
    ('symlink to a file', ['--wall-time-s', '5'], 'run_info.json'),
    ('fifo', ['--wall-time-s', '5'], 'run_info.json'),
    ('folder', ['--wall-time-s', '5'], 'run_info.json'),
    # an invalid record never replaces a good one (these two are refused when the flags are parsed)
    ('good record', ['--wall-time-s', '5', '--hardware', ' '], '--hardware'),
    ('good record', ['--wall-time-s', 'inf'], '--wall-time-s'),
])
def test_mlit_run_info(kind, flags, named, tmp_path, outside, capsys):
    from timm_mlit.hub.run_info import main
    run = tmp_path / 'run'
    run.mkdir()
    target = run / 'run_info.json'
    if kind == 'good record':
        target.write_text(json.dumps(GOOD))
    else:
        make(kind, target, outside)
    _refused(lambda: main([str(run)] + flags), target, outside)
    assert named in capsys.readouterr().err


def test_mlit_run_info_replaces_its_own_record_with_a_valid_one(tmp_path):
    from timm_mlit.hub.run_info import main
    (tmp_path / 'run_info.json').write_text(json.dumps(GOOD))
    main([str(tmp_path), '--wall-time-s', '7', '--hardware', 'other CPU'])
    assert json.loads((tmp_path / 'run_info.json').read_text())['hardware'] == 'other CPU'
    assert os.listdir(tmp_path) == ['run_info.json']


# --- mlit-prepare-data --------------------------------------------------------------------------------------------

@pytest.mark.parametrize('leftover, flags, refused', [
    ('user folder', [], True),  # an OUT.partial this command did not make
    ('user folder', ['--overwrite'], True),  # --overwrite removes only a tree of this command's shape
    ('user file', ['--overwrite'], True),
    ('live writer', [], True),  # another run writes it now
    ('killed run of this command', [], False),  # what a SIGKILL left: replaced
])
def test_mlit_prepare_data_partial_folder(leftover, flags, refused, tmp_path, outside, capsys):
    from test_prepare_data import _npz_dir
    from timm_mlit.data.prepare import main
    src = _npz_dir(tmp_path / 'npz')
    out = tmp_path / 'c10'
    partial = tmp_path / 'c10.partial'
    holder = None
    if leftover == 'user file':
        partial.write_text('mine')
    else:
        partial.mkdir()
        if leftover == 'user folder':
            (partial / 'thesis.tex').write_text('mine')
        else:
            (partial / _io.PartialFolder.MARKER).write_text('1\n')
            (partial / 'train').mkdir()
            if leftover == 'live writer':
                holder = _io._Lock(partial / _io.PartialFolder.MARKER)
                assert holder.acquire()
    run = lambda: main(['cifar10', '--npz-dir', str(src), '--out', str(out), '--no-verify'] + flags)  # noqa: E731
    try:
        if refused:
            _refused(run, partial, outside, SystemExit)
            assert 'c10.partial' in capsys.readouterr().err and not out.exists()
        else:
            run()
            assert sorted(os.listdir(out)) == ['train', 'validation'] and not partial.exists()
    finally:
        if holder is not None:
            holder.release()


# --- mlit-derive-superclasses --------------------------------------------------------------------------------------

@pytest.mark.parametrize('name, kind, flags', [
    ('map.json', 'regular file', []),  # the user's map, no --overwrite
    ('map.confusion.csv', 'regular file', []),
    ('map.json', 'fifo', ['--overwrite']),
    ('map.confusion.csv', 'symlink to a file', ['--overwrite']),
])
def test_mlit_derive_superclasses_output(name, kind, flags, tmp_path, outside, capsys):
    from timm_mlit.scripts.derive_superclasses import main
    target = tmp_path / name
    make(kind, target, outside)
    _refused(lambda: main(['--model', 'mlit_xxs', '--checkpoint', 'unused.pth.tar', '--data-dir', str(tmp_path),
                           '--output', str(tmp_path / 'map.json')] + flags), target, outside)
    assert str(target) in capsys.readouterr().err


# --- export (timm_mlit.export) -----------------------------------------------------------------------------------

@pytest.mark.parametrize('kind', ['fifo', 'socket', 'symlink to a file', 'folder'])
def test_export_onnx_never_replaces_a_special_file(kind, tmp_path, outside):
    from timm_mlit.export import export_onnx
    target = tmp_path / 'model.onnx'
    make(kind, target, outside)
    _refused(lambda: export_onnx(timm.create_model('mlit_xxs'), target, dynamo=False), target, outside,
             _io.UnsafePathError)


def test_export_writes_0644_and_quantize_refuses_a_symlink(tmp_path, outside):
    pytest.importorskip('onnxruntime')
    from timm_mlit.export import export_onnx, quantize_onnx
    old = os.umask(0o022)
    try:
        path = export_onnx(timm.create_model('mlit_xxs', num_classes=10).eval(), tmp_path / 'm.onnx', dynamo=False)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    target = tmp_path / 'int8.onnx'
    target.symlink_to(outside)
    _refused(lambda: quantize_onnx(path, target), target, outside, _io.UnsafePathError)
    assert sorted(os.listdir(tmp_path)) == ['elsewhere', 'int8.onnx', 'm.onnx']


def test_no_command_writes_or_loads_by_hand():
    """The copies are gone: the package's writes and untrusted reads go through timm_mlit._io."""
    root = Path(__file__).resolve().parents[1] / 'timm_mlit'
    hand_written = ('os.replace(', 'tempfile.', 'mkstemp', '.rename(', 'torch.load(', 'safe_globals(',
                    'load_file(', "open(self.out", '.write_text(', '.write_bytes(')
    found = [f'{path.relative_to(root)}: {needle}' for path in root.rglob('*.py')
             if path.name != '_io.py' and 'testing' not in path.parts
             for needle in hand_written if needle in path.read_text()]
    assert found == []


@pytest.mark.parametrize('signum, raised', [
    (signal.SIGTERM, SystemExit),  # a scheduler, torchrun
    (signal.SIGHUP, SystemExit),  # the terminal closed
    (signal.SIGINT, KeyboardInterrupt),  # Ctrl-C
])
def test_mlit_prepare_data_a_signal_leaves_nothing_half_written(signum, raised, tmp_path, monkeypatch):
    from PIL import Image
    from test_prepare_data import _npz_dir
    from timm_mlit.data.prepare import main
    src = _npz_dir(tmp_path / 'npz')
    calls = []
    save = Image.Image.save

    def save_then_signal(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signum)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, 'save', save_then_signal)
    # as in a terminal (a background job of a script starts with INT ignored, and an ignored signal stays ignored)
    before = signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
    try:
        with pytest.raises(raised):
            main(['cifar10', '--npz-dir', str(src), '--out', str(tmp_path / 'c10'), '--no-verify'])
        assert sorted(os.listdir(tmp_path)) == ['npz']
        assert signal.getsignal(signum) in (signal.default_int_handler, signal.SIG_DFL)  # the handler is back
    finally:
        signal.signal(signum, before)
