"""README.md and docs/*.md against the repository and the code: the front page's length, every relative link and
anchor, and the quoted lines (the mlit-* commands and their flags, recipe names, model names and tags, the two
commands .ci/run runs, the figures test_mlit.py and test_profiling.py pin, where each measured figure comes from)."""
import argparse
import contextlib
import importlib
import io
import itertools
import re
from pathlib import Path

import pytest
import timm

import timm_mlit  # noqa: F401  registers the models
from timm_mlit.cli import PROGS
from timm_mlit.configs import list_recipes

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / 'README.md'
DOCS = sorted((ROOT / 'docs').glob('*.md'))
PAGES = [README] + DOCS
README_MAX_LINES = 250
MLIT_SIZES = ('mlit_s', 'mlit_xs', 'mlit_xxs')
# commands whose flags belong to the timm script they run (validate.py, onnx_export.py, ...), not to a parser of ours
FORWARDING = {'mlit-validate', 'mlit-run'}
MODULE_PROGS = {target.split(':')[0]: prog for target, prog in PROGS.items()}  # python -m MODULE -> its command


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _split(text: str):
    """(prose lines, code blocks) of a markdown page: fenced blocks apart, each a list of lines."""
    prose, blocks, block = [], [], None
    for line in text.splitlines():
        if line.lstrip().startswith('```'):
            if block is None:
                block = []
            else:
                blocks.append(block)
                block = None
        elif block is None:
            prose.append(line)
        else:
            block.append(line)
    assert block is None, 'a code fence is not closed'
    return prose, blocks


def _inline_code(lines):
    return [m.group(1) for line in lines for m in re.finditer(r'`([^`]+)`', line)]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: formatting dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', heading)  # a link's text
    text = text.replace('`', '').strip().lower()
    text = re.sub(r'[^\w\- ]', '', text)
    return text.replace(' ', '-')


def _anchors(page: Path) -> set:
    prose, _ = _split(page.read_text())
    seen, anchors = {}, set()
    for line in prose:
        m = re.match(r'#{1,6}\s+(.*?)\s*#*\s*$', line)
        if m:
            slug = _slug(m.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            anchors.add(slug if n == 0 else f'{slug}-{n}')
    return anchors


def _links(page: Path):
    prose, _ = _split(page.read_text())
    for line in prose:
        line = re.sub(r'`[^`]*`', '', line)  # a link inside inline code is no link
        for m in re.finditer(r'\[[^\]]*\]\(([^)\s]+)\)', line):
            yield m.group(1)


def _command_lines(page: Path):
    """Shell lines as a reader would type them: code-block lines joined over trailing backslashes, comments
    dropped, plus every inline code span that runs a command."""
    prose, blocks = _split(page.read_text())
    for block in blocks:
        joined, acc = [], ''
        for line in block:
            if line.rstrip().endswith('\\'):
                acc += line.rstrip()[:-1] + ' '
                continue
            joined.append(acc + line)
            acc = ''
        if acc:
            joined.append(acc)
        for line in joined:
            line = re.sub(r'(^|\s)#(\s.*|$)', '', line)  # a shell comment
            if line.strip():
                yield line
    for span in _inline_code(prose):
        if re.search(r'(?<![\w/.-])mlit-[a-z]|-m timm_mlit\.', span):
            yield span


def _invocations(line: str):
    """(command, argument tokens) for each mlit-* command and ``python -m timm_mlit.X`` in a shell line."""
    pattern = r'(?<![\w/.-])(mlit-[a-z][a-z-]*)|-m (timm_mlit[\w.]*)'
    for m in re.finditer(pattern, line):
        prog = m.group(1) or MODULE_PROGS.get(m.group(2))
        if prog is None:
            continue
        rest = re.split(r'\)|&&|\|\||;|\|(?!\d)', line[m.end():], maxsplit=1)[0]
        tokens = []
        for token in rest.split():
            if token == '--':  # what follows is another command (mlit-run-info RUN -- <train command>)
                break
            tokens.append(token.strip('[]"\''))
        yield prog, tokens


def _all_invocations():
    for page in PAGES:
        for line in _command_lines(page):
            for prog, tokens in _invocations(line):
                yield page, line, prog, tokens


def _placeholder(token: str) -> bool:
    """NAME, MODEL.TAG, <run>, ..., DATA/DATASET: a value the reader fills in."""
    return (token in ('', '...') or '<' in token or re.fullmatch(r'[A-Z][A-Z0-9_./-]*', token) is not None
            or token.startswith('$'))


_PARSERS = {}


def _option_strings(prog: str, tokens) -> set:
    """Every option string of ``prog``'s argument parser(s), taken from the parser objects its ``main`` builds
    (``main(['--help'])``, parse_known_args recorded), so a flag named only in a help text does not count; with
    subcommands (``mlit-prepare-data cifar10 ...``), those of the subcommand the tokens name."""
    if prog not in _PARSERS:
        target = next(t for t, p in PROGS.items() if p == prog)
        module, _, function = target.partition(':')
        main = getattr(importlib.import_module(module), function)
        parsers, original = [], argparse.ArgumentParser.parse_known_args

        def recording(self, *args, **kwargs):
            parsers.append(self)
            return original(self, *args, **kwargs)

        argparse.ArgumentParser.parse_known_args = recording
        try:
            with contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit):
                main(['--help'])
        finally:
            argparse.ArgumentParser.parse_known_args = original
        assert parsers, f'{prog}: main built no argument parser'
        _PARSERS[prog] = parsers
    options = set()
    for parser in _PARSERS[prog]:
        options |= set(parser._option_string_actions)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                named = [action.choices[t] for t in tokens if t in action.choices][:1]
                assert named, f'{prog} {" ".join(tokens)}: no subcommand of {sorted(action.choices)} named'
                options |= set(named[0]._option_string_actions)
    return options


