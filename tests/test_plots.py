"""The pre-training plots read at a glance: titled, integer epochs as logged, plain tick labels, and the expert load
as a layer x expert heatmap whose colour is centred on the balanced share 1/t (issue 22, item 5)."""
import numpy as np
import pytest
from PIL import Image

pytest.importorskip('matplotlib')

from timm_mlit.mae.outputs import RunLog  # noqa: E402
from timm_mlit.mae.visualize import (  # noqa: E402
    expert_load_figure, loss_curve_figure, plot_expert_load, plot_loss_curve)

# mLiT's layout: 9 encoder and 4 decoder MoE layers, experts added in stages (here 2 to 8 per layer)
NAMES = [f'encoder.blocks.{i}.mlp' for i in range(9)] + [f'decoder_blocks.{i}.mlp' for i in range(4)]
EXPERTS = [2, 2, 3, 4, 4, 5, 6, 8, 8, 3, 3, 4, 4]


def _loads(n_epochs: int, seed: int = 0):
    """Per epoch, each layer's expert shares (each list sums to 1); block 7 appears only from epoch 2 on."""
    rng = np.random.RandomState(seed)
    rows = []
    for e in range(n_epochs):
        row = {}
        for name, t in zip(NAMES, EXPERTS):
            if name == 'encoder.blocks.7.mlp' and e < 2:
                continue
            row[name] = rng.dirichlet(np.ones(t) * 20).tolist()
        rows.append(row)
    return rows


def _tick_labels(fig, axis):
    fig.draw_without_rendering()
    lo, hi = sorted(axis.get_view_interval())
    return [(t.get_loc(), t.label1.get_text()) for t in axis.get_major_ticks() if lo <= t.get_loc() <= hi]


def _assert_integer_epochs(fig, axis):
    ticks = _tick_labels(fig, axis)
    assert ticks, 'no epoch ticks'
    for loc, text in ticks:
        assert float(loc).is_integer() and text == str(int(loc)), (loc, text)


def _assert_plain(fig, axis):
    for loc, text in _tick_labels(fig, axis):
        if text:
            assert '10^' not in text and '\\times' not in text and '$' not in text, text
            assert float(text) == pytest.approx(loc, rel=1e-6), (loc, text)


@pytest.mark.parametrize('n_epochs', [1, 3, 7, 400])
def test_loss_curve_linear_epochs_as_logged_with_plain_ticks(n_epochs):
    epochs = list(range(n_epochs))
    loss = 0.05 + 0.6 / (1 + np.arange(n_epochs) / 3)
    fig = loss_curve_figure(epochs, {'loss': loss, 'mse_masked': 0.9 * loss, 'mse_unmasked': 1.1 * loss},
                            title='MAE pre-training, mlit_xxs')
    ax = fig.axes[0]
    assert ax.get_title() == 'MAE pre-training, mlit_xxs'
    assert ax.get_xscale() == 'linear'
    assert list(ax.lines[0].get_xdata()) == epochs  # epochs as logged, from 0, not renumbered
    assert 'epoch' in ax.get_xlabel()
    assert len(ax.get_legend().get_texts()) == 3
    _assert_integer_epochs(fig, ax.xaxis)
    _assert_plain(fig, ax.yaxis)
    if 1.1 * loss.max() / (0.9 * loss.min()) >= 5:  # a log loss axis, still with plain numbers
        assert n_epochs == 400 and ax.get_yscale() == 'log'
        assert len([t for _, t in _tick_labels(fig, ax.yaxis) if t]) >= 3


def test_loss_curve_flat_losses_get_a_linear_axis():
    fig = loss_curve_figure([10, 11, 12], {'loss': [0.0512, 0.0507, 0.0503]})
    ax = fig.axes[0]
    assert ax.get_yscale() == 'linear' and ax.get_title()
    _assert_plain(fig, ax.yaxis)
    _assert_integer_epochs(fig, ax.xaxis)
    assert [t for _, t in _tick_labels(fig, ax.xaxis)] == ['10', '11', '12']


