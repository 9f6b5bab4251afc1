"""The main job (python -m timm_mlit), shrunk: every stage of the life cycle runs and the model pulled from the local
Hub scores exactly what the fine-tuned one did."""
import csv

import numpy as np
from PIL import Image

from timm_mlit.data.shapes import SHAPE_CLASSES, draw_shape, write_shapes
from timm_mlit.demo import evaluate, evaluate_metrics, main, report_mae_outputs
from timm_mlit.mae.visualize import RECON_CELL_PX, save_reconstructions


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
    # summary.csv: train.py's columns, every one filled
    with open(tmp_path / 'demo' / 'finetune' / 'summary.csv', newline='') as f:
        rows = list(csv.reader(f))
    assert rows[0] == ['epoch', 'train_loss', 'eval_loss', 'eval_top1', 'eval_top5', 'lr'] and len(rows) == 2
    assert all(cell != '' for cell in rows[1]), rows
    epoch, train_loss, eval_loss, top1, top5, lr = map(float, rows[1])
    assert epoch == 0 and train_loss > 0 and eval_loss > 0 and 0 <= top1 <= top5 <= 100 and lr >= 0
    # stage 3 writes what it announces, and names each file: logs, both plots, the grid, the encoder
    run = tmp_path / 'demo' / 'mae' / 'mlit_xxs'
    for name in ('log.csv', 'loss_curve.png', 'expert_load.png', 'recon_epoch00000.png', 'encoder.safetensors'):
        assert (run / name).is_file(), name
        assert str(run / name) in out, f'{name} is not announced'
    assert 'NOT written' not in out
    width, height = Image.open(run / 'recon_epoch00000.png').size
    assert width >= 8 * RECON_CELL_PX and height >= 4 * RECON_CELL_PX  # 8 images, 4 rows, big enough to see


def test_reconstruction_grid_is_upscaled_and_labelled(tmp_path):
    import torch
    from timm_mlit.mae.model import create_mae
    torch.manual_seed(0)
    model = create_mae('mlit_xxs')
    imgs = torch.rand(3, 3, 36, 36) * 2 - 1
    path = save_reconstructions(model, imgs, [0.5] * 3, [0.5] * 3, tmp_path / 'r.png')
    grid = np.asarray(Image.open(path).convert('RGB')).astype(int)
    scale = -(-RECON_CELL_PX // 36)
    assert grid.shape[0] == 4 * 36 * scale + 5 * 4  # four rows of 4x-upscaled images with 4-pixel padding
    label_width = grid.shape[1] - (3 * 36 * scale + 4 * 4)
    assert label_width > 100 and (grid[:, :label_width] < 128).any()  # a label column with dark text
    # nearest neighbour: every image pixel is a scale x scale block of one colour
    first = grid[4:4 + 36 * scale, label_width + 4:label_width + 4 + 36 * scale]
    blocks = first.reshape(36, scale, 36, scale, 3)
    assert (blocks == blocks[:, :1, :, :1]).all()
    assert not list(tmp_path.glob('*.tmp-*'))


def test_missing_matplotlib_is_stated_with_the_fix(tmp_path, monkeypatch, capsys, caplog):
    import sys
    import timm_mlit.mae.visualize as visualize
    monkeypatch.setitem(sys.modules, 'matplotlib', None)  # import matplotlib raises ImportError
    monkeypatch.setattr(visualize, '_warned', False)
    with caplog.at_level('WARNING', logger='timm_mlit.mae.visualize'):
        assert not visualize.have_matplotlib()
    assert 'loss_curve.png' in caplog.text and 'pip install matplotlib' in caplog.text
    (tmp_path / 'log.csv').write_text('epoch\n')
    found = report_mae_outputs(tmp_path)
    out = capsys.readouterr().out
    assert found['loss_curve.png'] is None and found['log.csv'] == tmp_path / 'log.csv'
    fix = 'NOT written, matplotlib cannot be imported. Fix: pip install matplotlib'
    assert f'{tmp_path / "loss_curve.png"}: {fix}' in out
    assert f'{tmp_path / "expert_load.png"}: NOT written, matplotlib' in out
    assert f'{tmp_path / "encoder.safetensors"}: NOT written' in out


def test_evaluate_metrics_are_train_pys(tmp_path):
    """eval_loss, eval_top1 and eval_top5 as train.py's validate() computes them: the mean cross-entropy per image
    and timm's accuracy() over the split."""
    import timm
    import torch
    from timm.data import create_dataset, create_loader, resolve_data_config
    from timm.utils import accuracy
    data = write_shapes(tmp_path / 'shapes', train_per_class=1, val_per_class=3)
    torch.manual_seed(0)
    model = timm.create_model('mlit_xxs', num_classes=len(SHAPE_CLASSES)).eval()
    with torch.no_grad():
        model.head.weight.normal_(0, 1.0)  # spread the logits: top-1 and top-5 differ
    metrics = evaluate_metrics(model, data, batch_size=7, workers=0)
    cfg = resolve_data_config({}, model=model)
    loader = create_loader(create_dataset('', root=str(data), split='validation'), input_size=cfg['input_size'],
                           batch_size=1000, is_training=False, interpolation=cfg['interpolation'], mean=cfg['mean'],
                           std=cfg['std'], crop_pct=cfg['crop_pct'], num_workers=0, use_prefetcher=False)
    x, y = next(iter(loader))
    with torch.no_grad():
        logits = model(x)
    top1, top5 = accuracy(logits, y, topk=(1, 5))
    assert metrics['top1'] == evaluate(model, data, batch_size=7, workers=0)
    assert abs(metrics['top1'] - float(top1)) < 1e-4 and abs(metrics['top5'] - float(top5)) < 1e-4  # float32 %
    assert metrics['top5'] > metrics['top1']
    assert abs(metrics['loss'] - torch.nn.functional.cross_entropy(logits, y).item()) < 1e-5


def test_fine_tuning_stops_at_a_diverged_loss(tmp_path):
    """An LR that blows the loss up stops the fine-tuning with a message that names --lr, before any checkpoint of
    the diverged epoch is written; mlit-demo reports it as one line (a UserInputError), not a traceback."""
    import pytest
    import timm
    from safetensors.torch import save_file
    from timm_mlit.demo import fine_tune
    from timm_mlit.errors import DivergedError
    data = write_shapes(tmp_path / 'shapes', train_per_class=4, val_per_class=1)
    encoder = timm.create_model('mlit_xxs', num_classes=0)
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(tmp_path / 'encoder.safetensors'))
    with pytest.raises(DivergedError, match=r'diverged in epoch 0.*smaller --lr'):
        fine_tune(tmp_path / 'encoder.safetensors', data, tmp_path / 'ft', 'mlit_xxs', epochs=1, batch_size=10,
                  workers=0, lr=1000.)  # (the CLI refuses more: MAX_LR)
    assert not (tmp_path / 'ft' / 'model_best.pth.tar').exists()
    assert fine_tune(tmp_path / 'encoder.safetensors', data, tmp_path / 'ok', 'mlit_xxs', epochs=1, batch_size=10,
                     workers=0, lr=1e-3).joinpath('model_best.pth.tar').is_file()  # a sane LR trains through
