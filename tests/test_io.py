"""timm_mlit._io, the one writer and reader: each rule against a table of hostile paths, one case a line."""
import argparse
import os
import pickle
import signal
import socket
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from timm_mlit import _io
from helpers import Exploit


def make(kind: str, path: Path, outside: Path) -> None:
    """Put a thing of ``kind`` at ``path``; ``outside`` is a regular file in another folder."""
    if kind == 'fifo':
        os.mkfifo(path)
    elif kind == 'socket':
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))
        s.close()
    elif kind == 'folder':
        path.mkdir()
        (path / 'keep.txt').write_text('mine')
    elif kind == 'symlink to a file':
        path.symlink_to(outside)
    elif kind == 'symlink to a folder':
        path.symlink_to(outside.parent)
    elif kind == 'broken symlink':
        path.symlink_to(outside.parent / 'nothing-here')
    elif kind == 'character device':
        if os.geteuid() != 0:
            pytest.skip('making a device node needs root')
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a copy of /dev/null's node
    elif kind == 'regular file':
        path.write_text('the user\'s own')
    else:
        raise ValueError(kind)


def snapshot(path: Path):
    """What must not change: the kind of thing at ``path`` and, for a file or link, what it holds or names."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return 'link', os.readlink(path)
    if stat.S_ISREG(st.st_mode):
        return 'file', path.read_bytes()
    return stat.S_IFMT(st.st_mode), sorted(os.listdir(path)) if stat.S_ISDIR(st.st_mode) else None


SPECIAL = ['fifo', 'socket', 'folder', 'symlink to a file', 'symlink to a folder', 'broken symlink',
           'character device']


@pytest.mark.parametrize('overwrite', [False, True])
@pytest.mark.parametrize('kind', SPECIAL)
def test_atomic_write_never_replaces_what_is_not_a_regular_file(kind, overwrite, tmp_path, outside):
    target = tmp_path / 'out' / 'recipe.yaml'
    target.parent.mkdir()
    make(kind, target, outside)
    before, secret = snapshot(target), outside.read_bytes()
    with pytest.raises(_io.UnsafePathError, match=r'recipe\.yaml: is a'):
        _io.write_text(target, 'new', overwrite=overwrite, what='--out')
    assert snapshot(target) == before and outside.read_bytes() == secret
    assert sorted(os.listdir(target.parent)) == ['recipe.yaml']  # no temporary left


def test_an_existing_file_is_replaced_only_when_asked(tmp_path):
    target = tmp_path / 'a.txt'
    target.write_text('mine')
    with pytest.raises(_io.ExistingPathError, match='--overwrite') as e:
        _io.write_text(target, 'new', what='--out')
    assert isinstance(e.value, FileExistsError) and isinstance(e.value, ValueError)
    assert target.read_text() == 'mine'
    _io.write_text(target, 'new', overwrite=True)
    assert target.read_text() == 'new' and os.listdir(tmp_path) == ['a.txt']


def test_a_file_that_appears_while_writing_is_not_clobbered(tmp_path):
    target = tmp_path / 'a.txt'

    def write(tmp):
        Path(tmp).write_text('ours')
        target.write_text('theirs')  # someone else creates the file meanwhile
    with pytest.raises(_io.ExistingPathError):
        _io.atomic_write(target, write)
    assert target.read_text() == 'theirs' and os.listdir(tmp_path) == ['a.txt']


@pytest.mark.parametrize('umask, mode', [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_umasks_permissions(umask, mode, tmp_path):
    old = os.umask(umask)
    try:
        _io.write_text(tmp_path / 'new.txt', 'x')
        (tmp_path / 'old.txt').write_text('x')
        os.chmod(tmp_path / 'old.txt', 0o600)
        _io.write_text(tmp_path / 'old.txt', 'y', overwrite=True)
        _io.atomic_write(tmp_path / 'saved.pth', lambda tmp: torch.save({'a': 1}, tmp))
    finally:
        os.umask(old)
    for name in ('new.txt', 'old.txt', 'saved.pth'):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == mode, name


@pytest.mark.parametrize('failure', ['write raises', 'check refuses', 'killed (SystemExit)'])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(failure, tmp_path):
    target = tmp_path / 'run_info.json'
    target.write_text('good')

    def write(tmp):
        Path(tmp).write_text('half')
        if failure == 'write raises':
            raise OSError('disk full')
        if failure == 'killed (SystemExit)':
            raise SystemExit(143)

    def check(tmp):
        raise ValueError('not a valid record')
    with pytest.raises((OSError, ValueError, SystemExit)):
        _io.atomic_write(target, write, overwrite=True, check=check if failure == 'check refuses' else None)
    assert target.read_text() == 'good' and os.listdir(tmp_path) == ['run_info.json']


@pytest.mark.parametrize('kind', ['fifo', 'socket', 'folder', 'symlink to a file', 'character device'])
def test_append_refuses_what_is_not_a_regular_file(kind, tmp_path, outside):
    target = tmp_path / 'log.csv'
    make(kind, target, outside)
    before, secret = snapshot(target), outside.read_bytes()
    with pytest.raises(_io.UnsafePathError, match=r'log\.csv: is a'):
        _io.append_text(target, 'row\n')
    assert snapshot(target) == before and outside.read_bytes() == secret


def test_append_creates_and_appends(tmp_path):
    _io.append_text(tmp_path / 'log.csv', 'a\r\n')
    _io.append_text(tmp_path / 'log.csv', 'b\r\n')
    assert (tmp_path / 'log.csv').read_bytes() == b'a\r\nb\r\n'


@pytest.mark.parametrize('link, refused', [
    ('../elsewhere/token', True),  # a symlink out of the folder
    ('/etc/hostname', True),  # an absolute one
    ('sub/../../elsewhere/token', True),
    ('inner.md', False),  # a symlink to a file of the folder itself
    ('sub', True),  # a folder, not a file
])
def test_file_inside_refuses_symlinks_out_of_the_folder(link, refused, tmp_path, outside):
    folder = tmp_path / 'staged'
    (folder / 'sub').mkdir(parents=True)
    (folder / 'inner.md').write_text('card')
    (folder / 'README.md').symlink_to(link)
    if refused:
        with pytest.raises(_io.UnsafePathError, match='README.md'):
            _io.file_inside(folder, 'README.md', '--staged')
    else:
        assert _io.file_inside(folder, 'README.md') == (folder / 'inner.md').resolve()
    assert _io.file_inside(folder, 'config.json', missing_ok=True) is None


def test_copy_inside_copies_only_what_lies_inside(tmp_path, outside):
    folder, dest = tmp_path / 'staged', tmp_path / 'snapshot'
    folder.mkdir()
    dest.mkdir()
    (folder / 'config.json').write_text('{}')
    (folder / 'README.md').symlink_to(outside)
    _io.copy_inside(folder, ['config.json'], dest)
    assert (dest / 'config.json').read_text() == '{}'
    with pytest.raises(_io.UnsafePathError):
        _io.copy_inside(folder, ['README.md'], dest)
    assert sorted(os.listdir(dest)) == ['config.json']


# --- folders ------------------------------------------------------------------------------------------------------

def test_partial_folder_is_removed_on_failure_and_renamed_when_done(tmp_path):
    with pytest.raises(SystemExit):
        with _io.PartialFolder(tmp_path / 'out.partial') as partial:
            (partial.path / 'a').write_text('x')
            raise SystemExit(143)  # what signals_unwind raises on TERM
    assert os.listdir(tmp_path) == []
    with _io.PartialFolder(tmp_path / 'out.partial') as partial:
        (partial.path / 'a').write_text('x')
        partial.commit(tmp_path / 'out')
    assert os.listdir(tmp_path) == ['out'] and os.listdir(tmp_path / 'out') == ['a']
    assert stat.S_IMODE(os.stat(tmp_path / 'out').st_mode) == 0o777 & ~_io._umask()


@pytest.mark.parametrize('leftover, outcome', [
    ('killed run of this command', 'replaced'),  # its marker, no live writer
    ('live writer', _io.BusyError),
    ('user folder', _io.ExistingPathError),
    ('user file', _io.UnsafePathError),
    ('symlink to a folder', _io.UnsafePathError),
])
def test_partial_folder_leftovers(leftover, outcome, tmp_path, outside):
    partial = tmp_path / 'out.partial'
    holder = None
    if leftover in ('killed run of this command', 'live writer'):
        partial.mkdir()
        (partial / _io.PartialFolder.MARKER).write_text('12345\n')
        (partial / 'half.png').write_bytes(b'x')
        if leftover == 'live writer':
            holder = _io._Lock(partial / _io.PartialFolder.MARKER)
            assert holder.acquire()
    elif leftover == 'user folder':
        partial.mkdir()
        (partial / 'thesis.tex').write_text('mine')
    elif leftover == 'user file':
        partial.write_text('mine')
    else:
        partial.symlink_to(outside.parent)
    before = snapshot(partial)
    try:
        if outcome == 'replaced':
            with _io.PartialFolder(partial) as p:
                assert os.listdir(p.path) == [_io.PartialFolder.MARKER]
        else:
            with pytest.raises(outcome):
                with _io.PartialFolder(partial, '--out'):
                    pass
            assert snapshot(partial) == before
    finally:
        if holder is not None:
            holder.release()
    assert outside.read_text() == 'hf_secret'


def test_partial_folder_may_remove_a_foreign_one_when_told(tmp_path):
    partial = tmp_path / 'out.partial'
    partial.mkdir()
    (partial / 'x.png').write_bytes(b'x')
    with _io.PartialFolder(partial, may_remove=lambda p: True) as p:
        assert os.listdir(p.path) == [_io.PartialFolder.MARKER]


@pytest.mark.parametrize('replace, existing', [(None, 'folder'), (lambda p: False, 'folder'), (lambda p: True, 'file')])
def test_commit_replaces_only_what_the_caller_allows(replace, existing, tmp_path):
    target = tmp_path / 'out'
    target.mkdir() if existing == 'folder' else target.write_text('mine')
    if existing == 'folder':
        (target / 'keep').write_text('mine')
    before = snapshot(target)
    with pytest.raises(_io.ExistingPathError):
        with _io.PartialFolder(tmp_path / 'out.partial') as p:
            p.commit(target, replace=replace)
    assert snapshot(target) == before and sorted(os.listdir(tmp_path)) == ['out']


def test_commit_swaps_an_allowed_folder(tmp_path):
    target = tmp_path / 'out'
    target.mkdir()
    (target / 'old').write_text('x')
    with _io.PartialFolder(tmp_path / 'out.partial') as p:
        (p.path / 'new').write_text('y')
        p.commit(target, replace=lambda old: True)
    assert os.listdir(tmp_path) == ['out'] and os.listdir(target) == ['new']


def test_folder_lock_one_writer(tmp_path):
    with _io.FolderLock(tmp_path, '--output'):
        with pytest.raises(_io.BusyError, match=f'another run \\(pid {os.getpid()}\\)'):
            with _io.FolderLock(tmp_path, '--output'):
                pass
    with _io.FolderLock(tmp_path):  # released
        pass
    (tmp_path / 'last.pth').write_bytes(b'x')
    with pytest.raises(_io.ExistingPathError, match='last.pth'):
        with _io.FolderLock(tmp_path, fresh=True):
            pass
    with _io.FolderLock(tmp_path):  # a resume (not fresh) takes it
        pass


def test_folder_lock_refuses_a_planted_symlink(tmp_path, outside):
    (tmp_path / _io.FolderLock.NAME).symlink_to(outside)
    with pytest.raises(OSError):
        with _io.FolderLock(tmp_path):
            pass
    assert outside.read_text() == 'hf_secret'


def test_stale_temporaries_of_both_forms(tmp_path):
    for name in ('last.pth.tmp-99999999', 'm.onnx.tmp-99999999.onnx', f'x.tmp-{os.getpid()}', 'notes.tmp-draft'):
        (tmp_path / name).write_bytes(b'x')
    removed = sorted(p.name for p in _io.remove_stale_temporaries(tmp_path))
    assert removed == ['last.pth.tmp-99999999', 'm.onnx.tmp-99999999.onnx']


# --- signals ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGHUP])
def test_signals_unwind_like_an_exception_and_clean_up(signum, tmp_path):
    # the signal's default action, as a terminal starts a command (under nohup HUP arrives ignored: the next test)
    inherited = signal.signal(signum, signal.SIG_DFL)
    target = tmp_path / 'a.bin'

    def write(tmp):
        Path(tmp).write_bytes(b'half')
        os.kill(os.getpid(), signum)
    try:
        with pytest.raises(SystemExit) as e:
            with _io.signals_unwind():
                _io.atomic_write(target, write)
        assert e.value.code == 128 + signum
        assert os.listdir(tmp_path) == [] and signal.getsignal(signum) == signal.SIG_DFL
    finally:
        signal.signal(signum, inherited)


def test_an_ignored_signal_stays_ignored():
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nohup
    try:
        with _io.signals_unwind():
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is _io._unwind
    finally:
        signal.signal(signal.SIGHUP, previous)


# --- reading ------------------------------------------------------------------------------------------------------

def test_one_allow_list_reads_numpy_and_train_py_args(tmp_path):
    state = {'rng': np.random.get_state(), 'metric': np.float64(71.5), 'arr': np.arange(3, dtype=np.int32),
             'args': argparse.Namespace(model='mlit_xxs'), 'w': torch.ones(2)}
    torch.save(state, tmp_path / 'c.pth')
    loaded = _io.torch_load(tmp_path / 'c.pth')
    assert loaded['args'].model == 'mlit_xxs' and loaded['metric'] == 71.5 and loaded['arr'].tolist() == [0, 1, 2]
    assert (loaded['rng'][1] == state['rng'][1]).all() and torch.equal(loaded['w'], torch.ones(2))


@pytest.mark.parametrize('how', ['torch.save', 'pickle'])
def test_code_in_a_checkpoint_never_runs(how, tmp_path, monkeypatch):
    mark = tmp_path / 'pwned'
    monkeypatch.setenv('EXPLOIT_MARK', str(mark))
    path = tmp_path / 'evil.pth'
    if how == 'torch.save':
        torch.save({'args': Exploit()}, path)
    else:
        path.write_bytes(pickle.dumps({'args': Exploit()}))
    with pytest.raises(pickle.UnpicklingError):
        _io.torch_load(path)
    assert not mark.exists()


def test_load_weights_by_suffix(tmp_path):
    from safetensors.torch import save_file
    save_file({'w': torch.ones(2)}, str(tmp_path / 'm.safetensors'))
    torch.save({'w': torch.zeros(2)}, tmp_path / 'm.pth')
    assert torch.equal(_io.load_weights(tmp_path / 'm.safetensors')['w'], torch.ones(2))
    assert torch.equal(_io.load_weights(tmp_path / 'm.pth')['w'], torch.zeros(2))
