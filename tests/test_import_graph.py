"""The package's imports run one way: layers -> models -> (mae, hub, training, ...) -> scripts.

Every module under ``timm_mlit`` is parsed with ``ast`` (nothing is imported) and assigned a rank by :data:`RANKS`,
by its longest listed prefix. The rule:

  * a module may import a module of its own rank or of a lower one, never one of a higher rank;
  * no two packages import each other, directly or through others (no cycle between the top-level packages and
    modules of ``timm_mlit``), and no module imports itself through others (no module-level cycle).

Every import counts: ``import x``, ``from x import y`` (``y`` counted as the module ``x.y`` where that is a module),
relative imports, and imports inside functions (which run as surely, only later).

``timm_mlit/__init__.py`` registers everything (models, timm patches): it is the top and is exempt as an importer.
Imported, it counts as the scripts' rank: only a command (``timm_mlit.run``) may load the whole plugin by name.
"""
import ast
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP = 'timm_mlit'

RANKS: Dict[str, int] = {
    # -1: the one writer of files and reader of untrusted checkpoints, which everything else may use
    'timm_mlit._io': -1,
    # 0: building blocks that know no model: layers, data (incl. the super-class maps), the shipped recipe files
    'timm_mlit.errors': -2,  # UserInputError and run_command: what every command refuses input with
    'timm_mlit.argtypes': 0,  # the argparse type= functions every command checks its arguments with
    'timm_mlit.configs': 0,
    'timm_mlit.layers': 0,
    'timm_mlit.data': 0,
    # 1: the timm model families, their pretrained tags and load errors
    'timm_mlit.models': 1,
    # 2: what is built on the models: MAE pre-training, publishing, training hooks, export, measuring, fixtures
    'timm_mlit.mae': 2,
    'timm_mlit.hub': 2,
    'timm_mlit.recipes': 2,  # mlit-config: the recipe files by name, and the tags' recipes (the models' tag records)
    'timm_mlit.training': 2,
    'timm_mlit.export': 2,
    'timm_mlit.profiling': 2,
    'timm_mlit.testing': 2,
    # 3: commands
    'timm_mlit.scripts': 3,
    'timm_mlit.cli': 3,
    'timm_mlit.demo': 3,
    'timm_mlit.summary': 3,
    'timm_mlit.run': 3,
    'timm_mlit.__main__': 3,
    TOP: 3,  # the package itself, as an import target (see the module docstring)
}
RANK_NAMES = {-1: 'I/O', 0: 'layers/data', 1: 'models', 2: 'built on models', 3: 'scripts'}


def _modules() -> Dict[str, Tuple[Path, bool]]:
    """Dotted name -> (file, is a package's __init__) for every module under timm_mlit."""
    out = {}
    for path in sorted((ROOT / TOP).rglob('*.py')):
        parts = list(path.relative_to(ROOT).with_suffix('').parts)
        is_pkg = parts[-1] == '__init__'
        out['.'.join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


MODULES = _modules()


def _imports(name: str) -> List[Tuple[str, int]]:
    """(imported timm_mlit module, line) for each import in module ``name``, at any depth of its code."""
    path, is_pkg = MODULES[name]
    package = name.split('.') if is_pkg else name.split('.')[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                module = '.'.join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ''
            for a in node.names:
                sub = f'{module}.{a.name}'
                found.append((sub if sub in MODULES else module, node.lineno))
    return list(dict.fromkeys((m, line) for m, line in found if m == TOP or m.startswith(TOP + '.')))


def _rank(name: str) -> int:
    best = max((p for p in RANKS if name == p or (p != TOP and name.startswith(p + '.'))), key=len, default=None)
    assert best is not None, f'{name} has no rank: add it (or its package) to RANKS in {Path(__file__).name}'
    return RANKS[best]


def _unit(name: str) -> str:
    """The top-level package or module of timm_mlit that ``name`` belongs to."""
    return '.'.join(name.split('.')[:2])


EDGES = {name: _imports(name) for name in MODULES}


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_rank():
    for name in MODULES:
        _rank(name)


def test_no_module_imports_from_a_higher_rank():
    bad = []
    for name, imports in EDGES.items():
        if name == TOP:
            continue
        for target, line in imports:
            if _rank(target) > _rank(name):
                bad.append(f'{MODULES[name][0].relative_to(ROOT)}:{line}: {name} (rank {_rank(name)}, '
                           f'{RANK_NAMES[_rank(name)]}) imports {target} (rank {_rank(target)}, '
                           f'{RANK_NAMES[_rank(target)]})')
    assert not bad, 'imports against the layering:\n' + '\n'.join(bad)


def test_no_two_packages_import_each_other():
    graph = defaultdict(set)
    where = {}
    for name, imports in EDGES.items():
        if name == TOP:
            continue
        for target, line in imports:
            a, b = _unit(name), _unit(target)
            if a != b and b != TOP:
                graph[a].add(b)
                where.setdefault((a, b), f'{MODULES[name][0].relative_to(ROOT)}:{line} ({name} -> {target})')
    cycles = _cycles(graph)
    msg = []
    for cycle in cycles:
        edges = [where[(a, b)] for a in cycle for b in cycle if (a, b) in where]
        msg.append(f'{" <-> ".join(cycle)}:\n  ' + '\n  '.join(edges))
    assert not cycles, 'packages that import each other:\n' + '\n'.join(msg)


def test_no_module_level_cycle():
    graph = {name: {t for t, _ in imports if t in MODULES and t != name}
             for name, imports in EDGES.items() if name != TOP}
    # importing a package's submodule runs the package's __init__ first, which is no import cycle of the code
    cycles = _cycles(graph)
    assert not cycles, 'modules that import each other: ' + '; '.join(' <-> '.join(c) for c in cycles)


@pytest.mark.parametrize('source, expected', [
    ('from timm_mlit.hub.card import X', ['timm_mlit.hub.card']),  # ranked by its package, timm_mlit.hub
    ('def f():\n    from timm_mlit.hub import push', ['timm_mlit.hub.push']),
    ('import timm_mlit.models.mlit', ['timm_mlit.models.mlit']),
    ('from ..hub import tag_info', ['timm_mlit.hub.tag_info']),
    ('import os\nfrom timm import models', []),
])
def test_the_scan_sees_every_kind_of_import(source, expected, monkeypatch, tmp_path):
    path = tmp_path / 'probe.py'
    path.write_text(source)
    monkeypatch.setitem(MODULES, 'timm_mlit.models.probe', (path, False))
    found = [m for m, _ in _imports('timm_mlit.models.probe')]
    assert found == expected
    if expected and expected[0].startswith('timm_mlit.hub'):
        assert _rank(expected[0]) > _rank('timm_mlit.models.probe')  # the rule would name it
