"""Tag lists that tell the truth: ``timm.list_models(..., pretrained=True)`` lists exactly the zoo's tags whose
weights load where the package runs (timm's convention: a cfg with ``hf_hub_id``, ``url`` or ``file``), every one of
them loads with ``pretrained=True``, and every other tag is a recipe whose ``pretrained=True`` says so, offering
``pretrained=False`` and the recipe's commands in order.

The package's own states are checked as they are (nothing is published or staged yet), and with a staged folder made
here in a temporary stage folder (:func:`timm_mlit.testing.tag_states.tag_states` registers the tags with timm again
as an import with those states would)."""
import dataclasses
import re

import pytest
import timm
import torch
from safetensors.torch import load_file
from timm.models import save_for_hf

import timm_mlit  # noqa: F401  registers the models
from timm_mlit import recipes
from timm_mlit.models import PretrainedWeightsError, verify_hub_folder
from timm_mlit.models import _pretrained_tags as tags
from timm_mlit.models._load_errors import recipe_commands
from timm_mlit.models.mlit import DEFAULT_TAG, MODELS, TAGS
from timm_mlit.testing.tag_states import tag_states

FAMILIES = ['mlit*', 'maevit*', 'mobile_vmoe*']


def _listed():
    return timm.list_models(FAMILIES, pretrained=True)


def _loads_every_listed_tag():
    """Each model timm lists as pretrained for the zoo's families loads with pretrained=True; returns them."""
    listed = _listed()
    for name in listed:
        model = timm.create_model(name, pretrained=True)
        cfg = model.pretrained_cfg
        assert cfg.get('hf_hub_id') or cfg.get('file') or cfg.get('url'), name
    return listed


@pytest.fixture
def stage_root(tmp_path):
    """A stage folder holding a valid staged mlit_xxs.c10 (what staging writes: save_for_hf's files and a card)."""
    folder = tmp_path / 'hub_cards' / 'mlit_xxs.c10'
    torch.manual_seed(0)
    save_for_hf(timm.create_model('mlit_xxs.c10', num_classes=10), str(folder), safe_serialization=True)
    (folder / 'README.md').write_text("# mlit_xxs.c10\n\ntimm.create_model('hf-hub:timm-mlit/mlit_xxs.c10')\n")
    return folder.parent


def test_the_package_lists_exactly_what_loads_here():
    expected = {name for name in tags.PUBLISHED} | {name for name in tags.STAGED if tags.staged_folder(name)}
    assert set(_loads_every_listed_tag()) == expected
    for model in MODELS:  # the bare name is listed only where its default tag has weights
        assert timm.is_model_pretrained(model) == (f'{model}.{DEFAULT_TAG}' in expected)


def test_a_staged_folder_in_a_clone_is_listed_and_loads(stage_root):
    verify_hub_folder(stage_root / 'mlit_xxs.c10', 'mlit_xxs.c10')  # the checks publishing runs on a staged folder
    with tag_states(published=(), staged={'mlit_xxs.c10'}, stage_root=stage_root):
        assert _loads_every_listed_tag() == ['mlit_xxs.c10']
        model = timm.create_model('mlit_xxs.c10', pretrained=True)
        staged = load_file(str(stage_root / 'mlit_xxs.c10' / 'model.safetensors'))
        assert set(model.state_dict()) == set(staged)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in staged.items())
        # the default tag stays the bare name's (timm would promote the first tag with weights)
        assert timm.models.get_pretrained_cfg('mlit_xxs').tag == DEFAULT_TAG
        assert timm.create_model('mlit_xxs').num_classes == 100 and not timm.is_model_pretrained('mlit_xxs')
        with pytest.raises(PretrainedWeightsError, match='No weights exist for mlit_s.c10'):
            timm.create_model('mlit_s.c10', pretrained=True)  # only the staged size
    assert set(_listed()) == set(tags.PUBLISHED) | {n for n in tags.STAGED if tags.staged_folder(n)}  # restored


def test_a_published_tag_names_its_hub_repo():
    with tag_states(published={'mlit_xs.c100'}, staged=()):
        assert _listed() == ['mlit_xs.c100']
        cfg = timm.models.get_pretrained_cfg('mlit_xs.c100')
        assert cfg.hf_hub_id == 'timm-mlit/mlit_xs.c100' and not cfg.file