def _registered_tags(arch: str) -> set:
    """The tags timm has a pretrained cfg for, weights or not (``list_models(pretrained=True)`` lists only those
    whose weights load)."""
    return {name.partition('.')[2] for name in timm.models.get_arch_pretrained_cfgs(arch)}


def _expand_braces(text: str):
    m = re.search(r'\{([^{}]*)\}', text)
    if not m:
        return [text]
    return list(itertools.chain.from_iterable(
        _expand_braces(text[:m.start()] + alt + text[m.end():]) for alt in m.group(1).split(',')))


# --- (a) the front page and the links ----------------------------------------------------------------------------

def test_readme_is_a_front_page():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f'README.md has {len(lines)} lines; keep it at most {README_MAX_LINES} ' \
                                           f'and move detail to a page in docs/'


def test_readme_links_every_docs_page():
    linked = {(README.parent / link.split('#')[0]).resolve() for link in _links(README) if not link.startswith('#')}
    missing = [_rel(page) for page in DOCS if page.resolve() not in linked]
    assert not missing, f'README.md does not link {missing}: add them to its table of contents'


@pytest.mark.parametrize('page', PAGES, ids=_rel)
def test_relative_links_and_anchors_exist(page):
    bad = []
    for link in _links(page):
        if re.match(r'[a-z][a-z0-9+.-]*:', link):  # https:, mailto:
            continue
        path, _, anchor = link.partition('#')
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            bad.append(f'{link}: no file {target}')
        elif anchor and target.suffix == '.md' and anchor not in _anchors(target):
            bad.append(f'{link}: no heading with anchor #{anchor} in {_rel(target)}')
    assert not bad, f'{_rel(page)}: ' + '; '.join(bad)


@pytest.mark.parametrize('page', DOCS, ids=_rel)
def test_docs_page_says_what_it_is_for(page):
    """A reader arriving from a search engine: a title, then a first paragraph saying what the page is for."""
    prose, _ = _split(page.read_text())
    assert prose[0].startswith('# '), f'{_rel(page)} does not start with a title'
    first = ' '.join(itertools.takewhile(str.strip, (line for line in prose[2:])))
    assert prose[1] == '' and 'This page' in first, \
        f'{_rel(page)}: the first paragraph should say what the page is for ("This page is for ...")'


@pytest.mark.parametrize('page', PAGES, ids=_rel)
def test_no_page_mentions_the_internal_spec(page):
    assert 'SPEC' not in page.read_text()


# --- (b) quoted lines against the code ---------------------------------------------------------------------------

def test_the_two_commands_are_the_ones_ci_runs():
    text = README.read_text()
    main_job = 'python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/python -m timm_mlit'
    tests = "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && .venv/bin/python -m pytest -q"
    assert main_job in text.splitlines() and tests in text.splitlines()
    ci = [line.strip() for line in (ROOT / '.ci' / 'run').read_text().splitlines()]
    assert tests in ci, ".ci/run no longer runs the README's test command"
    assert '. .venv/bin/activate' in text.splitlines(), 'the README must say to activate .venv for the mlit-* names'


