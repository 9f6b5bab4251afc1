"""The MoE loss inside timm's training task, driven the way train.py drives it (train_one_epoch's loss path):
``result = task(input, target)`` under autocast, ``loss / accum_steps``, then timm's NativeScaler or ``backward()``.
Every mode's gradients are compared with an explicit ``CE + MoE loss``."""
import pytest
import torch
import torch.nn as nn
import timm
from timm.task import ClassificationTask
from timm.utils import NativeScaler

import timm_mlit
from timm_mlit import training


def _model():
    torch.manual_seed(0)
    return timm.create_model('mlit_xxs', num_classes=10)


def _batches(n, batch=4):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(batch, 3, 36, 36, generator=g), torch.randint(0, 10, (batch,), generator=g)) for _ in range(n)]


def _autocast(mode):
    if mode == 'bf16':
        return torch.autocast('cpu', dtype=torch.bfloat16)
    if mode == 'fp16':
        return torch.autocast('cpu', dtype=torch.float16)
    return torch.autocast('cpu', enabled=False)


def _grads(model):
    return {n: p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for n, p in model.named_parameters()}


def _train_py_path(model, batches, mode, accum_steps):
    """train.py's train_one_epoch, reduced to its loss path; the optimizer has lr 0 so the gradients stay readable."""
    task = ClassificationTask(model, nn.CrossEntropyLoss(), verbose=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    scaler = NativeScaler(device='cpu') if mode == 'fp16' else None
    model.train()
    optimizer.zero_grad()
    logged = []
    for i, (x, y) in enumerate(batches):
        need_update = (i + 1) % accum_steps == 0
        torch.manual_seed(100 + i)  # the same gate noise and dropout masks as the reference below
        with _autocast(mode):
            result = task(x, y)
            loss = result['loss']
        logged.append((loss.item(), result['moe_loss'].item()))
        if accum_steps > 1:
            loss = loss / accum_steps
        if scaler is not None:
            scaler(loss, optimizer, need_update=need_update)  # scale, backward, unscale_, step
        else:
            loss.backward()
            if need_update:
                optimizer.step()
    return _grads(model), logged


def _explicit(model, batches, mode, accum_steps, terms=('ce', 'moe')):
    model.train()
    model.zero_grad()
    scaler = torch.amp.GradScaler('cpu') if mode == 'fp16' else None
    for i, (x, y) in enumerate(batches):
        torch.manual_seed(100 + i)
        with _autocast(mode):
            out = model(x)
            loss = 0.
            if 'ce' in terms:
                loss = loss + nn.functional.cross_entropy(out, y)
            if 'moe' in terms:
                loss = loss + model.moe_loss()
        loss = loss / accum_steps
        (scaler.scale(loss) if scaler is not None else loss).backward()
    if scaler is not None:
        for p in model.parameters():
            if p.grad is not None:
                p.grad.div_(scaler.get_scale())
    return _grads(model)


def _max_rel_diff(a, b):
    return max(((a[n] - b[n]).norm() / (b[n].norm() + 1e-12)).item() for n in a)


@pytest.mark.parametrize('mode,accum_steps,tol', [
    ('fp32', 1, 1e-5),
    ('fp32', 2, 1e-5),
    ('bf16', 1, 1e-5),
    ('fp16', 1, 1e-5),
    ('fp16', 2, 1e-5),
])
def test_train_py_loss_path_back_propagates_ce_plus_moe_loss(mode, accum_steps, tol):
    model = _model()
    batches = _batches(accum_steps)
    got, logged = _train_py_path(model, batches, mode, accum_steps)
    want = _explicit(model, batches, mode, accum_steps)
    assert _max_rel_diff(got, want) < tol
    # the MoE loss is in there at weight 1 (not shrunk by the loss scale): what it adds is its own gradient
    ce_only = _explicit(model, batches, mode, accum_steps, terms=('ce',))
    moe_only = _explicit(model, batches, mode, accum_steps, terms=('moe',))
    for name in ('blocks.0.mlp.gate.w_noise.weight', 'blocks.8.mlp.gate.w_gate.weight'):
        added = got[name] - ce_only[name]
        assert moe_only[name].norm() > 0
        assert ((added - moe_only[name]).norm() / moe_only[name].norm()).item() < 1e-3, name
    for total, moe in logged:  # the logged loss is CE + MoE loss
        assert moe > 0 and total > moe


def test_other_models_train_exactly_as_before():
    assert training.is_installed()
    torch.manual_seed(0)
    model = timm.create_model('test_vit', num_classes=10).train()
    task = ClassificationTask(model, nn.CrossEntropyLoss(), verbose=False)
    x, y = _batches(1)[0]
    x = nn.functional.interpolate(x, size=model.pretrained_cfg['input_size'][-2:])
    torch.manual_seed(3)
    result = task(x, y)
    torch.manual_seed(3)
    expected = nn.functional.cross_entropy(model(x), y)
    assert set(result) == {'loss', 'output'}
    assert torch.equal(result['loss'], expected)


def test_no_moe_loss_from_an_eval_forward_or_an_earlier_forward():
    model = _model()
    task = ClassificationTask(model, nn.CrossEntropyLoss(), verbose=False)
    x, y = _batches(1)[0]
    model.train()
    model(x)  # leaves a loss on the layers, outside the task
    model.eval()
    result = task(x, y)
    assert 'moe_loss' not in result
    assert torch.equal(result['loss'], nn.functional.cross_entropy(model(x), y))


def test_uninstall_restores_timm():
    model = _model().train()
    task = ClassificationTask(model, nn.CrossEntropyLoss(), verbose=False)
    x, y = _batches(1)[0]
    training.uninstall()
    try:
        assert 'moe_loss' not in task(x, y)
    finally:
        training.install()
    assert 'moe_loss' in task(x, y)
    assert timm_mlit.training.is_installed()


def test_reentrant_gradient_checkpointing_is_refused_not_silently_detached():
    """TIMM_REENTRANT_CKPT=1 + --grad-checkpointing runs the blocks under no_grad: the MoE loss would be detached."""
    from timm.layers import set_reentrant_ckpt, use_reentrant_ckpt
    x, y = _batches(1)[0]
    was = use_reentrant_ckpt()
    try:
        set_reentrant_ckpt(True)
        model = _model().train()
        model.set_grad_checkpointing(True)
        task = ClassificationTask(model, nn.CrossEntropyLoss(), verbose=False)
        with pytest.raises(training.DetachedAuxLossError, match='TIMM_REENTRANT_CKPT.*unset TIMM_REENTRANT_CKPT'):
            task(x, y)
        with torch.no_grad():  # an evaluation-style call without gradients is not training: no error
            task(x, y)
    finally:
        set_reentrant_ckpt(was)
    # timm's default, non-reentrant checkpointing: the MoE loss is in the graph and trains the gates
    model = _model().train()
    model.set_grad_checkpointing(True)
    task = ClassificationTask(model, nn.CrossEntropyLoss(), verbose=False)
    torch.manual_seed(5)
    task(x, y)['loss'].backward()
    got = _grads(model)
    reference = _model().train()
    torch.manual_seed(5)
    out = reference(x)
    (nn.functional.cross_entropy(out, y) + reference.moe_loss()).backward()
    assert _max_rel_diff(got, _grads(reference)) < 1e-5


def test_reentrant_env_variable_with_train_py_style_task_fails_clearly():
    import subprocess
    import sys
    code = ('import torch, torch.nn as nn, timm, timm_mlit\n'
            'from timm.task import ClassificationTask\n'
            'm = timm.create_model("mlit_xxs", num_classes=10).train(); m.set_grad_checkpointing(True)\n'
            'ClassificationTask(m, nn.CrossEntropyLoss(), verbose=False)(torch.randn(2, 3, 36, 36), '
            'torch.tensor([1, 2]))\n')
    import os
    env = dict(os.environ, TIMM_REENTRANT_CKPT='1')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env)
    assert result.returncode != 0 and 'DetachedAuxLossError' in result.stderr
    assert 'unset TIMM_REENTRANT_CKPT' in result.stderr


