"""The package's one writer of files and one reader of untrusted checkpoints.

timm keeps one ``_torch_load`` / ``load_state_dict`` in ``timm/models/_helpers.py``; this module is the same for
timm_mlit's commands. Every command writes through :func:`atomic_write` (:func:`write_text`, :func:`write_bytes`,
:func:`append_text`), builds a folder through :class:`PartialFolder`, holds its run folder with :class:`FolderLock`
and reads weights through :func:`torch_load` / :func:`load_safetensors`. The rules, each enforced here once:

* Only regular files are written. A path naming a device, FIFO, socket or folder is refused, never replaced (an
  atomic rename goes over whatever the path names: ``/dev/null`` would become a file). A symlink is refused too,
  neither replaced nor followed.
* An existing file is replaced only when the caller says ``overwrite``. Without it the finished file is hard-linked
  into place, so a file that appeared meanwhile is not clobbered either.
* A file appears complete or not at all: it is written to ``NAME.tmp-PID`` beside it, flushed, optionally checked,
  and renamed. Its permissions are the umask's (0644 under 022), what ``open()`` gives, not ``mkstemp``'s 0600.
* A file read from a folder that is published must lie inside it (:func:`file_inside`): a symlink out of it is
  refused, or a staged folder someone sends you could publish ``~/.cache/huggingface/token``.
* TERM and HUP end a command the way an exception does (:func:`signals_unwind`, INT already raises
  ``KeyboardInterrupt``), so the ``finally`` blocks that remove temporaries and partial folders run. SIGKILL leaves
  ``NAME.tmp-PID``, which :func:`remove_stale_temporaries` deletes when the folder is next used.
* A checkpoint is unpickled with ``torch.load(weights_only=True)`` and one allow-list, :func:`safe_globals`:
  tensors and plain Python values, NumPy arrays, dtypes and scalars, and ``argparse.Namespace`` (timm's train.py
  saves its ``args`` as one). Nothing the file names can run.

Nothing here imports the rest of timm_mlit: layers, models, MAE, hub and the commands all build on it.
"""
import argparse
import contextlib
import errno
import functools
import os
import re
import shutil
import signal
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Union

from timm_mlit.errors import UserInputError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; FolderLock then only marks the folder
    fcntl = None

__all__ = [
    'UserInputError', 'UnsafePathError', 'ExistingPathError', 'BusyError',
    'check_target', 'atomic_write', 'write_text', 'write_bytes', 'append_text', 'copy_file', 'move_file', 'file_mode',
    'remove_stale_temporaries', 'file_inside', 'copy_inside', 'temporary_folder', 'PartialFolder', 'FolderLock',
    'signals_unwind', 'command', 'safe_globals', 'torch_load', 'load_safetensors', 'load_weights',
]

PathLike = Union[str, os.PathLike]
_TMP_NAME = re.compile(r'.+\.tmp-(\d+)(\.[A-Za-z0-9]+)?$')
_NOFOLLOW = getattr(os, 'O_NOFOLLOW', 0)
_CLOEXEC = getattr(os, 'O_CLOEXEC', 0)


class UnsafePathError(UserInputError):
    """A path that names a device, FIFO, socket, folder or symlink where a regular file is written, or a file that
    lies outside the folder it is read from."""


class ExistingPathError(UserInputError, FileExistsError):
    """A file or folder of the user's that would be replaced without ``--overwrite`` (or ``--resume``)."""


class BusyError(UserInputError):
    """Another live process is writing the same run or output folder."""


def _label(path: PathLike, what: str) -> str:
    return f'{what} {path}' if what else str(path)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, 'a folder'), (stat.S_ISLNK, 'a symlink'), (stat.S_ISCHR, 'a character device'),
                       (stat.S_ISBLK, 'a block device'), (stat.S_ISFIFO, 'a FIFO (named pipe)'),
                       (stat.S_ISSOCK, 'a socket')):
        if test(mode):
            return name
    return 'a special file' if not stat.S_ISREG(mode) else 'a regular file'


