"""Super-class maps (built-in and files) and their derivation from a confusion graph (Mobile V-MoE, Sec. 2.2)."""
import json
from collections import Counter

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from timm_mlit.data.superclasses import CIFAR100_COARSE, CIFAR100_FINE, SuperclassMap, load_superclass_map
from timm_mlit.scripts.derive_superclasses import (
    cluster_confusion_graph, confusion_graph, confusion_matrix, main, within_group_share)


# --- maps -------------------------------------------------------------------------------------------------------

def test_builtin_cifar100_map():
    m = load_superclass_map('cifar100')
    assert m.num_classes == 100 and m.num_superclasses == 20
    assert Counter(m.superclass_of) == {g: 5 for g in range(20)}
    assert tuple(m.class_names) == CIFAR100_FINE and tuple(m.superclass_names) == CIFAR100_COARSE
    coarse = {name: m.superclass_names[g] for name, g in zip(m.class_names, m.superclass_of)}
    assert coarse['apple'] == coarse['orange'] == 'fruit_and_vegetables'
    assert coarse['bee'] == 'insects'
    assert coarse['whale'] == coarse['dolphin'] == 'aquatic_mammals'
    assert coarse['maple_tree'] == 'trees' and coarse['pickup_truck'] == 'vehicles_1'
    assert m.as_tensor().dtype == torch.long and m.as_tensor().shape == (100,)


def test_load_json_forms_and_text(tmp_path):
    full = tmp_path / 'full.json'
    SuperclassMap((0, 1, 1, 0), ('a', 'b'), ('w', 'x', 'y', 'z')).save(full)
    m = load_superclass_map(full)
    assert tuple(m.superclass_of) == (0, 1, 1, 0)
    assert tuple(m.superclass_names) == ('a', 'b') and tuple(m.class_names) == ('w', 'x', 'y', 'z')
    assert not (tmp_path / 'full.json.partial').exists()

    bare = tmp_path / 'bare.json'
    bare.write_text('[2, 0, 1, 1]')
    assert tuple(load_superclass_map(bare).superclass_of) == (2, 0, 1, 1)

    by_name = tmp_path / 'by_name.json'  # keys in ImageFolder's (sorted) order
    by_name.write_text(json.dumps({'cat': 1, 'apple': 0, 'bee': 1}))
    m = load_superclass_map(by_name)
    assert tuple(m.class_names) == ('apple', 'bee', 'cat') and tuple(m.superclass_of) == (0, 1, 1)

    text = tmp_path / 'map.txt'
    text.write_text('1\n0\n0\n2\n')
    assert tuple(load_superclass_map(text).superclass_of) == (1, 0, 0, 2)
    assert tuple(load_superclass_map([1, 0]).superclass_of) == (1, 0)


def test_bad_maps_say_what_is_wrong(tmp_path):
    gap = tmp_path / 'gap.json'
    gap.write_text('[0, 2, 2]')
    with pytest.raises(ValueError, match=r'super-classes \[1\] have no class'):
        load_superclass_map(gap)
    words = tmp_path / 'words.txt'
    words.write_text('0\nfruit\n')
    with pytest.raises(ValueError, match='one integer per line'):
        load_superclass_map(words)
    broken = tmp_path / 'broken.json'
    broken.write_text('{"superclass_of": [0, 1')
    with pytest.raises(ValueError, match='not valid JSON'):
        load_superclass_map(broken)
    with pytest.raises(ValueError, match='non-negative integer'):
        load_superclass_map([0, -1])
    with pytest.raises(ValueError, match='3 class names for 2 classes'):
        SuperclassMap((0, 1), class_names=('a', 'b', 'c'))
    with pytest.raises(FileNotFoundError, match='neither a built-in map'):
        load_superclass_map(tmp_path / 'missing.json')


# --- confusion matrix, graph and clustering -----------------------------------------------------------------------

def _planted(sizes, seed):
    """A confusion matrix with heavy confusion inside the planted groups, little across, and noise."""
    rng = np.random.RandomState(seed)
    groups = np.repeat(np.arange(len(sizes)), sizes)
    perm = rng.permutation(len(groups))  # interleave the groups over the class indices
    groups = groups[perm]
    n = len(groups)
    same = groups[:, None] == groups[None, :]
    cm = rng.poisson(np.where(same, 20.0, 1.0)) + np.diag(rng.randint(50, 200, n))
    return cm, groups


def _partition(labels):
    out = {}
    for c, g in enumerate(labels):
        out.setdefault(int(g), set()).add(c)
    return {frozenset(v) for v in out.values()}


