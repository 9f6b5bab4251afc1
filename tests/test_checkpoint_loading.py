"""Loading a checkpoint file into a zoo model as a hostile or careless user would: files that lack weights, hold
the wrong ones, are empty, corrupt or carry code, and input batches of the wrong dtype. Every one must fail with
an error naming the file (or input), what was expected and the fix; nothing may load silently half-random."""
import pickle
import re

import pytest
import timm
import torch
from safetensors.torch import save_file

import timm_mlit  # noqa: F401  registers the models
from timm_mlit.models import PretrainedWeightsError
from helpers import Exploit


def _save(path, state):
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return str(path)


def _load(name, file, **kwargs):
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(file)), **kwargs)


@pytest.fixture(scope='module')
def trained():
    torch.manual_seed(0)
    return timm.create_model('mlit_xxs', num_classes=10).state_dict()


@pytest.mark.parametrize('num_classes', [10, 100])
def test_a_checkpoint_lacking_body_weights_is_refused_naming_them_and_the_file(tmp_path, trained, num_classes):
    """With num_classes unlike the file's head timm loads non-strictly: the attention weights would stay random."""
    path = _save(tmp_path / 'partial.safetensors', {k: v for k, v in trained.items() if '.attn.' not in k})
    with pytest.raises(PretrainedWeightsError) as e:
        _load('mlit_xxs', path, num_classes=num_classes)
    message = str(e.value)
    assert path in message and 'lacks 36 of' in message and 'blocks.0.attn.qkv.weight' in message
    assert 'Only the classifier (head.*) may be missing' in message


def test_extra_or_misshaped_weights_are_refused(tmp_path, trained):
    extra = dict(trained, **{'decoder.weight': torch.zeros(3)})
    with pytest.raises(PretrainedWeightsError, match=r'has 1 weights the model does not \(decoder\.weight\)'):
        _load('mlit_xxs', _save(tmp_path / 'extra.safetensors', extra), num_classes=10)
    bad = dict(trained, **{'norm.weight': torch.ones(7)})
    with pytest.raises(PretrainedWeightsError, match=r'norm\.weight \(7,\) \(model: \(108,\)\)'):
        _load('mlit_xxs', _save(tmp_path / 'bad.safetensors', bad), num_classes=10)


def test_weights_that_are_not_finite_floats_are_refused(tmp_path, trained):
    diverged = dict(trained, **{'blocks.3.norm1.weight': torch.full((108,), float('nan'))})
    with pytest.raises(PretrainedWeightsError, match=r'1 weights hold NaN or infinite .*blocks\.3\.norm1\.weight'):
        _load('mlit_xxs', _save(tmp_path / 'nan.safetensors', diverged), num_classes=10)
    integer = dict(trained, **{'norm.weight': torch.ones(108, dtype=torch.int64)})
    with pytest.raises(PretrainedWeightsError, match=r'not floating point: norm\.weight \(torch\.int64\)'):
        _load('mlit_xxs', _save(tmp_path / 'int.safetensors', integer), num_classes=10)


@pytest.mark.parametrize('num_classes', [7, 100])
def test_only_the_classifier_may_be_resized_everything_else_loads(tmp_path, trained, num_classes, caplog):
    model = _load('mlit_xxs', _save(tmp_path / 'full.safetensors', trained), num_classes=num_classes)
    state = model.state_dict()
    assert model.head.out_features == num_classes
    assert all(torch.equal(state[k], v) for k, v in trained.items() if not k.startswith('head.'))


def test_the_mae_encoder_hand_off_keeps_working(tmp_path, trained):
    encoder = {k: v for k, v in trained.items() if not k.startswith('head.')}
    model = _load('mlit_xxs', _save(tmp_path / 'encoder.safetensors', encoder), num_classes=100)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in encoder.items())


def test_a_zero_byte_or_corrupt_file_names_the_file(tmp_path):
    empty = tmp_path / 'last.pth'
    empty.write_bytes(b'')
    with pytest.raises(PretrainedWeightsError, match=re.escape(f'file {empty}, is empty (0 bytes)')):
        _load('mlit_xxs', empty)
    junk = tmp_path / 'junk.safetensors'
    junk.write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a": 1}')
    with pytest.raises(PretrainedWeightsError, match=re.escape(f'file {junk}, is corrupt or truncated')):
        _load('mlit_xxs', junk)