def _umask() -> int:
    try:  # Linux >= 4.7 reports it without changing it
        with open('/proc/self/status', encoding='ascii') as f:
            for line in f:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The permissions ``open()`` gives a new file under the current umask (0644 under 022)."""
    return 0o666 & ~_umask()


def check_target(path: PathLike, overwrite: bool = False, what: str = '') -> Path:
    """Refuse to write ``path`` unless it is new, or a regular file and ``overwrite``: a device, FIFO, socket,
    folder or symlink is never replaced. ``what`` names the input (e.g. ``'--out'``) in the message."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path
    except NotADirectoryError:
        raise UnsafePathError(f'{_label(path, what)}: a part of {path.parent} is a file, not a folder; pass a path '
                              f'in a folder.') from None
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(
            f'{_label(path, what)}: is a symlink (to {os.readlink(path)}), expected a regular file or a new name. '
            f'Nothing is written through a symlink: pass the path of the file itself, or another path.')
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePathError(
            f'{_label(path, what)}: is {_kind(st.st_mode)}, not a regular file, and is never replaced. Pass the '
            f'path of a file to write: a new name, or an existing regular file with --overwrite.')
    if not overwrite:
        raise ExistingPathError(
            f'{_label(path, what)}: {path.name} exists and is left as it is; pass --overwrite (overwrite=True) to '
            f'replace it, or another path.')
    return path


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _new_temporary(path: Path, suffix: str = '') -> Path:
    """An empty ``NAME.tmp-PID`` beside ``path``, created by this call (never an existing file or a symlink)."""
    tmp = path.with_name(f'{path.name}.tmp-{os.getpid()}{suffix}')
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o666)
    except FileExistsError:  # left by a killed process whose pid this one has now: the name is this process's
        os.unlink(tmp)
        fd = os.open(tmp, flags, 0o666)
    os.close(fd)
    return tmp


def _fsync(path: Path, folder: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (0 if folder else _NOFOLLOW) | _CLOEXEC)
    except OSError:
        if folder:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not folder:  # some file systems cannot sync a folder; the file itself must be
            raise
    finally:
        os.close(fd)


def _install(tmp: Path, path: Path, overwrite: bool, what: str) -> None:
    """Put the finished temporary at ``path``, the rules checked again just before."""
    st = os.lstat(tmp)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePathError(f'{tmp} became {_kind(st.st_mode)} while it was written; {path} is left as it was.')
    os.chmod(tmp, file_mode())
    check_target(path, overwrite, what)
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails when path exists: a file that appeared meanwhile is not replaced
    except FileExistsError:
        check_target(path, overwrite, what)
        raise
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS):
            raise
        check_target(path, overwrite, what)  # a file system without hard links
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def move_file(src: PathLike, dst: PathLike, *, overwrite: bool = False, what: str = '') -> Path:
    """Move the finished regular file ``src`` (in ``dst``'s folder) to ``dst`` by the rules of :func:`atomic_write`."""
    _install(Path(src), Path(dst), overwrite, what)
    return Path(dst)


def atomic_write(path: PathLike, write: Callable[[str], Any], *, overwrite: bool = False, what: str = '',
                 check: Optional[Callable[[str], Any]] = None, suffix: str = '') -> Path:
    """Call ``write(tmp)`` with the path of a new empty file beside ``path``, flush it to disk, run ``check(tmp)``
    (which raises to keep the old file, e.g. a record that does not validate) and rename it to ``path``. On any
    failure, signals included (:func:`signals_unwind`), the temporary is removed and ``path`` is as it was.

    ``path`` must be new, or a regular file and ``overwrite``; the file gets the umask's permissions. ``suffix``
    ends the temporary's name, for writers that pick a format by it (``.onnx``)."""
    path = Path(path)
    check_target(path, overwrite, what)  # before any work
    tmp = _new_temporary(path, suffix)
    try:
        write(str(tmp))
        _fsync(tmp)
        if check is not None:
            check(str(tmp))
        _install(tmp, path, overwrite, what)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _fsync(path.parent, folder=True)  # the rename itself durable
    return path