@pytest.mark.parametrize('seed', [0, 1, 2, 3])
def test_clustering_recovers_planted_groups(seed):
    cm, groups = _planted((5, 4, 3), seed)
    labels = cluster_confusion_graph(confusion_graph(cm), 3, seed=seed)
    assert len(labels) == 12
    assert _partition(labels) == _partition(groups)
    first = [labels.index(g) for g in range(3)]  # numbered by first appearance
    assert first == sorted(first) and labels[0] == 0
    observed, expected = within_group_share(cm, labels)
    assert observed > 0.7 and expected == pytest.approx((5 * 4 + 4 * 3 + 3 * 2) / (12 * 11))


def test_confusion_graph_rates_and_symmetry():
    cm = np.array([[8, 2, 0], [1, 3, 0], [0, 0, 0]])
    a = confusion_graph(torch.tensor(cm))
    np.testing.assert_allclose(a, [[0, 0.225, 0], [0.225, 0, 0], [0, 0, 0]])


def test_clustering_always_gives_non_empty_groups():
    for n, k in ((6, 3), (5, 5), (7, 2)):
        labels = cluster_confusion_graph(np.zeros((n, n)), k)
        assert len(labels) == n and sorted(set(labels)) == list(range(k))
    labels = cluster_confusion_graph(np.ones((8, 8)), 4, seed=5)
    assert sorted(set(labels)) == list(range(4))
    assert labels == cluster_confusion_graph(np.ones((8, 8)), 4, seed=5)  # deterministic


def test_clustering_rejects_bad_group_counts():
    with pytest.raises(ValueError, match='between 2 and the number of classes'):
        cluster_confusion_graph(np.zeros((4, 4)), 5)
    with pytest.raises(ValueError, match='between 2 and the number of classes'):
        cluster_confusion_graph(np.zeros((4, 4)), 1)


class _Fixed(torch.nn.Module):
    """Predicts the class stored in the image's first pixel."""

    def __init__(self, num_classes):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x):
        return torch.nn.functional.one_hot(x[:, 0, 0, 0].long(), self.num_classes).float()


def test_confusion_matrix_counts():
    preds = torch.tensor([0, 1, 1, 2, 2, 2, 0])
    targets = torch.tensor([0, 1, 2, 2, 2, 1, 0])
    images = preds.float().view(-1, 1, 1, 1).expand(-1, 3, 2, 2)
    loader = [(images[:4], targets[:4]), (images[4:], targets[4:])]
    cm = confusion_matrix(_Fixed(3), loader, 3)
    assert cm.dtype == torch.long
    assert cm.tolist() == [[2, 0, 0], [0, 1, 1], [0, 1, 2]]
    with pytest.raises(ValueError, match='outside 0..2'):
        confusion_matrix(_Fixed(3), [(images[:2], torch.tensor([0, 3]))], 3)


# --- the CLI end to end -----------------------------------------------------------------------------------------

CLASSES = ('apple', 'bee', 'cat', 'dog', 'eel', 'fox')


@pytest.fixture
def checkpoint_and_data(tmp_path):
    rng = np.random.RandomState(0)
    for c, name in enumerate(CLASSES):
        folder = tmp_path / 'data' / 'validation' / name
        folder.mkdir(parents=True)
        for i in range(4):
            img = rng.randint(0, 256, (36, 36, 3)).astype(np.uint8)
            img[c * 6:(c + 1) * 6] = 255
            Image.fromarray(img).save(folder / f'{i}.png')
    torch.manual_seed(0)
    model = timm.create_model('mlit_xxs', num_classes=len(CLASSES))
    ckpt = tmp_path / 'model_best.pth.tar'
    torch.save({'state_dict': model.state_dict(), 'epoch': 3}, ckpt)
    return ckpt, tmp_path / 'data'


@pytest.mark.parametrize('fmt', ['pth.tar', 'safetensors'])
def test_cli_end_to_end(checkpoint_and_data, tmp_path, capsys, fmt):
    ckpt, data = checkpoint_and_data
    if fmt == 'safetensors':  # a bare state dict, as timm's save_for_hf writes it
        from safetensors.torch import save_file
        state = torch.load(ckpt, weights_only=True)['state_dict']
        ckpt = tmp_path / 'model.safetensors'
        save_file(state, str(ckpt))
    out = tmp_path / 'maps' / 'derived.json'
    main(['--model', 'mlit_xxs', '--checkpoint', str(ckpt), '--data-dir', str(data), '--num-superclasses', '3',
          '--batch-size', '10', '--workers', '0', '--output', str(out)])
    m = load_superclass_map(out)
    assert m.num_classes == 6 and m.num_superclasses == 3
    assert tuple(m.class_names) == CLASSES
    assert len(m.superclass_names) == 3
    cm = np.loadtxt(out.with_name('derived.confusion.csv'), delimiter=',', dtype=np.int64)
    assert cm.shape == (6, 6) and cm.sum() == 24 and (cm.sum(axis=1) == 4).all()
    assert not list(out.parent.glob('*.partial'))
    printed = capsys.readouterr().out
    assert 'random grouping of the same sizes' in printed and 'apple' in printed