def test_expert_load_heatmap_centred_on_balance_with_absent_cells_masked():
    loads = _loads(5)
    fig = expert_load_figure(range(5), loads, title='Expert load, MAE pre-training, mlit_s')
    assert fig.get_suptitle() == 'Expert load, MAE pre-training, mlit_s'
    heat, over_time, bar = fig.axes
    assert heat.get_title() and over_time.get_title()
    data = heat.images[0].get_array()
    assert data.shape == (len(NAMES), max(EXPERTS))
    for i, (name, t) in enumerate(zip(NAMES, EXPERTS)):
        assert not data.mask[i, :t].any() and data.mask[i, t:].all(), name  # absent experts masked
        np.testing.assert_allclose(data[i, :t], np.asarray(loads[-1][name]) * t, rtol=1e-6)  # share x t
    # the cells are written with the share itself
    texts = [t.get_text() for t in heat.texts]
    assert len(texts) == sum(EXPERTS) and texts[0] == f'{loads[-1][NAMES[0]][0]:.0%}'
    # diverging colours centred on share x t = 1, the balanced share 1/t, and the colour bar says so
    norm = heat.images[0].norm
    assert (norm.vmin + norm.vmax) / 2 == 1.0 and norm.vmin == 0.0
    assert heat.images[0].get_cmap().name.startswith('RdBu')  # a diverging map: blue below 1/t, red above
    labels = ' '.join(t.get_text() for t in bar.get_yticklabels()) + bar.get_ylabel()
    assert 'balanced' in labels and '1/t' in labels
    assert [t.get_text() for t in heat.get_yticklabels()][:2] == ['encoder block 0 (t=2)', 'encoder block 1 (t=2)']
    assert heat.get_yticklabels()[9].get_text() == 'decoder block 0 (t=3)'
    # over the epochs: the least-used expert's share x t, masked where the layer was not there yet
    mesh = over_time.collections[0].get_array().reshape(len(NAMES), 5)
    row7 = NAMES.index('encoder.blocks.7.mlp')
    assert mesh.mask[row7, :2].all() and not mesh.mask[row7, 2:].any()
    np.testing.assert_allclose(mesh[0], [min(r[NAMES[0]]) * 2 for r in loads], rtol=1e-6)
    _assert_integer_epochs(fig, over_time.xaxis)
    _assert_integer_epochs(fig, heat.xaxis)  # expert indices
    assert 'hatched' in heat.get_xlabel() and 'hatched' in over_time.get_xlabel()


def test_expert_load_single_epoch_is_the_heatmap_alone():
    fig = expert_load_figure([0], _loads(1)[-1:])
    assert len(fig.axes) == 2 and fig.get_suptitle()  # heatmap + colour bar
    assert 'epoch 0' in fig.axes[0].get_title()


def test_plots_are_written_readable_and_atomically(tmp_path):
    loads = _loads(12)
    loss = list(0.05 + 0.6 / (1 + np.arange(12)))
    plot_loss_curve(range(12), {'loss': loss}, tmp_path / 'loss_curve.png', title='t')
    plot_expert_load(range(12), loads, tmp_path / 'expert_load.png', title='t')
    for name, min_width in (('loss_curve.png', 700), ('expert_load.png', 1200)):
        width, height = Image.open(tmp_path / name).size
        assert width >= min_width and height >= 400, (name, width, height)
    assert not list(tmp_path.glob('*.tmp-*'))


def test_bad_input_names_the_argument(tmp_path):
    with pytest.raises(ValueError, match='epochs'):
        loss_curve_figure([0, 1], {'loss': [1.0, 0.5, 0.2]})
    with pytest.raises(ValueError, match='epochs'):
        expert_load_figure([0, 1, 2], _loads(2))
    with pytest.raises(ValueError, match='loads'):
        expert_load_figure([0], [{}])


def test_run_log_plots_a_run_whose_layers_grew(tmp_path):
    """RunLog.plot (what mlit-pretrain calls) takes every logged row, also those before a layer existed."""
    log = RunLog(tmp_path, start_epoch=0)
    for e, load in enumerate(_loads(4)):
        log.history.append(dict(epoch=e, loss=1.0 / (e + 1), mse_masked=0.9 / (e + 1), mse_unmasked=1.1 / (e + 1),
                                expert_load=load))
    log.plot('mlit_s')
    for name in ('loss_curve.png', 'expert_load.png'):
        assert Image.open(tmp_path / name).size[0] > 600, name