def write_bytes(path: PathLike, data: bytes, *, overwrite: bool = False, what: str = '',
                check: Optional[Callable[[str], Any]] = None) -> Path:
    """:func:`atomic_write` of ``data``."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), overwrite=overwrite, what=what, check=check)


def write_text(path: PathLike, text: str, *, overwrite: bool = False, what: str = '',
               check: Optional[Callable[[str], Any]] = None) -> Path:
    """:func:`atomic_write` of ``text`` as UTF-8."""
    return write_bytes(path, text.encode('utf-8'), overwrite=overwrite, what=what, check=check)


def copy_file(src: PathLike, dst: PathLike, *, overwrite: bool = False, what: str = '') -> Path:
    """:func:`atomic_write` of a copy of the regular file ``src`` (its bytes, streamed)."""
    def write(tmp):
        with _open_regular(Path(src)) as f, open(tmp, 'wb') as out:
            shutil.copyfileobj(f, out, 1 << 20)
    return atomic_write(dst, write, overwrite=overwrite, what=what)


def append_text(path: PathLike, text: str, what: str = '') -> Path:
    """Append ``text`` to the regular file ``path`` (created if new); a symlink or special file is refused."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | _NOFOLLOW | _CLOEXEC, 0o666)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
            check_target(path, True, what)  # says what the path is
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnsafePathError(f'{_label(path, what)}: is {_kind(mode)}, not a regular file; nothing is '
                                  f'appended to it. Pass another folder.')
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, 'a', encoding='utf-8', newline='') as f:
        f.write(text)
    return path


def remove_stale_temporaries(folder: PathLike) -> List[Path]:
    """Delete the ``NAME.tmp-PID`` files in ``folder`` that :func:`atomic_write` left when its process was killed
    (SIGKILL, power loss) mid-write; those of a process still alive are kept. Returns the removed paths."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        match = _TMP_NAME.fullmatch(path.name)
        if match and path.is_file() and not path.is_symlink() and not _pid_alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno == errno.EPERM  # exists, owned by someone else
    return True


# --- reading from a folder that is published ----------------------------------------------------------------------

def file_inside(root: PathLike, name: str, what: str = '', missing_ok: bool = False) -> Optional[Path]:
    """The real path of the regular file ``root/name``, which must lie inside ``root`` (a symlink to another file
    of ``root`` is fine, one out of it is refused). None when it is missing and ``missing_ok``."""
    root, given = Path(root), Path(root) / name
    real_root = root.resolve(strict=True)
    try:
        real = given.resolve(strict=True)
    except (FileNotFoundError, RuntimeError, OSError):
        if missing_ok and not os.path.lexists(given):
            return None
        if os.path.islink(given):
            raise UnsafePathError(f'{_label(given, what)}: is a broken symlink (to {os.readlink(given)}); a folder '
                                  f'that is published holds its own files. Replace the link by the file.') from None
        raise
    if real != real_root and real_root not in real.parents:
        raise UnsafePathError(
            f'{_label(given, what)}: is a symlink to {real}, outside {root}; a folder that is published or copied '
            f'may only hold its own files (a link out could publish any file of this machine, such as a token). '
            f'Replace the link by the file itself.')
    mode = os.stat(real).st_mode
    if not stat.S_ISREG(mode):
        raise UnsafePathError(f'{_label(given, what)}: is {_kind(mode)}, not a regular file. Stage the folder again.')
    return real


@contextlib.contextmanager
def _open_regular(path: Path):
    """``path`` opened for reading if it is a regular file (a FIFO is refused without blocking on it)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | _CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnsafePathError(f'{path}: is {_kind(mode)}, not a regular file.')
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, 'rb') as f:
        yield f


def copy_inside(root: PathLike, names: Iterable[str], dest: PathLike, what: str = '') -> Path:
    """Copy the files ``names`` of ``root`` (each checked by :func:`file_inside`) into the folder ``dest``."""
    for name in names:
        copy_file(file_inside(root, name, what), Path(dest) / name)
    return Path(dest)


# --- folders: built in full before they take their name; one writer per run folder -------------------------------

@contextlib.contextmanager
def temporary_folder(prefix: str = 'timm_mlit-') -> Iterator[Path]:
    """A private folder in the system's temporary space, removed afterwards (signals included)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


class _Lock:
    """An exclusive ``flock`` on ``path`` (created if new, never through a symlink), holding this process's pid."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: Optional[int] = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | _NOFOLLOW | _CLOEXEC, 0o666)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UnsafePathError(f'{self.path}: is not a regular file; it cannot be a lock. Remove it.')
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f'{os.getpid()}\n'.encode())
        self.fd = fd
        return True

    def holder(self) -> str:
        try:
            return f'pid {int(self.path.read_text().strip())}'
        except (OSError, ValueError):
            return 'another process'

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