def test_a_staged_tag_without_its_folder_is_not_listed(tmp_path):
    with tag_states(published=(), staged={'mlit_xxs.c10'}, stage_root=tmp_path / 'no_clone'):
        assert _listed() == []
        with pytest.raises(PretrainedWeightsError, match='this installation has no copy of that folder'):
            timm.create_model('mlit_xxs.c10', pretrained=True)


def test_a_staged_folder_that_is_a_link_is_not_listed(stage_root, tmp_path):
    folder = stage_root / 'mlit_xxs.c10'
    outside = tmp_path / 'elsewhere.safetensors'
    (folder / 'model.safetensors').rename(outside)
    (folder / 'model.safetensors').symlink_to(outside)
    with tag_states(published=(), staged={'mlit_xxs.c10'}, stage_root=stage_root):
        assert _listed() == []


def _recipe_tags():
    return [f'{model}.{tag}' for model in MODELS for tag in TAGS
            if tags.tag_state(f'{model}.{tag}') == 'recipe']


@pytest.mark.parametrize('name', _recipe_tags())
def test_a_recipe_tag_is_not_listed_and_says_how_to_make_it(name):
    assert name not in _listed()
    with pytest.raises(PretrainedWeightsError) as e:
        timm.create_model(name, pretrained=True)
    message = str(e.value)
    assert f'No weights exist for {name}' in message
    assert f"timm.create_model('{name}', pretrained=False)" in message
    model, tag = name.split('.')
    steps = recipe_commands(model, TAGS[tag])
    found = [message.index(command) for _, command in steps]
    assert found == sorted(found)  # every command, in order
    commands = [command for _, command in steps]
    first = commands[0].split()[0]
    if TAGS[tag].encoder or TAGS[tag].kind == 'mae':
        assert first == 'mlit-pretrain'  # MAE pre-training first
    else:
        assert 'train.py' in commands[0] and not any('mlit-pretrain' in c for c in commands)
    if TAGS[tag].encoder:
        assert 'train.py' in commands[1] and '--pretrained-path output/mae/<mae-run>/encoder.safetensors' in commands[1]
    assert commands[-3].startswith('mlit-run-info ')
    assert commands[-2] == f'mlit-push --model {name} --run-dir {commands[-3].split()[1]} --stage-dir hub_cards/'
    assert commands[-1] == f'mlit-push --staged hub_cards/{name}'
    if TAGS[tag].config:
        assert f'"$(mlit-config {TAGS[tag].config})"' in message


@pytest.mark.parametrize('name', ['maevit_c100', 'mobile_vmoe_6x64_patch3_36', 'mobile_vmoe_12x384_patch32_224'])
def test_models_without_tags_refuse_pretrained_instead_of_a_random_model(name):
    """timm warns and builds a random model for a cfg without weights; the zoo's families say so and how."""
    assert name not in _listed()
    with pytest.raises(PretrainedWeightsError) as e:
        timm.create_model(name, pretrained=True)
    message = str(e.value)
    assert f'No weights exist for {name}' in message and f"timm.create_model('{name}', pretrained=False)" in message
    if name.startswith('maevit'):  # its recipes, MAE pre-training first
        assert message.index('maevit_c100_pretrain_mae') < message.index('maevit_c100_finetune_cifar100')


def test_tags_hold_data_and_name_their_encoder():
    for model in MODELS:
        for tag in tags.tags_of(model).values():
            for field in dataclasses.fields(tag):
                value = getattr(tag, field.name)
                assert isinstance(value, (str, int, type(None))), (tag.tag, field.name)
                assert not (isinstance(value, str) and re.search(r'\s--|\{|\$\(', value)), (tag.tag, field.name)
            if tag.encoder:
                encoder = tags.find_tag(f'{model}.{tag.encoder}')
                assert encoder is not None and encoder.kind == 'mae' and encoder.num_classes == 0
            assert tag.kind in ('classification', 'mae') and (tag.kind == 'mae') == (tag.num_classes == 0)
            assert (tag.kind == 'mae') == (not tag.config)


