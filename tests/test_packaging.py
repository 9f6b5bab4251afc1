"""The package a user installs: the wheel built from this checkout, installed into a fresh venv and run from a folder
outside the checkout (as CI does): every command's ``--help``, the recipes by name, a short MAE pre-training, a push
to a local Hub and a pull, train.py's library path with a named recipe. Plus the metadata a release needs, the timm
range check and the recipe resolver."""
import ast
import json
import os
import re
import shutil
import site
import subprocess
import sys
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

import timm_mlit
from timm_mlit import recipes
from timm_mlit.data.shapes import write_shapes
from timm_mlit.testing.local_hub import LocalHubServer
from timm_mlit.run import find_script

ROOT = Path(__file__).resolve().parents[1]
TOKEN = 'hf_packaging_test_token'
# the console scripts and the module each runs (also runnable as python -m MODULE)
COMMANDS = {
    'mlit-demo': 'timm_mlit', 'mlit-pretrain': 'timm_mlit.mae.pretrain', 'mlit-push': 'timm_mlit.hub.push',
    'mlit-run-info': 'timm_mlit.hub.run_info',
    'mlit-prepare-data': 'timm_mlit.data.prepare', 'mlit-derive-superclasses': 'timm_mlit.scripts.derive_superclasses',
    'mlit-config': 'timm_mlit.recipes', 'mlit-run': 'timm_mlit.run', 'mlit-validate': None,
}
# import name -> distribution, for the imports whose names differ
DISTRIBUTION = {'yaml': 'pyyaml', 'PIL': 'pillow'}


# ---------------------------------------------------------------------------------------------------------------- units

def test_recipes_by_name_and_path(tmp_path):
    names = recipes.list_recipes()
    assert 'table6_scratch_cifar10' in names and 'maevit_c100_pretrain_mae' in names and 'own_data' in names
    assert len(names) == 15
    path = recipes.recipe_path('table6_scratch_cifar10')
    assert path == recipes.RECIPE_DIR / 'table6_scratch_cifar10.yaml' and path.is_file()
    assert recipes.recipe_path('table6_scratch_cifar10.yaml') == path
    own = tmp_path / 'mine.yaml'
    own.write_text('epochs: 1\n')
    assert recipes.recipe_path(str(own)) == own  # a file path is taken as it is
    with pytest.raises(FileNotFoundError, match=r"recipe 'table9_nope'.*table6_scratch_cifar10"):
        recipes.recipe_path('table9_nope')
    with pytest.raises(ValueError, match='empty'):
        recipes.recipe_path('')


def test_write_recipe_is_the_shipped_file_and_refuses_to_overwrite(tmp_path):
    out = recipes.write_recipe('table6_scratch_svhn', tmp_path / 'r.yaml')
    assert out.read_bytes() == (recipes.RECIPE_DIR / 'table6_scratch_svhn.yaml').read_bytes()
    assert recipes.write_recipe('table6_scratch_svhn', tmp_path) == tmp_path / 'table6_scratch_svhn.yaml'
    with pytest.raises(FileExistsError, match='--overwrite'):
        recipes.write_recipe('table6_scratch_cifar10', out)
    assert out.read_bytes() == (recipes.RECIPE_DIR / 'table6_scratch_svhn.yaml').read_bytes()
    recipes.write_recipe('table6_scratch_cifar10', out, overwrite=True)
    assert b'cifar10' in out.read_bytes()
    with pytest.raises(FileNotFoundError, match='does not exist'):
        recipes.write_recipe('table6_scratch_cifar10', tmp_path / 'no' / 'r.yaml')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['r.yaml', 'table6_scratch_svhn.yaml']  # no temp left


def test_recipe_command(tmp_path, capsys):
    assert recipes.main(['--list']) == 0
    lines = capsys.readouterr().out.splitlines()  # NAME  the data it reads
    assert [line.split()[0] for line in lines] == recipes.list_recipes() and all(' ' in line for line in lines)
    recipes.main(['table4_finetune_cifar100'])
    assert capsys.readouterr().out.strip() == str(recipes.RECIPE_DIR / 'table4_finetune_cifar100.yaml')
    recipes.main(['table4_finetune_cifar100', '--out', str(tmp_path / 'a.yaml')])
    assert (tmp_path / 'a.yaml').is_file()
    with pytest.raises(SystemExit) as e:
        recipes.main(['nope'])
    assert e.value.code == 2 and "recipe 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize('version,ok', [
    ('1.0.31', True), ('1.0.32.dev0', True), ('1.0.30', False), ('1.0.24', False), ('1.1.0', False),
    ('1.1.0.dev0', False), ('0.9.16', False), ('2.0.0', False), ('garbage', False)])
