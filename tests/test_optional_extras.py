"""Optional extras name themselves, and written files get the umask's permissions.

Without the ``export`` extra (onnx, onnxruntime, onnxscript) every ONNX function of timm_mlit.export raises a
one-line MissingExtraError naming ``pip install 'timm-mlit[export]'``; without the ``data`` extra (scipy)
mlit-prepare-data svhn / flowers102 exit 2 with ``pip install 'timm-mlit[data]'``. A missing package is simulated by
``sys.modules[name] = None`` (import then fails as for a package that is not installed).

The .onnx files, the int8 copies and every mlit-config --out file are written with 0666 & ~umask (0644 under 022,
0600 under 077), as ``open()`` writes, whatever the writer underneath (torch.onnx, onnxruntime) does.
"""
import os
import re
import stat
import sys
from pathlib import Path

import pytest
import timm
import torch

import timm_mlit  # noqa: F401  registers the models
from timm_mlit import cli, export
from timm_mlit.errors import EXTRAS, MissingExtraError, UserInputError

ROOT = Path(__file__).resolve().parents[1]


def _extras_in_pyproject():
    text = (ROOT / 'pyproject.toml').read_text()
    block = text.split('[project.optional-dependencies]')[1].split('\n[')[0]
    return {name: re.findall(r'"([A-Za-z0-9_.-]+)', deps) for name, deps in
            re.findall(r'^(\w+) = \[([^\]]*)\]', block, re.M)}


def test_the_extras_named_are_pyprojects():
    extras = _extras_in_pyproject()
    for module, extra in EXTRAS.items():
        assert module in extras[extra], (module, extra)
    for extra in ('export', 'data'):
        assert set(extras[extra]) == {m for m, e in EXTRAS.items() if e == extra}


def _missing(monkeypatch, *names):
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)


def _one_line_naming(e, extra):
    message = str(e.value)
    assert '\n' not in message and f"pip install 'timm-mlit[{extra}]'" in message, message
    assert isinstance(e.value, ImportError) and isinstance(e.value, UserInputError)
    return message


@pytest.fixture(scope='module')
def model():
    return timm.create_model('mlit_xxs', num_classes=10).eval()


@pytest.mark.parametrize('missing', ['onnx', 'onnxscript'])
def test_export_without_the_extra_names_it(missing, model, tmp_path, monkeypatch):
    _missing(monkeypatch, missing)
    with pytest.raises(MissingExtraError) as e:
        export.export_onnx(model, tmp_path / 'm.onnx')
    assert _one_line_naming(e, 'export').startswith(f'ONNX export needs {missing}')
    assert list(tmp_path.iterdir()) == []  # refused before anything is written


@pytest.mark.parametrize('call, missing', [
    (lambda p, m: export.quantize_onnx(p, p.with_name('int8.onnx'), m), 'onnxruntime'),
    (lambda p, m: export.quantize_onnx(p, p.with_name('int8.onnx'), m), 'onnx'),
    (lambda p, m: export.onnx_session(p), 'onnxruntime'),
    (lambda p, m: export.onnx_op_counts(p), 'onnx'),
    (lambda p, m: export.compare_onnx(m, p, torch.zeros(1, 3, 36, 36)), 'onnxruntime'),
])
def test_every_onnx_function_names_the_extra(call, missing, model, tmp_path, monkeypatch):
    _missing(monkeypatch, missing)
    with pytest.raises(MissingExtraError) as e:
        call(tmp_path / 'm.onnx', model)
    _one_line_naming(e, 'export')


@pytest.mark.parametrize('dataset', ['svhn', 'flowers102'])
def test_prepare_data_without_scipy_names_the_data_extra(dataset, tmp_path, monkeypatch, capsys):
    _missing(monkeypatch, 'scipy', 'scipy.io')
    with pytest.raises(SystemExit) as e:
        cli.prepare_data([dataset, '--root', str(tmp_path), '--out', str(tmp_path / 'out')])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count('\n') == 1, err
    assert err.startswith(f'mlit-prepare-data {dataset}: error: ') and "pip install 'timm-mlit[data]'" in err
    assert not (tmp_path / 'out').exists()


# --- the umask's permissions ----------------------------------------------------------------------------------------

@pytest.fixture(params=[0o022, 0o077], ids=['umask022', 'umask077'])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize('dynamo', [False, True], ids=['torchscript', 'dynamo'])
def test_onnx_files_get_the_umasks_permissions(dynamo, umask, model, tmp_path):
    pytest.importorskip('onnx')
    pytest.importorskip('onnxruntime')
    if dynamo:
        pytest.importorskip('onnxscript')
    path = export.export_onnx(model, tmp_path / 'm.onnx', dynamo=dynamo)
    assert _mode(path) == 0o666 & ~umask
    int8 = export.quantize_onnx(path, tmp_path / 'm.int8.onnx', model)
    assert _mode(int8) == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ['m.int8.onnx', 'm.onnx']  # no temporary left


def test_mlit_config_out_gets_the_umasks_permissions(umask, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert cli.config(['table6_scratch_cifar10', '--out', str(tmp_path / 'copy.yaml')]) == 0
    assert _mode(tmp_path / 'copy.yaml') == 0o666 & ~umask
    data = tmp_path / 'data'
    from PIL import Image
    for split in ('train', 'validation'):
        for c in ('a', 'b'):
            (data / split / c).mkdir(parents=True)
            Image.new('RGB', (8, 8)).save(data / split / c / '0.png')
    assert cli.config(['own_data', '--data-dir', str(data), '--out', str(tmp_path / 'fitted.yaml')]) == 0
    assert _mode(tmp_path / 'fitted.yaml') == 0o666 & ~umask