def test_aux_loss_task_gives_what_the_patched_train_py_task_gives_and_adds_the_losses_once():
    """AuxLossTask (for hand-written loops) and train.py's patched ClassificationTask run the same function."""
    from timm_mlit.layers import aux_losses
    x, y = _batches(1)[0]
    results = []
    for make_task in (lambda m: ClassificationTask(m, nn.CrossEntropyLoss(), verbose=False),
                      lambda m: training.AuxLossTask(m, nn.CrossEntropyLoss(), verbose=False)):
        model = _model().train()
        torch.manual_seed(7)
        result = make_task(model)(x, y)
        ce = nn.functional.cross_entropy(result['output'], y)
        assert torch.equal(result['loss'], ce + aux_losses(model)['moe_loss'])  # added once, not twice
        results.append(result)
    assert set(results[0]) == set(results[1]) == {'loss', 'output', 'moe_loss'}
    assert torch.equal(results[0]['loss'], results[1]['loss'])
    training.uninstall()
    try:  # the task subclass works without the import-time patch too
        model = _model().train()
        torch.manual_seed(7)
        assert torch.equal(training.AuxLossTask(model, nn.CrossEntropyLoss(), verbose=False)(x, y)['loss'],
                           results[1]['loss'])
    finally:
        training.install()


