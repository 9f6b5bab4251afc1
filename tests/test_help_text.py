"""Every console script's --help is prose and options: the module docstrings that double as descriptions are
written in reST for the API docs, and argparse must not print their markup (``literals``, :func:`roles`,
.. directives::). mlit-pretrain's help is tested with its own module."""
import re
from pathlib import Path

import pytest

from timm_mlit import cli
from timm_mlit.argtypes import ProseHelpFormatter, plain_text

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = dict(re.findall(r'^(mlit-[\w-]+) = "timm_mlit\.cli:(\w+)"$', (ROOT / 'pyproject.toml').read_text(), re.M))
CHECKED = sorted(set(SCRIPTS) - {'mlit-pretrain'})
# reST markup: any backquote (literals, roles, links), a directive, a paragraph ending in '::'
REST = re.compile(r'`|^\s*\.\. [\w-]+::|::\s*$', re.M)


def test_every_console_script_is_checked():
    assert len(SCRIPTS) == 9 and 'mlit-config' in CHECKED and 'mlit-pretrain' not in CHECKED


def _help(capsys, function, argv):
    with pytest.raises(SystemExit) as e:
        getattr(cli, function)(argv)
    out = capsys.readouterr().out
    assert e.value.code in (0, None), out
    return out


@pytest.mark.parametrize('script', CHECKED)
def test_help_is_prose_and_options(script, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv('TIMM_SCRIPTS', raising=False)
    monkeypatch.chdir(tmp_path)  # mlit-validate without timm's validate.py prints its own help
    out = _help(capsys, SCRIPTS[script], ['--help'])
    assert out.startswith('usage: '), out[:200]
    bad = [m.group(0) for m in REST.finditer(out)]
    assert not bad, f'{script} --help prints reST markup {bad[:5]}:\n{out}'
    if script != 'mlit-validate':  # argparse's options section
        assert '\noptions:\n' in out or '\noptional arguments:\n' in out


@pytest.mark.parametrize('dataset', ['cifar10', 'svhn', 'flowers102'])
def test_subcommand_help_is_prose(dataset, capsys):
    out = _help(capsys, 'prepare_data', [dataset, '--help'])
    assert out.startswith('usage: mlit-prepare-data') and not REST.search(out)


def test_plain_text_turns_rest_into_prose():
    text = ('Calls :func:`~timm_mlit.errors.run_command` and :class:`UserInputError` with ``--dataset \'\'``.\n'
            '.. note:: careful\nExample::\n\n    mlit-config --list\n')
    assert plain_text(text) == ("Calls run_command and UserInputError with --dataset ''.\nNote: careful\n"
                                "Example:\n\n    mlit-config --list\n")
    import argparse
    p = argparse.ArgumentParser(prog='x', description=':mod:`a.b` reads ``FILE``', formatter_class=ProseHelpFormatter)
    p.add_argument('--y', help='the ``Y`` of :func:`f`')
    out = p.format_help()
    assert 'a.b reads FILE' in out and 'the Y of f' in out and '`' not in out
