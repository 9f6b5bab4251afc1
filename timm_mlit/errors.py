"""The base class of every error a user can act on, and the one way a command reports it.

A command refuses bad input (an argument, a file, a folder, a checkpoint) with an exception of a subclass of
:class:`UserInputError` whose message names the input, what was expected and the fix. :func:`run_command` (what
every console script and ``python -m`` entry runs) prints that message as one line, ``PROG: error: MESSAGE``, and
exits with status 2, argparse's status for a usage error. Any other exception is a bug and keeps its traceback.

Python callers of a command's ``main(argv)`` get the exception itself (still a ``ValueError``; the loaders' errors
are also ``RuntimeError`` as before).
"""
import sys
from typing import Any, Callable, Optional, Sequence

__all__ = ['UserInputError', 'USAGE_EXIT', 'run_command']

USAGE_EXIT = 2  # argparse's exit status for a usage error; every user error exits with it


class UserInputError(ValueError):
    """Input the user can fix; the message names the input, what was expected and the fix."""


def run_command(prog: str, main: Callable[[Optional[Sequence[str]]], Any],
                argv: Optional[Sequence[str]] = None) -> int:
    """Run ``main(argv)``; a :class:`UserInputError` becomes one line on stderr and exit status 2. Returns 0."""
    try:
        main(None if argv is None else list(argv))
    except UserInputError as e:
        message = ' '.join(str(e).split('\n')) if str(e) else type(e).__name__
        sys.stderr.write(f'{prog}: error: {message}\n')
        raise SystemExit(USAGE_EXIT) from None
    return 0