class FolderLock:
    """Hold the run folder ``folder`` for one writer: an exclusive lock on ``folder/.mlit-lock`` for as long as the
    ``with`` block runs (the kernel drops it when the process dies, so a killed run never blocks its resume). A
    second writer is refused with :class:`BusyError`. ``fresh`` refuses a folder that holds anything else: a new run
    never writes into a finished one's files."""

    NAME = '.mlit-lock'

    def __init__(self, folder: PathLike, what: str = '', fresh: bool = False, fix: str = ''):
        self.folder, self.what, self.fresh, self.fix = Path(folder), what, fresh, fix
        self._lock = _Lock(self.folder / self.NAME)

    def __enter__(self) -> 'FolderLock':
        if not self._lock.acquire():
            raise BusyError(
                f'{_label(self.folder, self.what)}: another run ({self._lock.holder()}) is writing this folder; two '
                f'writers would mix their logs and checkpoints. Wait for it to end, or pick another '
                f'{self.what or "folder"}.')
        if self.fresh:
            found = sorted(p.name for p in self.folder.iterdir() if p.name != self.NAME)
            if found:
                self._lock.release()
                shown = ', '.join(found[:5]) + (f' and {len(found) - 5} more' if len(found) > 5 else '')
                raise ExistingPathError(
                    f'{_label(self.folder, self.what)}: the folder holds another run\'s files ({shown}), which a new '
                    f'run would overwrite; nothing was changed. {self.fix or "Pick another folder."}')
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()


class PartialFolder:
    """A folder written in full under a temporary name (``OUT.partial``) and renamed to its target by
    :meth:`commit`; removed on any failure, signals included. While it is written it holds a lock file
    (``.mlit-writing``), which marks it as this command's: a folder of that name that another live run holds is
    refused (:class:`BusyError`), one a killed run of this command left is removed, and any other one is the
    user's and refused, unless ``may_remove(path)`` says it may go."""

    MARKER = '.mlit-writing'

    def __init__(self, path: PathLike, what: str = '', may_remove: Optional[Callable[[Path], bool]] = None):
        self.path, self.what, self.may_remove = Path(path), what, may_remove
        self._lock = _Lock(self.path / self.MARKER)
        self._done = False

    def _clear_leftover(self) -> None:
        path = self.path
        mode = os.lstat(path).st_mode
        if not stat.S_ISDIR(mode):
            raise UnsafePathError(f'{_label(path, self.what)}: {path} exists and is {_kind(mode)}; it is left as it '
                                  f'is. Remove it yourself, or pick another output.')
        marker = path / self.MARKER
        if os.path.lexists(marker) and not os.path.islink(marker):
            probe = _Lock(marker)
            if not probe.acquire():
                raise BusyError(f'{_label(path, self.what)}: another run ({probe.holder()}) is writing {path}. Wait '
                                f'for it to end, or pick another output.')
            probe.release()
            shutil.rmtree(path)  # left by a run of this command that was killed
        elif self.may_remove is not None and self.may_remove(path):
            shutil.rmtree(path)
        else:
            raise ExistingPathError(
                f'{_label(path, self.what)}: {path} exists and was not made by this command; it is left as it is. '
                f'Remove it yourself, or pick another output.')

    def __enter__(self) -> 'PartialFolder':
        if os.path.lexists(self.path):
            self._clear_leftover()
        try:
            os.mkdir(self.path, 0o777)
        except FileExistsError:  # another run made it between the check and now
            raise BusyError(f'{_label(self.path, self.what)}: another run is writing {self.path}. Wait for it to '
                            f'end, or pick another output.') from None
        try:
            self._lock.acquire()
        except BaseException:
            shutil.rmtree(self.path, ignore_errors=True)
            raise
        return self

    def commit(self, target: PathLike, replace: Optional[Callable[[Path], bool]] = None) -> Path:
        """Rename the finished folder to ``target``. An existing ``target`` is replaced only when ``replace(target)``
        is true (the caller's check that it is what the command writes, and --overwrite); the swap keeps the old
        folder until the new one is in place."""
        target = Path(target)
        os.unlink(self.path / self.MARKER)
        if os.path.lexists(target):
            mode = os.lstat(target).st_mode
            if not stat.S_ISDIR(mode) or replace is None or not replace(target):
                raise ExistingPathError(f'{_label(target, self.what)}: {target} exists and is left as it is; pass '
                                        f'--overwrite to replace it (only a folder this command wrote), or another '
                                        f'output.')
            old = target.with_name(f'.{target.name}.old-{os.getpid()}')
            os.rename(target, old)
            try:
                os.rename(self.path, target)
            except BaseException:
                os.rename(old, target)
                raise
            self._done = True
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(self.path, target)
            self._done = True
        _fsync(target.parent, folder=True)
        return target

    def __exit__(self, *exc) -> None:
        self._lock.release()
        if not self._done:
            shutil.rmtree(self.path, ignore_errors=True)