def test_aux_loss_task_adds_the_router_loss_and_accuracy():
    torch.manual_seed(0)
    model = timm.create_model('mobile_vmoe_6x64_patch3_36', num_classes=100, superclass_map='cifar100').train()
    task = training.AuxLossTask(model, nn.CrossEntropyLoss(), verbose=False)
    x, y = _batches(1)[0]
    result = task(x, y)
    assert set(result) == {'loss', 'output', 'router_loss', 'router_acc'}
    assert torch.allclose(result['loss'], nn.functional.cross_entropy(result['output'], y) + model.router_loss(y))


# --- reentrant gradient checkpointing in a hand-written loop: every reader of the auxiliary losses refuses -------

@pytest.fixture
def reentrant_ckpt():
    """timm's checkpoint / checkpoint_seq with use_reentrant=True (what TIMM_REENTRANT_CKPT=1 sets)."""
    from timm.layers import set_reentrant_ckpt, use_reentrant_ckpt
    was = use_reentrant_ckpt()
    set_reentrant_ckpt(True)
    yield
    set_reentrant_ckpt(was)


def _checkpointed_blocks(model, x, use_reentrant):
    """A hand-written loop's own checkpointing: the stem outside, each block through torch.utils.checkpoint."""
    from torch.utils.checkpoint import checkpoint
    h = model._embed(x)
    for blk in model.blocks:
        h = checkpoint(blk, h, use_reentrant=use_reentrant)
    return model.forward_head(model.norm(h))


MOE_READERS = {
    'model.moe_loss': lambda m: m.moe_loss(),
    'timm_mlit.moe_loss': lambda m: timm_mlit.moe_loss(m),
    'aux_losses': lambda m: timm_mlit.layers.aux_losses(m).get('moe_loss', torch.zeros(())),
}


@pytest.mark.parametrize('how', ['set_grad_checkpointing', 'torch.utils.checkpoint'])
@pytest.mark.parametrize('reader', list(MOE_READERS))
def test_reentrant_checkpointing_is_refused_by_every_reader_of_the_moe_loss(reentrant_ckpt, reader, how):
    assert training.DetachedAuxLossError is timm_mlit.layers.DetachedAuxLossError  # one class, two public names
    x, y = _batches(1)[0]
    model = _model().train()
    read = MOE_READERS[reader]

    def forward():
        if how == 'set_grad_checkpointing':
            model.set_grad_checkpointing(True)
            return model(x)
        return _checkpointed_blocks(model, x, use_reentrant=True)

    out = forward()
    assert out.requires_grad  # the task loss trains; the MoE loss would not
    with pytest.raises(training.DetachedAuxLossError, match=r'moe_loss of 9 MoEFeedForward module\(s\) has no '
                                                            r'gradient.*[Rr]eentrant.*Fix: '):
        read(model)
    with torch.no_grad():  # reading it for logging is fine
        assert read(model) > 0
    # no_grad forwards (evaluation in train mode) and eval forwards with autograd on do not raise
    with torch.no_grad():
        forward()
    assert read(model) > 0 and not read(model).requires_grad
    model.eval()
    forward()
    assert float(read(model)) == 0.