def test_timm_outside_the_checked_range_is_refused_at_import(version, ok):
    if ok:
        timm_mlit._check_timm(version)
    else:
        with pytest.raises(ImportError, match=rf'needs timm>=1\.0\.31,<1\.1 .*timm {re.escape(version)} is installed'
                                              rf'.*pip install "timm>=1\.0\.31,<1\.1"'):
            timm_mlit._check_timm(version)


def test_declared_floors_are_the_ones_ci_tests():
    """Declared = tested: pyproject.toml's lower bounds for torch, torchvision and timm are exactly the versions
    .ci/run pins in its floor venv, and timm's is timm_mlit.TIMM_RANGE's low end."""
    pyproject = (ROOT / 'pyproject.toml').read_text()
    deps = re.search(r'^dependencies = \[(.*?)^\]', pyproject, re.S | re.M).group(1)
    declared = {name: re.search(rf'"{name}>=([\d.]+)[,"]', deps) for name in ('torch', 'torchvision', 'timm')}
    assert all(declared.values()), f'pyproject.toml dependencies lack a lower bound: {declared}'
    declared = {name: m.group(1) for name, m in declared.items()}
    pins = re.search(r'^FLOOR_PINS=\((.*?)\)', (ROOT / '.ci' / 'run').read_text(), re.M)
    assert pins, '.ci/run has no FLOOR_PINS=(...) line'
    pinned = dict(pin.split('==') for pin in pins.group(1).split())
    assert pinned == declared
    assert declared['timm'] == '.'.join(map(str, timm_mlit.TIMM_RANGE[0]))


def test_import_refuses_an_unsupported_timm_in_a_fresh_process():
    code = 'import timm; timm.__version__ = "1.1.0"; import timm_mlit'
    env = {**os.environ, 'PYTHONPATH': str(ROOT)}
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 1 and 'ImportError: timm_mlit' in result.stderr and 'timm 1.1.0 is installed' in \
        result.stderr


def test_find_script_names_where_it_looked_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv('TIMM_SCRIPTS', str(tmp_path / 'clone'))
    with pytest.raises(FileNotFoundError, match=r"'validate'.*clone/validate\.py.*git clone .*TIMM_SCRIPTS="):
        find_script('validate')
    (tmp_path / 'clone').mkdir()
    (tmp_path / 'clone' / 'validate.py').write_text('')
    assert find_script('validate') == tmp_path / 'clone' / 'validate.py'
    assert find_script(str(tmp_path / 'clone' / 'validate.py')) == tmp_path / 'clone' / 'validate.py'


def test_timm_script_runs_with_the_plugin_loaded(tmp_path, monkeypatch, capsys):
    """mlit-run executes the script as __main__ with its own arguments, timm_mlit's models registered."""
    from timm_mlit.run import main
    script = tmp_path / 'validate.py'
    script.write_text('import sys, timm\nprint(__name__, sys.argv[1:], timm.is_model("mlit_xxs"))\n')
    monkeypatch.setenv('TIMM_SCRIPTS', str(tmp_path))
    main(['validate', '--model', 'mlit_xxs', '--help'])
    assert capsys.readouterr().out.strip() == "__main__ ['--model', 'mlit_xxs', '--help'] True"


@pytest.mark.parametrize('command', [c for c in COMMANDS if c != 'mlit-validate'])
def test_console_script_exits_0_whatever_main_returns(command, monkeypatch):
    """A console script's return value is its exit status: main() returning a run folder or a commit must not make
    a successful command exit 1."""
    import importlib
    from timm_mlit import cli
    module = importlib.import_module(COMMANDS[command] if COMMANDS[command] != 'timm_mlit' else 'timm_mlit.demo')
    called = []
    monkeypatch.setattr(module, 'main', lambda: called.append(1) or Path('output/run'))
    assert getattr(cli, command[len('mlit-'):].replace('-', '_'))() == 0 and called == [1]


# ---------------------------------------------------------------------------------------- the wheel in a fresh venv