# --- signals ----------------------------------------------------------------------------------------------------

def _unwind(signum, frame):
    for sig in _ENDING:  # a second signal does not cut the clean-up short
        with contextlib.suppress(ValueError, OSError):
            signal.signal(sig, signal.SIG_IGN)
    raise SystemExit(128 + signum)


_ENDING = tuple(getattr(signal, name) for name in ('SIGTERM', 'SIGHUP') if hasattr(signal, name))


@contextlib.contextmanager
def signals_unwind():
    """TERM and HUP (what schedulers, torchrun and a closed terminal send) raise ``SystemExit(128 + signal)`` so
    that the ``finally`` blocks, which remove temporaries and partial folders, run; INT gets Python's
    ``KeyboardInterrupt`` if it had no handler. A signal that was ignored (nohup) stays ignored. The previous
    handlers come back on exit. Outside the main thread it does nothing."""
    previous = {}
    wanted = [(sig, _unwind) for sig in _ENDING] + [(signal.SIGINT, signal.default_int_handler)]
    for sig, handler in wanted:
        try:
            old = signal.getsignal(sig)
            if old == signal.SIG_IGN or (sig == signal.SIGINT and old != signal.SIG_DFL):
                continue
            previous[sig] = signal.signal(sig, handler)
        except (ValueError, OSError):  # not the main thread
            continue
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def command(main: Callable) -> Callable:
    """Run a command's ``main`` under :func:`signals_unwind`."""
    @functools.wraps(main)
    def run(*args, **kwargs):
        with signals_unwind():
            return main(*args, **kwargs)
    return run


# --- reading weights ----------------------------------------------------------------------------------------------

def safe_globals() -> list:
    """The one allow-list of :func:`torch_load` beyond tensors and plain values: ``argparse.Namespace`` (timm's
    train.py saves its ``args`` as one) and what rebuilds NumPy arrays, dtypes and scalars (an RNG state, a metric);
    none of them calls code named by the file."""
    import numpy as np
    multiarray = getattr(np, '_core', None) or np.core  # NumPy 2 / 1
    names = ['bool', 'int8', 'int16', 'int32', 'int64', 'uint8', 'uint16', 'uint32', 'uint64', 'float16',
             'float32', 'float64']
    return [argparse.Namespace, np.ndarray, np.dtype, multiarray.multiarray._reconstruct,
            multiarray.multiarray.scalar, *dict.fromkeys(type(np.dtype(n)) for n in names)]


def torch_load(path: PathLike, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU with :func:`safe_globals`: tensors and plain data only. A
    file that needs anything else raises ``pickle.UnpicklingError`` (naming the global); nothing of it runs."""
    import torch
    with torch.serialization.safe_globals(safe_globals()):
        return torch.load(path, map_location='cpu', weights_only=True, mmap=mmap)


def load_safetensors(path: PathLike) -> Dict[str, Any]:
    """The tensors of a safetensors file (a format that holds nothing but tensors and string metadata)."""
    from safetensors.torch import load_file
    return load_file(str(path))


def load_weights(path: PathLike, mmap: bool = False) -> Any:
    """A ``.safetensors`` file by :func:`load_safetensors`, anything else by :func:`torch_load`."""
    return load_safetensors(path) if str(path).endswith('.safetensors') else torch_load(path, mmap=mmap)