def test_mlit_config_lists_the_tags_and_prints_their_commands(capsys):
    assert recipes.main(['--tags']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [f'{m}.{t}' for m in MODELS for t in TAGS]
    assert all('recipe only, no weights' in line for line in lines if line.split()[0] in _recipe_tags())
    assert recipes.main(['--commands', 'mlit_xxs.mae_c100_ft_svhn']) == 0
    out = capsys.readouterr().out
    commands = [c for _, c in recipe_commands('mlit_xxs', TAGS['mae_c100_ft_svhn'])]
    assert [line for line in out.splitlines() if not line.startswith('#')] == commands
    with pytest.raises(SystemExit) as e:
        recipes.main(['--commands', 'mlit_xxs.nope'])
    assert e.value.code == 2 and 'mlit-config --tags lists them' in capsys.readouterr().err


def _fake_train_py_run(folder, model, tag):
    """A finished train.py run of ``model.tag`` as its recipe writes it: args.yaml (the recipe's keys) and a
    summary.csv row."""
    import yaml
    from timm_mlit.hub.tag_info import config_path
    folder.mkdir(parents=True)
    args = yaml.safe_load(config_path(tag).read_text(encoding='utf-8'))
    args.update(model=model, epochs=tag.epochs)
    (folder / 'args.yaml').write_text(yaml.safe_dump(args))
    (folder / 'summary.csv').write_text('epoch,train_loss,eval_loss,eval_top1,eval_top5,lr\n0,1.0,1.0,50.0,90.0,0.1\n')


@pytest.mark.parametrize('tag', list(TAGS))
def test_the_recipe_commands_parse_and_name_what_staging_needs(tag, tmp_path):
    """Each printed command runs as printed: its flags exist in its parser, and the run record step leaves a record
    from which staging knows the run's dataset (an ImageFolder run's args.yaml names none)."""
    import shlex
    from timm_mlit.configs import TRAIN_PY_KEYS
    from timm_mlit.hub import push, run_info
    from timm_mlit.hub.records import read_run
    from timm_mlit.mae.arguments import build_parser as pretrain_parser
    from timm_mlit.models._load_errors import PRETRAIN_CMD, PUSH_CMD, TRAIN_PY
    model, pretrained_tag = 'mlit_xxs', TAGS[tag]
    run_dir = None
    for _, command in recipe_commands(model, pretrained_tag):
        if command.startswith(TRAIN_PY):
            tokens = shlex.split(command.replace('"$(mlit-config ', '"').replace(')"', '"'))
            flags = [t[2:].replace('-', '_') for t in tokens if t.startswith('--')]
            assert flags and set(flags) <= TRAIN_PY_KEYS, command
            continue
        tokens = shlex.split(command)
        if tokens[0] == PRETRAIN_CMD:
            pretrain_parser().parse_args(tokens[1:])
        elif tokens[0] == 'mlit-run-info':
            folder = tokens[1]
            if pretrained_tag.kind == 'mae':
                continue  # the pre-training command reads torch/<dataset>, which its checkpoint records
            run_dir = tmp_path / 'run'
            _fake_train_py_run(run_dir, model, pretrained_tag)
            argv = [str(run_dir) if t == folder else '5400' if t == 'SECONDS' else t for t in tokens[1:]]
            assert run_info.main(argv) == 0
            assert read_run(run_dir).dataset == pretrained_tag.dataset, command
        else:
            assert tokens[0] == PUSH_CMD, command
            push._parser().parse_args(tokens[1:])


@pytest.mark.parametrize('tag', ['mae_c100', 'c10', 'mae_c100_ft_svhn'])
def test_the_clone_note_says_how_to_make_each_commands_data(tag):
    """The MAE encoder's tag has no recipe file: its note may not send the reader to one for DATA."""
    from timm_mlit.models._load_errors import clone_note
    steps = recipe_commands('mlit_xxs', TAGS[tag])
    note = clone_note(steps)
    assert ('--dataset-download' in note) == any('mlit-pretrain' in c for _, c in steps)
    assert ('recipe file' in note) == bool(TAGS[tag].config)