def test_every_named_command_is_installed():
    pyproject = (ROOT / 'pyproject.toml').read_text()
    section = re.search(r'^\[project\.scripts\][^\n]*\n(.*?)(^\[|\Z)', pyproject, re.M | re.S)
    scripts = set(re.findall(r'^([\w-]+) = ', section.group(1), re.M))
    assert scripts == set(PROGS.values())
    bad = set()
    for page in PAGES:
        for name in re.findall(r'(?<![\w/.~#-])mlit-[a-z][a-z-]*[a-z]', page.read_text()):
            if name not in scripts:
                bad.add(f'{_rel(page)}: {name}')
    assert not bad, f'commands not in pyproject [project.scripts]: {sorted(bad)}'


def test_every_shown_flag_exists_in_its_commands_parser():
    bad, seen = [], 0
    for page, line, prog, tokens in _all_invocations():
        if prog in FORWARDING or not any(t.startswith('--') and len(t) > 2 for t in tokens):
            continue
        options = _option_strings(prog, tokens)
        for token in tokens:
            if token.startswith('--') and len(token) > 2:
                seen += 1
                flag = token.split('=')[0]
                if flag not in options:
                    bad.append(f'{_rel(page)}: {prog} has no {flag} (in: {line.strip()})')
    assert seen > 30, 'the scan found too few flags: is it still reading the pages?'
    assert not bad, '\n'.join(bad)


def test_every_shown_recipe_exists():
    recipes, bad, seen = set(list_recipes()), [], 0

    def check(page, name, where):
        nonlocal seen
        for one in _expand_braces(name):
            one = one[:-len('.yaml')] if one.endswith('.yaml') else one
            seen += 1
            if one not in recipes:
                bad.append(f'{_rel(page)}: recipe {one!r} is not in mlit-config --list (in: {where.strip()})')

    for page, line, prog, tokens in _all_invocations():
        if prog == 'mlit-config':
            args = [t for i, t in enumerate(tokens) if not t.startswith('-') and not
                    (i and tokens[i - 1] in ('--out',))]
            for name in args[:1]:
                if not _placeholder(name):
                    check(page, name, line)
        elif prog == 'mlit-pretrain' and '--config' in tokens:
            name = tokens[tokens.index('--config') + 1]
            if not _placeholder(name) and '/' not in name:
                check(page, name, line)
    for page in PAGES:
        prose, _ = _split(page.read_text())
        for span in _inline_code(prose):
            m = re.fullmatch(r'((table[4-6]_|maevit_c100_(pretrain|finetune)|'
                             r'mobile_vmoe_(superclass|end_to_end|imagenet))[\w{},]*)(\.yaml)?', span)
            if m:
                check(page, span, span)
    assert seen > 15, 'the scan found too few recipe names'
    assert not bad, '\n'.join(bad)


UNKNOWN_ON_PURPOSE = {'mlit_xxs.nope'}  # docs/weights.md's example of an unknown tag being refused


def test_every_shown_model_is_registered():
    registered, bad, seen = set(timm.list_models()), [], 0

    def check(page, name, where):
        nonlocal seen
        if (_placeholder(name) or name.startswith(('hf-hub:', 'local-dir:')) or '*' in name
                or name in UNKNOWN_ON_PURPOSE):
            return
        seen += 1
        arch, _, tag = name.partition('.')
        if arch not in registered:
            bad.append(f'{_rel(page)}: model {arch!r} is not registered (in: {where.strip()})')
        elif tag and not _placeholder(tag) and tag not in _registered_tags(arch):
            bad.append(f'{_rel(page)}: {arch} has no tag {tag!r} (in: {where.strip()})')

    for page in PAGES:
        text = page.read_text()
        for m in re.finditer(r"create_model\(\s*'([^']+)'", text):
            check(page, m.group(1), m.group(0))
        for m in re.finditer(r'--model[ =]([\w.]+)', text):
            check(page, m.group(1), m.group(0))
        prose, _ = _split(text)
        for span in _inline_code(prose):  # `mlit_xxs.c10`, `mobile_vmoe_9x96_patch3_36`
            if re.fullmatch(r'(mlit_(s|xs|xxs)|maevit_c100|mobile_vmoe_\w+)(\.\w+)?', span) and '.yaml' not in span:
                check(page, span, span)
    assert seen > 20, 'the scan found too few model names'
    assert not bad, '\n'.join(bad)