def _imported_top_level_modules():
    """The third-party packages timm_mlit's own files import (not the standard library, not itself)."""
    import importlib.util
    names = set()
    for path in (ROOT / 'timm_mlit').rglob('*.py'):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name.split('.')[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split('.')[0])
    third_party = set()
    for name in names - {'timm_mlit'}:
        spec = importlib.util.find_spec(name)
        origin = (spec.origin or '') if spec else ''
        if not spec or 'site-packages' in origin or 'dist-packages' in origin:
            third_party.add(name)
    return third_party


class Installed:
    """A venv holding only the wheel; torch and the other dependencies come from the test interpreter's site folders,
    added as plain paths (their .pth files, e.g. an editable install of this checkout, are not run)."""

    def __init__(self, tmp: Path):
        src = tmp / 'src'  # the files a build reads, so that the build writes nothing into the checkout
        shutil.copytree(ROOT / 'timm_mlit', src / 'timm_mlit', ignore=shutil.ignore_patterns('__pycache__'))
        for name in ('pyproject.toml', 'README.md', 'LICENSE'):
            shutil.copy2(ROOT / name, src / name)
        self.cwd = tmp / 'user'  # outside the checkout
        self.cwd.mkdir()
        self.env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH' and not k.startswith('HF_')}
        dist = tmp / 'dist'
        build = subprocess.run(
            [sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '--no-index', '-q', '-w',
             str(dist), str(src)], capture_output=True, text=True, cwd=self.cwd, env=self.env)
        assert build.returncode == 0, build.stdout + build.stderr
        (self.wheel,) = dist.glob('timm_mlit-*.whl')
        self.venv = tmp / 'venv'
        venv.EnvBuilder(with_pip=False).create(self.venv)
        self.bin = self.venv / ('Scripts' if os.name == 'nt' else 'bin')
        self.python = self.bin / 'python'
        install = subprocess.run(  # pip >= 22.3 installs into another interpreter's environment
            [sys.executable, '-m', 'pip', '--python', str(self.python), 'install', '--no-deps', '--no-index', '-q',
             str(self.wheel)], capture_output=True, text=True, cwd=self.cwd, env=self.env)
        assert install.returncode == 0, install.stdout + install.stderr
        purelib = subprocess.run([str(self.python), '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                                 capture_output=True, text=True, check=True, env=self.env).stdout.strip()
        assert (Path(purelib) / 'timm_mlit' / '__init__.py').is_file(), f'the wheel is not installed in {purelib}'
        ours = [p for p in site.getsitepackages() + [site.getusersitepackages()] if os.path.isdir(p)]
        Path(purelib, '_test_interpreter_site.pth').write_text('\n'.join(ours) + '\n')  # after the install
        self.env.update(PATH=f'{self.bin}{os.pathsep}{os.environ.get("PATH", "")}', HF_HUB_DISABLE_TELEMETRY='1')

    def run(self, *cmd, env=None, timeout=600):
        return subprocess.run([str(c) for c in cmd], cwd=self.cwd, env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=timeout)

    def python_code(self, code, env=None):
        return self.run(self.python, '-c', textwrap.dedent(code), env=env)


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
    return Installed(tmp_path_factory.mktemp('wheel'))


def test_wheel_metadata_is_releasable(installed):
    with zipfile.ZipFile(installed.wheel) as whl:
        names = whl.namelist()
        meta = whl.read(next(n for n in names if n.endswith('.dist-info/METADATA'))).decode()
        entry_points = whl.read(next(n for n in names if n.endswith('.dist-info/entry_points.txt'))).decode()
    assert f'Version: {timm_mlit.__version__}' in meta  # one version string
    assert 'License-Expression: Apache-2.0' in meta and any(n.endswith('licenses/LICENSE') for n in names)
    assert 'timm_mlit/py.typed' in names
    assert {f'timm_mlit/configs/{n}.yaml' for n in recipes.list_recipes()} <= set(names)
    packages = {p.relative_to(ROOT).as_posix() for p in (ROOT / 'timm_mlit').rglob('__init__.py')}
    assert {'timm_mlit/testing/__init__.py', 'timm_mlit/scripts/__init__.py'} <= packages <= set(names)  # every one
    assert meta.count('Classifier:') >= 5 and 'Project-URL:' in meta and 'Requires-Python: >=3.9' in meta
    def dists(core: bool):
        return {re.split(r'[<>=!~;\[ ]', line.split(': ', 1)[1])[0].lower().replace('_', '-')
                for line in meta.splitlines() if line.startswith('Requires-Dist:') and ('extra ==' not in line) == core}
    requires, optional = dists(core=True), dists(core=False)
    wanted = {DISTRIBUTION.get(m, m).lower().replace('_', '-') for m in _imported_top_level_modules()}
    # an import that only an extra provides (onnx, onnxruntime: the `export` extra) is declared there
    assert wanted <= requires | optional, f'imported but not declared: {sorted(wanted - requires - optional)}'
    low, high = timm_mlit.TIMM_RANGE
    assert f"Requires-Dist: timm<{'.'.join(map(str, high))},>={'.'.join(map(str, low))}" in meta
    scripts = dict(re.findall(r'^(mlit-[\w-]+) = ([\w.:]+)$', entry_points, re.M))
    assert set(scripts) == set(COMMANDS)


HELP_ALL = '''
import contextlib, io, json, runpy, sys
done = {}
for how, (module, script) in json.loads(sys.argv[1]).items():
    out = io.StringIO()
    sys.argv = [how, '--help']
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            if module:
                runpy.run_module(module, run_name='__main__', alter_sys=True)
            else:
                runpy.run_path(script, run_name='__main__')
        code = 0
    except SystemExit as e:
        code = e.code
    except BaseException as e:
        code, out = repr(e), io.StringIO(out.getvalue() + repr(e))
    done[how] = [code, out.getvalue()]
print(json.dumps(done))
'''


def test_every_command_has_a_real_help(installed):
    """Each console script and each python -m form exits 0 on --help and prints a usage (one venv process for all,
    each command run as __main__, as its launcher runs it)."""
    runs = {f'python -m {module}': [module, None] for module in COMMANDS.values() if module}  # before any import
    for name in COMMANDS:
        runs[name] = [None, str(installed.bin / name)]
        assert Path(runs[name][1]).is_file(), sorted(os.listdir(installed.bin))
    result = installed.run(installed.python, '-c', HELP_ALL, json.dumps(runs))
    assert result.returncode == 0, result.stderr[-3000:]
    done = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(done) == set(runs)
    for how, (code, text) in done.items():
        assert code in (0, None) and 'usage' in text.lower(), f'{how} --help: exit {code}, output {text[:500]!r}'


def test_recipe_named_as_a_user_names_it_through_train_pys_library_path(installed):
    """mlit-config writes the recipe where train.py's --config reads it; train.py's own library calls with it (its
    parser defaults + the YAML, create_model, the AutoAugment transform, a task step with the MoE loss)."""
    written = installed.run('mlit-config', 'table6_scratch_cifar10', '--out', 'recipe.yaml')
    assert written.returncode == 0 and written.stdout.strip() == 'recipe.yaml', written.stderr
    shipped = (ROOT / 'timm_mlit' / 'configs' / 'table6_scratch_cifar10.yaml').read_bytes()
    assert (installed.cwd / 'recipe.yaml').read_bytes() == shipped  # the clone's file, as shipped
    result = installed.python_code(f'''
        import argparse, sys, yaml, torch, timm
        import timm_mlit, timm_mlit.recipes
        print(timm_mlit.__file__, timm_mlit.recipes.recipe_path('table6_scratch_cifar10'))
        sys.path.insert(0, {str(ROOT / 'tests')!r})
        from train_py_args import TRAIN_PY_DEFAULTS
        args = argparse.Namespace(**TRAIN_PY_DEFAULTS)
        vars(args).update(yaml.safe_load(open('recipe.yaml')))
        for module in args.device_modules:  # what train.py does with device_modules
            __import__(module)
        model = timm.create_model(args.model, num_classes=args.num_classes, drop_path_rate=args.drop_path,
                                  **args.model_kwargs)
        cfg = timm.data.resolve_data_config(vars(args), model=model)
        tf = timm.data.create_transform(cfg['input_size'], is_training=True, auto_augment=args.aa,
                                        scale=args.scale, interpolation=args.train_interpolation)
        assert any(type(t).__name__ == 'AutoAugment' for t in tf.transforms), tf
        task = timm.task.ClassificationTask(model, torch.nn.CrossEntropyLoss(), verbose=False)
        result = task(torch.randn(4, *cfg['input_size']), torch.tensor([0, 1, 2, 3]))
        assert result['moe_loss'] > 0
        print(args.model, cfg['input_size'], float(result['loss']))''')
    assert result.returncode == 0, result.stderr[-3000:]
    where, line = result.stdout.splitlines()[-2:]
    module, recipe = where.split()
    assert module.startswith(str(installed.venv)) and recipe.startswith(str(installed.venv))  # the wheel's, not ours
    assert Path(recipe).read_bytes() == shipped
    assert line.startswith('mlit_xxs (3, 36, 36)')


def test_pretrain_push_and_pull_from_the_installed_commands(installed, tmp_path):
    """A short MAE pre-training by mlit-pretrain, its encoder pushed by mlit-push to a Hub-protocol server on
    127.0.0.1 and pulled by a fresh process through timm.create_model('hf-hub:...')."""
    data = write_shapes(tmp_path / 'shapes', train_per_class=4, val_per_class=1)
    pre = installed.run('mlit-pretrain', '--model', 'mlit_xxs', '--dataset', '', '--data-dir', data, '--epochs', '1',
                        '--batch-size', '20', '--workers', '0', '--device', 'cpu', '--no-progress',
                        '--output', tmp_path / 'mae', '--experiment', 'run')
    assert pre.returncode == 0, pre.stderr[-3000:]
    run = tmp_path / 'mae' / 'run'
    for name in ('log.csv', 'loss_curve.png', 'expert_load.png', 'recon_epoch00000.png', 'encoder.safetensors'):
        assert (run / name).is_file(), name
    repo = 'local/mlit_xxs.mae_c100'
    with LocalHubServer(token=TOKEN) as hub:
        pushed = installed.run('mlit-push', '--model', 'mlit_xxs.mae_c100', '--checkpoint', run / 'encoder.safetensors',
                               '--repo-id', repo, '--endpoint', hub.endpoint, '--token', TOKEN)
        assert pushed.returncode == 0, pushed.stderr[-3000:]
        assert {'model.safetensors', 'config.json', 'README.md'} <= set(hub.files(repo))
        pulled = installed.python_code(f'''
            import torch, timm, timm_mlit
            from safetensors.torch import load_file
            enc = load_file({str(run / 'encoder.safetensors')!r})
            m = timm.create_model('hf-hub:{repo}', pretrained=True, num_classes=10)
            assert all(torch.equal(m.state_dict()[k], v) for k, v in enc.items())
            print('identical', m.head.out_features)''', env=dict(HF_ENDPOINT=hub.endpoint, HF_TOKEN=TOKEN,
                                                             HF_HOME=str(tmp_path / 'hf_home')))
    assert pulled.returncode == 0 and pulled.stdout.split() == ['identical', '10'], pulled.stderr[-3000:]


def test_an_installed_package_lists_no_staged_tag_and_says_how_to_get_it(installed):
    """The wheel has no hub_cards/: a tag staged in the repository is not listed as pretrained where the package is
    installed, and pretrained=True says how to get it (a clone, or publishing); no tag lists without weights."""
    result = installed.python_code('''
        import timm, timm_mlit
        from timm_mlit.models import PretrainedWeightsError, _pretrained_tags as tags
        from timm_mlit.testing.tag_states import tag_states
        print(tags.STAGE_ROOT.is_dir(), timm_mlit.__file__)
        assert set(timm.list_models(['mlit*', 'maevit*', 'mobile_vmoe*'], pretrained=True)) == set(tags.PUBLISHED)
        with tag_states(staged={'mlit_xxs.c10'}):  # as once the tag is staged in the repository
            assert 'mlit_xxs.c10' not in timm.list_models('mlit*', pretrained=True)
            try:
                timm.create_model('mlit_xxs.c10', pretrained=True)
            except PretrainedWeightsError as e:
                print(' '.join(str(e).split()))''')
    assert result.returncode == 0, result.stderr[-3000:]
    where, message = result.stdout.splitlines()[-2:]
    assert where.split()[0] == 'False' and where.split()[1].startswith(str(installed.venv))
    assert 'staged in the timm-mlit repository (hub_cards/mlit_xxs.c10/)' in message
    assert 'this installation has no copy of that folder' in message and 'mlit-push --staged' in message
