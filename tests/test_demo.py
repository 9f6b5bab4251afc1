"""The main job (python -m timm_mlit), shrunk: every stage of the life cycle runs and the model pulled from the local
Hub scores exactly what the fine-tuned one did."""
import numpy as np

from timm_mlit.data.shapes import SHAPE_CLASSES, draw_shape, write_shapes
from timm_mlit.demo import main


def test_shapes_dataset(tmp_path):
    out = write_shapes(tmp_path / 'shapes', train_per_class=3, val_per_class=2)
    assert sorted(p.name for p in (out / 'train').iterdir()) == sorted(SHAPE_CLASSES)
    assert len(list((out / 'validation').rglob('*.png'))) == 2 * len(SHAPE_CLASSES)
    img = np.asarray(draw_shape('circle', np.random.RandomState(0)))
    assert img.shape == (32, 32, 3) and img.std() > 10


def test_life_cycle(tmp_path, capsys):
    top1 = main(['--output', str(tmp_path / 'demo'), '--mae-epochs', '1', '--epochs', '1', '--batch-size', '16',
                 '--train-per-class', '4', '--val-per-class', '2', '--workers', '0'])
    out = capsys.readouterr().out
    for stage in ('== 1.', '== 2.', '== 3.', '== 4.', '== 5.', '== 6.'):
        assert stage in out
    assert 'validation top-1 of the model pulled from the Hub' in out
    assert 0.0 <= top1 <= 100.0
    assert (tmp_path / 'demo' / 'mae' / 'mlit_xxs' / 'encoder.safetensors').is_file()
    assert (tmp_path / 'demo' / 'finetune' / 'model_best.pth.tar').is_file()