@pytest.mark.parametrize('how', ['set_grad_checkpointing', 'torch.utils.checkpoint'])
def test_non_reentrant_checkpointing_gives_a_moe_loss_that_reaches_the_gates(how):
    x, _ = _batches(1)[0]
    grads = []
    for checkpointed in (True, False):
        model = _model().train()
        torch.manual_seed(3)
        if not checkpointed:
            model(x)
        elif how == 'set_grad_checkpointing':  # timm's default: use_reentrant=False
            model.set_grad_checkpointing(True)
            model(x)
        else:
            _checkpointed_blocks(model, x, use_reentrant=False)
        model.moe_loss().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if '.gate.' in n})
    got, want = grads
    assert len(got) == 18 and all(g is not None and g.abs().sum() > 0 for g in got.values())
    assert all(torch.allclose(got[n], want[n], rtol=1e-5, atol=1e-8) for n in want)


def _mobile_vmoe():
    torch.manual_seed(0)
    return timm.create_model('mobile_vmoe_6x64_patch3_36', superclass_map='cifar100').train()


def test_mobile_vmoe_router_loss_under_reentrant_checkpointing(reentrant_ckpt):
    """The model's own checkpointing leaves the router outside the checkpointed blocks: its loss trains the router.
    A hand-written reentrant checkpoint around the router detaches it, and router_loss refuses."""
    from torch.utils.checkpoint import checkpoint
    x, y = torch.randn(4, 3, 36, 36), torch.tensor([0, 1, 2, 3])
    model = _mobile_vmoe()
    model.set_grad_checkpointing(True)
    model(x)
    model.router_loss(y).backward()
    assert model.router.proj.weight.grad.abs().sum() > 0

    model = _mobile_vmoe()
    h = model._embed(x)
    out = checkpoint(lambda t: model._run_blocks(t, [], -1)[0], h, use_reentrant=True)
    assert out.requires_grad
    with pytest.raises(training.DetachedAuxLossError, match=r'router_loss of 1 PerImageRouter'):
        model.router_loss(y)
    with pytest.raises(training.DetachedAuxLossError, match=r'router_loss of 1 PerImageRouter'):
        timm_mlit.layers.aux_losses(model, y)
    with torch.no_grad():
        assert model.router_loss(y) > 0

    model = _mobile_vmoe()
    checkpoint(lambda t: model._run_blocks(t, [], -1)[0], model._embed(x), use_reentrant=False)
    model.router_loss(y).backward()
    assert model.router.proj.weight.grad.abs().sum() > 0


class _Checkpointed(nn.Module):
    def __init__(self, block, use_reentrant):
        super().__init__()
        self.block, self.use_reentrant = block, use_reentrant

    def forward(self, x):
        from torch.utils.checkpoint import checkpoint
        return checkpoint(self.block, x, use_reentrant=self.use_reentrant)


@pytest.mark.parametrize('use_reentrant', [True, False])
def test_mae_loss_under_checkpointed_encoder_blocks(use_reentrant):
    """The MAE reads its MoE loss (mLiT Eq. 16) in its own forward: reentrant checkpointing refuses there."""
    from timm_mlit.mae.model import create_mae
    torch.manual_seed(0)
    mae = create_mae('mlit_xxs').train()
    mae.encoder.blocks = nn.Sequential(*[_Checkpointed(b, use_reentrant) for b in mae.encoder.blocks])
    imgs = torch.randn(2, 3, 36, 36)
    if use_reentrant:
        with pytest.raises(training.DetachedAuxLossError, match=r'moe_loss of 9 MoEFeedForward'):
            mae(imgs)
        with torch.no_grad():
            assert mae(imgs).parts['moe_loss'] > 0
        return
    mae(imgs)
    timm_mlit.layers.aux_losses(mae)['moe_loss'].backward()
    gates = {n: p.grad for n, p in mae.named_parameters() if n.startswith('encoder.') and '.gate.w_gate' in n}
    assert len(gates) == 9 and all(g is not None and g.abs().sum() > 0 for g in gates.values())