def test_cli_errors(checkpoint_and_data, tmp_path):
    ckpt, data = checkpoint_and_data
    common = ['--model', 'mlit_xxs', '--data-dir', str(data), '--workers', '0', '--output', str(tmp_path / 'm.json')]
    with pytest.raises(FileNotFoundError, match='No checkpoint'):
        main(common + ['--checkpoint', str(tmp_path / 'nope.pth.tar')])
    with pytest.raises(ValueError, match='6-class classifier but --num-classes is 10'):
        main(common + ['--checkpoint', str(ckpt), '--num-classes', '10'])
    with pytest.raises(ValueError, match='exceeds the 6 classes'):
        main(common + ['--checkpoint', str(ckpt), '--num-superclasses', '7'])
    wrong = tmp_path / 'wrong.pth.tar'
    torch.save({'state_dict': timm.create_model('mlit_xxs', num_classes=5).state_dict()}, wrong)
    with pytest.raises(ValueError, match='split has 6 classes but the model is a 5-class'):
        main(common + ['--checkpoint', str(wrong), '--num-superclasses', '3'])


def test_class_name_maps_follow_the_datasets_own_class_order(tmp_path):
    """A {"class name": group} map is put in timm's ImageFolder order (natural, case-insensitive), not sorted()."""
    from timm.data import create_dataset
    groups = {'Zebra': 0, 'apple': 1, 'class10': 2, 'class2': 0, 'Bird': 1, 'cat': 2}
    for name in groups:
        folder = tmp_path / 'data' / 'train' / name
        folder.mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / '0.png')
    dataset = create_dataset('', root=str(tmp_path / 'data'), split='train')
    by_index = sorted(dataset.reader.class_to_idx, key=dataset.reader.class_to_idx.get)
    path = tmp_path / 'map.json'
    path.write_text(json.dumps(groups))
    m = load_superclass_map(path)
    assert tuple(m.class_names) == tuple(by_index)
    for index, name in enumerate(by_index):  # every class routed to its own super-class
        assert m.superclass_of[index] == groups[name], name
    # with the dataset's class names the map follows them, whatever their order
    order = ('cat', 'class2', 'Zebra', 'apple', 'Bird', 'class10')
    m = load_superclass_map(path, class_names=order)
    assert tuple(m.class_names) == order and tuple(m.superclass_of) == tuple(groups[c] for c in order)
    with pytest.raises(ValueError, match=r"the dataset's \['dog'\] are not in the map"):
        load_superclass_map(path, class_names=order[:-1] + ('dog',))
    path.write_text(json.dumps({'Cat': 0, 'cat': 1}))
    with pytest.raises(ValueError, match='differ only in case'):
        load_superclass_map(path)


def test_derive_refuses_a_folder_without_the_held_out_split(checkpoint_and_data, tmp_path, capsys):
    ckpt, data = checkpoint_and_data
    (data / 'validation').rename(data / 'train')  # only a training split: timm would read it for 'validation'
    common = ['--model', 'mlit_xxs', '--checkpoint', str(ckpt), '--data-dir', str(data), '--workers', '0',
              '--num-superclasses', '3', '--output', str(tmp_path / 'm.json')]
    with pytest.raises(FileNotFoundError, match='has no validation/ folder .* training images included'):
        main(common)
    assert not (tmp_path / 'm.json').exists()
    main(common + ['--split', 'train'])  # asked for explicitly: done, and said loudly
    assert 'WARNING: --split train: the confusion matrix is measured on the TRAINING images' in capsys.readouterr().err
    assert (tmp_path / 'm.json').is_file()


def test_derive_module_help():
    import subprocess
    import sys
    from pathlib import Path
    result = subprocess.run([sys.executable, '-m', 'timm_mlit.scripts.derive_superclasses', '--help'],
                            capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0 and 'usage: mlit-derive-superclasses' in result.stdout


def test_derive_unreadable_checkpoint_names_the_file(checkpoint_and_data, tmp_path):
    _, data = checkpoint_and_data
    empty = tmp_path / 'empty.pth.tar'
    empty.write_bytes(b'')
    with pytest.raises(ValueError, match=r'--checkpoint .*empty.pth.tar is not a readable checkpoint'):
        main(['--model', 'mlit_xxs', '--checkpoint', str(empty), '--data-dir', str(data), '--workers', '0',
              '--output', str(tmp_path / 'm.json')])