def test_the_weights_page_lists_every_tag():
    """docs/weights.md's tag table holds exactly the tags every mLiT size has."""
    prose, _ = _split((ROOT / 'docs' / 'weights.md').read_text())
    shown = {m.group(1) for line in prose for m in [re.match(r'\| `(\w+)`', line)] if m}
    for size in MLIT_SIZES:
        assert shown == _registered_tags(size), f'docs/weights.md lists {sorted(shown)}, {size} has ' \
                                                f'{sorted(_registered_tags(size))}'


def test_models_page_quotes_the_tested_counts():
    """docs/models.md's size table: the parameter counts test_mlit.py pins and the MACs test_profiling.py pins."""
    from test_mlit import OUR_PARAMS
    from test_profiling import MLIT_MACS
    text = (ROOT / 'docs' / 'models.md').read_text()
    rows = {m.group(1): m.group(0) for m in re.finditer(r'^\| (params without head|params with a 100-class head|MACs)'
                                                         r'[^\n]*', text, re.M)}
    assert len(rows) == 3, 'docs/models.md lost a row of its size table'
    for name in MLIT_SIZES:
        without, with_head = OUR_PARAMS[name]
        assert f'{without:,}' in rows['params without head'], name
        assert f'{with_head:,}' in rows['params with a 100-class head'], name
        grouped, static = MLIT_MACS[name]
        assert f'{grouped / 1e6:.1f}M' in rows['MACs'], name
        assert f'{static / 1e6:.1f}M' in rows['MACs'], name


TRAIN_LOG = re.compile(  # timm's train.py (v1.0.28 and since): _logger.info(f'Train: {epoch} [{update_idx:>4d}/...')
    r'Train: \d+ \[ *\d+/\d+ \( *\d+%\)\]  Loss: \S+ \(\S+\)  Time: \d+\.\d{3}s, +\d+\.\d{2}/s  '
    r'\(\d+\.\d{3}s, +\d+\.\d{2}/s\)  LR: \d\.\d{3}e[+-]\d\d  Data: \d+\.\d{3} \(\d+\.\d{3}\)')


def test_train_log_pattern_matches_train_pys_format():
    """The pattern below is train.py's own f-string, filled in (so that the check of the pages can fail)."""
    epoch, update_idx, updates_per_epoch, loss_now, loss_avg, t, n, lr, data = 3, 0, 195, 1.54, 1.54, 4.808, 256, \
        6e-4, 0.256
    line = (f'Train: {epoch} [{update_idx:>4d}/{updates_per_epoch} '
            f'({100. * (update_idx + 1) / updates_per_epoch:>3.0f}%)]  '
            f'Loss: {loss_now:#.3g} ({loss_avg:#.3g})  '
            f'Time: {t:.3f}s, {n / t:>7.2f}/s  ({t:.3f}s, {n / t:>7.2f}/s)  '
            f'LR: {lr:.3e}  Data: {data:.3f} ({data:.3f})')
    assert TRAIN_LOG.fullmatch(line)


@pytest.mark.parametrize('page', PAGES, ids=_rel)
def test_quoted_train_log_lines_are_train_pys(page):
    for line in page.read_text().splitlines():
        if re.search(r'Train: \d+ \[', line):
            assert TRAIN_LOG.search(line), f'{_rel(page)} quotes a train.py log line train.py does not print: {line}'


# --- where the measured figures come from ------------------------------------------------------------------------

def test_every_benchmark_script_has_its_figures_page():
    text = (ROOT / 'docs' / 'benchmarks.md').read_text()
    scripts = sorted(p.name for p in (ROOT / 'benchmarks').glob('bench_*.py'))
    missing = [s for s in scripts if f'benchmarks/{s}' not in text]
    assert not missing, f'docs/benchmarks.md does not name {missing}'
    for page in PAGES:
        for name in re.findall(r'benchmarks/([\w]+\.py)', page.read_text()):
            assert (ROOT / 'benchmarks' / name).is_file(), f'{_rel(page)} names benchmarks/{name}, which is gone'


def test_every_table_of_figures_names_its_script_and_machine():
    """Each section of docs/benchmarks.md that holds a table says which script measured it and on what."""
    text = (ROOT / 'docs' / 'benchmarks.md').read_text()
    for section in re.split(r'^## ', text, flags=re.M)[1:]:
        title = section.splitlines()[0]
        if re.search(r'^\|', section, re.M):
            assert re.search(r'benchmarks/bench_\w+\.py', section), f'"{title}": no benchmark script named'
            if 'bench_' in section and '| script |' not in section:
                assert re.search(r'\bCPU|\bGPU', section), f'"{title}": the machine is not named'