def test_a_folder_or_a_file_without_a_state_dict_is_named(tmp_path):
    with pytest.raises(PretrainedWeightsError, match=r'is a folder, not a checkpoint file: .*local-dir:'):
        _load('mlit_xxs', tmp_path)
    torch.save([1, 2, 3], tmp_path / 'list.pth')
    with pytest.raises(PretrainedWeightsError, match=r'list\.pth does not hold a state dict'):
        _load('mlit_xxs', tmp_path / 'list.pth')
    torch.save({'state_dict': {'pos_embed': 3}}, tmp_path / 'numbers.pth')
    with pytest.raises(PretrainedWeightsError, match=r'numbers\.pth .*1 entries are not named tensors \(pos_embed\)'):
        _load('mlit_xxs', tmp_path / 'numbers.pth')


def test_a_pickle_carrying_code_is_refused_and_the_code_never_runs(tmp_path, monkeypatch):
    mark = tmp_path / 'pwned'
    monkeypatch.setenv('EXPLOIT_MARK', str(mark))
    path = tmp_path / 'evil.pth'
    with open(path, 'wb') as f:
        pickle.dump({'state_dict': {}, 'x': Exploit()}, f)
    with pytest.raises(PretrainedWeightsError, match='unpickling them could run code'):
        _load('mlit_xxs', path)
    assert not mark.exists()


@pytest.fixture(scope='module')
def mlit_file(tmp_path_factory):
    return _save(tmp_path_factory.mktemp('mlit') / 'mlit_xxs.safetensors', timm.create_model('mlit_xxs').state_dict())


@pytest.mark.parametrize('name, family', [('maevit_c100', 'a dense Mae-ViT'),
                                          ('mobile_vmoe_6x64_patch3_36', 'a Mobile V-MoE')])
def test_every_family_explains_a_corrupt_missing_or_foreign_file(tmp_path, mlit_file, name, family):
    """The explained load errors live in the families' shared builder, not in one family."""
    junk = tmp_path / 'junk.safetensors'
    junk.write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a": 1}')
    with pytest.raises(PretrainedWeightsError, match=re.escape(
            f'The weights file of {name}, file {junk}, is corrupt or truncated (SafetensorError')) as e:
        _load(name, junk)
    assert 're-save the weights' in str(e.value)
    missing = tmp_path / 'missing.safetensors'
    with pytest.raises(PretrainedWeightsError, match=re.escape(
            f'file {missing} does not exist: pass the path of a checkpoint file.')):
        _load(name, missing)
    with pytest.raises(PretrainedWeightsError, match=re.escape(
            f'file {mlit_file} does not hold {name} weights: This checkpoint is not {family} encoder')) as e:
        _load(name, mlit_file)
    assert f'Load it into the model it was trained for, or pass {family} checkpoint.' in str(e.value)


@pytest.mark.parametrize('dtype, needle', [
    (torch.uint8, r'got a torch\.uint8 tensor\. Normalise the images first'),
    (torch.float64, r'got a torch\.float64 tensor\. Cast the batch with x\.to\(torch\.float32\)'),
    (torch.int64, r'got a torch\.int64 tensor'),
])
@pytest.mark.parametrize('name', ['mlit_xxs', 'maevit_c100', 'mobile_vmoe_6x64_patch3_36'])
def test_image_batches_of_another_dtype_get_an_error_naming_the_input(name, dtype, needle):
    model = timm.create_model(name).eval()
    with pytest.raises(TypeError, match=f'{name} expects a floating-point image batch of its weights\' dtype'
                                        f' torch.float32; {needle}'):
        model(torch.zeros(2, 3, 36, 36, dtype=dtype))


def test_autocast_and_matching_dtypes_still_run():
    model = timm.create_model('mlit_xxs').eval()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert model(torch.zeros(1, 3, 36, 36)).shape == (1, 100)
    assert model.double()(torch.zeros(1, 3, 36, 36, dtype=torch.float64)).dtype == torch.float64


FAMILIES = ['mlit_xxs', 'maevit_c100', 'mobile_vmoe_6x64_patch3_36']


