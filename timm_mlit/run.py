"""Run one of timm's own scripts (validate.py, inference.py, benchmark.py, …) unmodified, with timm_mlit loaded.

train.py has ``--device-modules timm_mlit``; the other scripts have no such flag, so this imports timm_mlit and then
executes the script as ``__main__`` with the remaining arguments:

    mlit-validate --model mlit_xxs --checkpoint ... --data-dir ...          # timm's validate.py
    mlit-run inference.py --model mlit_xxs ...                              # any script, by name or path
    python -m timm_mlit.run path/to/pytorch-image-models/validate.py ...    # the same, without the console scripts

timm's scripts are not in the timm wheel: clone pytorch-image-models (at the tag of your timm version). A script named
without a folder is looked up in $TIMM_SCRIPTS, then ./timm-scripts/ and ./pytorch-image-models/.
"""
import argparse
import os
import runpy
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from timm_mlit.argtypes import ProseHelpFormatter, plain_text

__all__ = ['find_script', 'main', 'validate_main']

SEARCH_ENV = 'TIMM_SCRIPTS'
_SEARCH_DIRS = ('timm-scripts', 'pytorch-image-models')


def _search_dirs() -> List[Path]:
    dirs = [Path(os.environ[SEARCH_ENV]).expanduser()] if os.environ.get(SEARCH_ENV) else []
    return dirs + [Path(d) for d in _SEARCH_DIRS]


def find_script(script: str) -> Path:
    """The path of timm's ``script``: as given if it is a file, else ``NAME`` / ``NAME.py`` in $TIMM_SCRIPTS,
    ./timm-scripts or ./pytorch-image-models. Raises ``FileNotFoundError`` naming where it looked and the fix."""
    given = Path(script).expanduser()
    if given.is_file():
        return given
    name = script if script.endswith('.py') else f'{script}.py'
    looked = []
    if given.parent == Path('.'):
        for folder in _search_dirs():
            candidate = folder / name
            looked.append(str(candidate))
            if candidate.is_file():
                return candidate
    where = f" nor {', '.join(looked)}" if looked else ''
    raise FileNotFoundError(
        f"timm script {script!r}: not found (not a file{where}). timm's scripts are not in the timm wheel: "
        f"git clone https://github.com/huggingface/pytorch-image-models timm-scripts (the tag of your timm version), "
        f"then pass the script's path or set {SEARCH_ENV}=/path/to/timm-scripts.")


def _run(script: Path, args: Sequence[str]) -> None:
    import timm_mlit  # noqa: F401  registers the models before the script looks them up
    sys.argv = [str(script), *args]
    runpy.run_path(str(script), run_name='__main__')


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``mlit-run SCRIPT [ARGS...]``: run timm's SCRIPT (a path, or a name looked up as described above)."""
    p = argparse.ArgumentParser(prog='mlit-run', description=__doc__,
                                formatter_class=ProseHelpFormatter)
    p.add_argument('script', help="timm's script: a path, or a name (validate, inference.py, benchmark, ...)")
    p.add_argument('args', nargs=argparse.REMAINDER, help="the script's own arguments (its --help lists them)")
    ns = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        script = find_script(ns.script)
    except FileNotFoundError as e:
        p.error(str(e))
    _run(script, ns.args)


def validate_main(argv: Optional[Sequence[str]] = None) -> None:
    """``mlit-validate [ARGS...]``: timm's validate.py with timm_mlit loaded (its own ``--help`` once found)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        script = find_script('validate.py')
    except FileNotFoundError as e:
        if {'-h', '--help'} & set(argv):
            print(f'usage: mlit-validate [validate.py arguments]\n\n{plain_text(__doc__)}\n'
                  f"validate.py's own arguments are listed by mlit-validate --help once it is found.\n\n"
                  f'Now: {e}')
            sys.exit(0)
        sys.exit(f'mlit-validate: {e}')
    _run(script, argv)


if __name__ == '__main__':
    main()
