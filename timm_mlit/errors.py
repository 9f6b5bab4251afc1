"""The base class of every error a user can act on, and the one way a command reports it.

A command refuses bad input (an argument, a file, a folder, a checkpoint) with an exception of a subclass of
:class:`UserInputError` whose message names the input, what was expected and the fix. :func:`run_command` (what
every console script and ``python -m`` entry runs) prints that message as one line, ``PROG: error: MESSAGE``, and
exits with status 2, argparse's status for a usage error. Any other exception is a bug and keeps its traceback.

Python callers of a command's ``main(argv)`` get the exception itself (still a ``ValueError``; the loaders' errors
are also ``RuntimeError`` as before).

A package of an optional extra that is not installed is such an error too: :func:`require` raises
:class:`MissingExtraError` (also an ``ImportError``) naming what needs it and the ``pip install 'timm-mlit[EXTRA]'``
that installs it.
"""
import importlib
import sys
from typing import Any, Callable, NoReturn, Optional, Sequence

__all__ = ['UserInputError', 'MissingInputError', 'MissingExtraError', 'DivergedError', 'EXTRAS', 'require',
           'UsageExit',
           'USAGE_EXIT', 'exit_usage', 'run_command']

# the optional packages by the extra that installs them: pyproject.toml's [project.optional-dependencies]
EXTRAS = {'onnx': 'export', 'onnxruntime': 'export', 'onnxscript': 'export', 'scipy': 'data'}

USAGE_EXIT = 2  # argparse's exit status for a usage error; every user error exits with it


class UserInputError(ValueError):
    """Input the user can fix; the message names the input, what was expected and the fix."""


class MissingInputError(UserInputError, FileNotFoundError):
    """A file or folder the user named does not exist (also a ``FileNotFoundError``)."""


class DivergedError(UserInputError, FloatingPointError):
    """A training run's loss went non-finite (also a ``FloatingPointError``): the message names the epoch and the
    learning rate, and the fix, a smaller ``--lr``. Raised before anything of the diverged epoch is saved."""


class MissingExtraError(UserInputError, ImportError):
    """A package of one of timm-mlit's optional extras is not installed; the message names the extra to install."""


def require(*modules: str, what: str) -> None:
    """Import each of ``modules`` (optional packages, :data:`EXTRAS`) or raise :class:`MissingExtraError`: ``what``
    needs it, and ``pip install 'timm-mlit[EXTRA]'`` installs it."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            extra = EXTRAS.get(name.split('.')[0])
            fix = f"pip install 'timm-mlit[{extra}]'" if extra else f'pip install {name}'
            raise MissingExtraError(f'{what} needs {name}, which cannot be imported ({e}). Fix: {fix}') from e


class UsageExit(SystemExit):
    """``SystemExit(2)`` whose ``str()`` is the message :func:`exit_usage` printed."""

    def __init__(self, message: str):
        super().__init__(USAGE_EXIT)
        self.message = message

    def __str__(self) -> str:
        return self.message


def exit_usage(prog: str, message: str) -> NoReturn:
    """Print ``PROG: error: MESSAGE`` (one line) on stderr and exit with status 2."""
    message = ' '.join(str(message).split('\n')) or 'error'
    sys.stderr.write(f'{prog}: error: {message}\n')
    raise UsageExit(message)


def run_command(prog: str, main: Callable[[Optional[Sequence[str]]], Any],
                argv: Optional[Sequence[str]] = None) -> int:
    """Run ``main(argv)``; a :class:`UserInputError` becomes one line on stderr and exit status 2. Returns 0."""
    try:
        main() if argv is None else main(list(argv))  # main() reads sys.argv[1:] itself
    except UserInputError as e:
        exit_usage(prog, str(e) or type(e).__name__)
    return 0
