"""Run one of timm's own scripts (validate.py, inference.py, benchmark.py, …) unmodified, with timm_mlit loaded.

train.py has ``--device-modules timm_mlit``; the other scripts have no such flag, so:

    python -m timm_mlit.run path/to/pytorch-image-models/validate.py --model mlit_xxs --checkpoint ... --data-dir ...

imports timm_mlit and then executes the script as ``__main__`` with the remaining arguments.
"""
import runpy
import sys

import timm_mlit  # noqa: F401  registers the models before the script looks them up


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    runpy.run_path(script, run_name='__main__')


if __name__ == '__main__':
    main()