@pytest.fixture(scope='module')
def rgb_checkpoints(tmp_path_factory):
    """Each family's RGB weights, as a safetensors file and as a Hub-style folder for timm's ``local-dir:``."""
    root, out = tmp_path_factory.mktemp('rgb'), {}
    for name in FAMILIES:
        torch.manual_seed(0)
        model = timm.create_model(name)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        timm.models.save_for_hf(model, str(root / name), safe_serialization=True)
        assert (root / name / 'model.safetensors').is_file()
        out[name] = dict(state=state, file=_save(root / f'{name}.safetensors', state), folder=str(root / name))
    return out


def _load_from(name, source, checkpoints, **kwargs):
    if source == 'local-dir':
        return timm.create_model(f'local-dir:{checkpoints[name]["folder"]}', pretrained=True, **kwargs)
    return _load(name, checkpoints[name]['file'], **kwargs)


@pytest.mark.parametrize('source', ['file', 'local-dir'])
@pytest.mark.parametrize('in_chans', [1, 4])
@pytest.mark.parametrize('name', FAMILIES)
def test_rgb_weights_load_into_another_channel_count_adapted_as_timm_does(rgb_checkpoints, name, in_chans, source):
    """timm's load_pretrained adapts the first conv (pretrained_cfg['first_conv']) after the family's filter: the
    grayscale (1) or RGB+X (4) model gets timm.models.adapt_input_conv of the file's patch projection, the rest
    unchanged."""
    state = rgb_checkpoints[name]['state']
    model = _load_from(name, source, rgb_checkpoints, in_chans=in_chans).eval()
    weight = model.patch_embed.proj.weight
    assert weight.shape == (state['patch_embed.proj.weight'].shape[0], in_chans, 3, 3)
    assert torch.equal(weight, timm.models.adapt_input_conv(in_chans, state['patch_embed.proj.weight']))
    if in_chans == 1:
        assert torch.allclose(weight, state['patch_embed.proj.weight'].sum(1, keepdim=True))
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if k != 'patch_embed.proj.weight')
    with torch.no_grad():
        out = model(torch.randn(2, in_chans, 36, 36))
    assert out.shape == (2, 100) and torch.isfinite(out).all()


@pytest.mark.parametrize('in_chans', [1, 4])
@pytest.mark.parametrize('name, other_size, foreign', [
    ('mlit_xxs', 'mlit_xs', 'maevit_c100'),
    ('maevit_c100', dict(depth=6), 'mlit_xxs'),
    ('mobile_vmoe_6x64_patch3_36', 'mobile_vmoe_9x96_patch3_36', 'mlit_xxs'),
])
def test_weights_of_another_architecture_are_still_refused_at_another_channel_count(
        tmp_path, rgb_checkpoints, name, other_size, foreign, in_chans):
    if isinstance(other_size, dict):
        other = timm.create_model(name, **other_size)
    else:
        other = timm.create_model(other_size)
    path = _save(tmp_path / 'other_size.safetensors', other.state_dict())
    with pytest.raises(PretrainedWeightsError, match=re.escape(f'file {path} does not hold {name}')) as e:
        _load(name, path, in_chans=in_chans)
    assert 'weights: This checkpoint holds ' in str(e.value) and 'Create the matching model' in str(e.value)
    with pytest.raises(PretrainedWeightsError, match=r'This checkpoint is not (an|a) .* encoder'):
        _load(name, rgb_checkpoints[foreign]['file'], in_chans=in_chans)


@pytest.mark.parametrize('name', FAMILIES)
def test_a_patch_projection_of_another_channel_count_than_rgb_is_refused_or_loaded_as_is(tmp_path, name):
    """Only the pretrained cfg's RGB projection is left for timm to adapt: a grayscale file loads into a grayscale
    model unchanged and is refused, naming the weight, by an RGB or 4-channel one."""
    torch.manual_seed(1)
    gray = timm.create_model(name, in_chans=1).state_dict()
    path = _save(tmp_path / 'gray.safetensors', gray)
    assert torch.equal(_load(name, path, in_chans=1).patch_embed.proj.weight, gray['patch_embed.proj.weight'])
    width = gray['patch_embed.proj.weight'].shape[0]
    for in_chans in (3, 4):
        with pytest.raises(PretrainedWeightsError, match=re.escape(
                f'1 weights have another shape: patch_embed.proj.weight ({width}, 1, 3, 3) '
                f'(model: ({width}, {in_chans}, 3, 3))')):
            _load(name, path, in_chans=in_chans)
