"""Batch plans: memory-bounded and ghost-BatchNorm evaluation (realnet.sidetrips._losses, realnet.hessian) equal the
one-shot path, and the side-trips that evaluate gradients of fixed batches follow the run's ranks."""
from __future__ import annotations

import copy
import shutil

import numpy as np
import pytest
import torch

import realnet
from realnet.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint, save_checkpoint
from realnet.config import ConfigError, TrainConfig
from realnet.hessian import FlatModel, SampleLoss, projected_gradients, rayleigh_quotients
from realnet.models import create_model
from realnet.sidetrips._losses import ONE_SHOT, BatchPlan, batch_grad, batch_losses, functional_model, grad_vector
from realnet.sidetrips._runner import RunContext
from realnet.sidetrips.alignment import FIXED_BATCH_SEED, AlignmentOptions, AlignmentRecords
from realnet.trainer import Runtime, train_step

RT = Runtime(torch.device("cpu"))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = create_model("resnet20", 10, small_stem=True, width=4)
    model.train()
    with torch.no_grad():  # running statistics that differ from a fresh model's
        model(torch.randn(64, 3, 16, 16) * 2 + 0.5)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 3, 16, 16, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(2)]
    theta = {k: v.detach() for k, v in model.named_parameters()}
    direction = {k: torch.randn(v.shape, generator=g) * 1e-2 for k, v in theta.items()}
    return model, batches, theta, direction, torch.tensor([0.0, 0.5, 1.0, 3.0])


@pytest.mark.parametrize("mode", ["lr", "batches", "loop"])
def test_memory_bound_gives_the_one_shot_losses(setup, mode):
    model, batches, theta, d, coeffs = setup
    for bn in ("running", "batch"):
        fm, buf = functional_model(model, bn)
        one = batch_losses(fm, buf, theta, d, coeffs, batches, RT, mode, chunk_size=4)
        bound = 16 if bn == "batch" else 5  # batch statistics: groups are never split (16 = the whole batch)
        micro = batch_losses(fm, buf, theta, d, coeffs, batches, RT, mode, chunk_size=4, plan=BatchPlan(1, bound))
        torch.testing.assert_close(micro, one, rtol=1e-5, atol=1e-6)


def test_ghost_batchnorm_is_the_mean_over_per_rank_groups(setup):
    model, batches, theta, d, coeffs = setup
    fm, _ = functional_model(model, "batch")
    ghost = batch_losses(fm, {}, theta, d, coeffs, batches, RT, "lr", plan=BatchPlan(2, 8))
    halves = batch_losses(fm, {}, theta, d, coeffs, [(x[r::2], y[r::2]) for x, y in batches for r in (0, 1)],
                          RT, "lr")  # rank r of 2 took positions r, r + 2, ...
    torch.testing.assert_close(ghost, halves.view(len(coeffs), 2, 2).mean(2), rtol=1e-6, atol=1e-7)
    whole = batch_losses(fm, {}, theta, d, coeffs, batches, RT, "lr")
    assert (ghost - whole).abs().max() > 1e-4  # per-rank statistics are not the global batch's
    x, y = batches[0]
    lg, gg = batch_grad(fm, theta, x, y, RT, plan=BatchPlan(2))
    (l0, g0), (l1, g1) = batch_grad(fm, theta, x[0::2], y[0::2], RT), batch_grad(fm, theta, x[1::2], y[1::2], RT)
    torch.testing.assert_close(lg, (l0 + l1) / 2)
    for k in gg:
        torch.testing.assert_close(gg[k], (g0[k] + g1[k]) / 2, rtol=1e-5, atol=1e-7)
    with pytest.raises(ConfigError, match="micro_batch=4 is smaller than the BatchNorm group of 8 examples"):
        batch_losses(fm, {}, theta, d, coeffs, batches, RT, "lr", plan=BatchPlan(2, 4))
    with pytest.raises(ConfigError, match="a batch of 16 cannot be normalised like the run's 3 ranks"):
        batch_grad(fm, theta, x, y, RT, plan=BatchPlan(3))
    assert ONE_SHOT == BatchPlan(1, 0)


def test_train_step_with_bn_groups_is_the_ddp_update(setup):
    model, batches, *_ = setup
    x, y = batches[0]
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    oa = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9)
    loss, correct = train_step(a, oa, x, y, 0.1, RT, bn_groups=2)
    grads = []
    for xs, ys in ((x[0::2], y[0::2]), (x[1::2], y[1::2])):
        m = copy.deepcopy(b)
        torch.nn.functional.cross_entropy(m(xs), ys).backward()
        grads.append([p.grad for p in m.parameters()])
    with torch.no_grad():
        for p, g0, g1 in zip(b.parameters(), *grads):
            p -= 0.1 * (g0 + g1) / 2
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    assert 0 <= int(correct) <= 16 and torch.isfinite(loss)


# ------------------------------------------------------------------ Hessian, gradients and HVPs under a plan
@pytest.fixture(scope="module")
def hessian_setup(setup):
    """The module's model in float64, a sample of 32 examples at 8 px (two batches of 16), two unit directions."""
    model, batches, *_ = setup
    x = torch.cat([b[0] for b in batches])[..., :8, :8].double()
    y = torch.cat([b[1] for b in batches])
    g = torch.Generator().manual_seed(3)
    P = sum(p.numel() for p in model.parameters())
    V = torch.randn(2, P, generator=g, dtype=torch.float64)
    return model, x, y, V / V.norm(dim=1, keepdim=True)


def _sample_values(L, V, func: bool = False):
    """Loss, gradient and HVPs along V (and with ``func`` the forward-over-reverse HVP of the first direction)."""
    out = (L.value(), L.gradient(), torch.stack([L.hvp(v) for v in V]))
    return out + (L.hvp(V[0], method="func"),) if func else out


def test_sample_loss_with_a_memory_bound_equals_the_one_shot_path(hessian_setup):
    """Eval-mode BatchNorm: parts of at most 5 examples (5, 5, 5, 1 per chunk of 16) give the one-shot loss,
    gradient and HVPs (both methods) to float64 rounding; batch statistics with a bound equal to the group are the
    one-shot path exactly, and a bound below the group is refused naming micro_batch."""
    model, x, y, V = hessian_setup
    kw = dict(chunk_size=16, dtype=torch.float64)
    one = _sample_values(SampleLoss(model, x, y, bn_mode="eval", **kw), V, func=True)
    bounded = SampleLoss(model, x, y, bn_mode="eval", plan=BatchPlan(1, 5), **kw)
    assert [len(p[1]) for p in bounded.flat.parts(x[:16], y[:16])] == [5, 5, 5, 1]
    for a, b in zip(_sample_values(bounded, V, func=True), one):
        torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(b), rtol=1e-11, atol=1e-13)
    one = _sample_values(SampleLoss(model, x, y, bn_mode="batch", **kw), V)
    for a, b in zip(_sample_values(SampleLoss(model, x, y, bn_mode="batch", plan=BatchPlan(1, 16), **kw), V), one):
        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))
    with pytest.raises(ConfigError, match="micro_batch=8 is smaller than the BatchNorm group of 16 examples"):
        SampleLoss(model, x, y, bn_mode="batch", plan=BatchPlan(1, 8), **kw).value()
    with pytest.raises(ValueError, match="plan must be None or have a parts"):
        SampleLoss(model, x, y, plan=8, **kw)


def test_sample_loss_with_ghost_groups_is_the_mean_over_the_ranks_shares(hessian_setup):
    """A 2-rank run without SyncBN: each chunk of 16 (the global batch) normalised as two groups of 8 -- rank r
    took positions r, r + 2, ... -- equals the one-shot path on the sample reordered into those groups with
    chunks of 8 (to float64 rounding), with or without a bound of one group per pass; and it differs from
    BatchNorm over the global batch (what a side-trip in one process would do without the plan)."""
    model, x, y, V = hessian_setup
    kw = dict(bn_mode="batch", dtype=torch.float64)
    order = torch.cat([torch.arange(c, c + 16)[r::2] for c in (0, 16) for r in (0, 1)])
    groups = _sample_values(SampleLoss(model, x[order], y[order], chunk_size=8, **kw), V)
    for plan in (BatchPlan(2), BatchPlan(2, 8)):
        ghost = _sample_values(SampleLoss(model, x, y, chunk_size=16, plan=plan, **kw), V)
        for a, b in zip(ghost, groups):
            torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(b), rtol=1e-11, atol=1e-13)
    whole = _sample_values(SampleLoss(model, x, y, chunk_size=16, **kw), V)
    assert abs(ghost[0] - whole[0]) > 1e-4 and (ghost[2] - whole[2]).abs().max() > 1e-3 * whole[2].abs().max()
    # per-batch quantities of the linear fit: Rayleigh quotients and projected gradients of fresh batches
    flat = FlatModel(model, bn_mode="batch", dtype=torch.float64, plan=BatchPlan(2, 8))
    plain = FlatModel(model, bn_mode="batch", dtype=torch.float64)
    batches = [(x[:16], y[:16]), (x[16:], y[16:])]
    halves = [[(bx[r::2], by[r::2]) for r in (0, 1)] for bx, by in batches]
    R = rayleigh_quotients(flat, batches, V)
    R_ref = np.array([[np.mean([float(v @ plain.hvp(hx, hy, v)) for hx, hy in hs]) for v in V] for hs in halves])
    np.testing.assert_allclose(R, R_ref, rtol=1e-11)
    G = projected_gradients(flat, batches, V)
    G_ref = np.array([(V @ sum(plain.grad(hx, hy) for hx, hy in hs) / 2).numpy() for hs in halves])
    np.testing.assert_allclose(G, G_ref, rtol=1e-10, atol=1e-14)
    assert np.abs(R - rayleigh_quotients(plain, batches, V)).max() > 1e-3 * np.abs(R).max()


# ------------------------------------------------------------------ side-trips of a 2-rank run
def as_world(run, dst, world: int):
    """A copy of ``run`` whose checkpoints say they were written by ``world`` ranks (what a DDP run records)."""
    shutil.copytree(run, dst)
    for s in list_checkpoints(dst):
        ck = load_checkpoint(checkpoint_path(dst, s))
        ck["world_size"] = world
        save_checkpoint(checkpoint_path(dst, s), ck)
    return dst


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """ResNet-20 (width 4) trained 20 steps on digits (batch 16), as one process and as if by 2 ranks."""
    root = tmp_path_factory.mktemp("ghost")
    realnet.train(TrainConfig(dataset="digits", model="resnet20", width=4, steps=20, batch_size=16, lr=0.05,
                              checkpoint_every=20, eval_every=20, progress=False, threads=1), root / "one")
    return root / "one", as_world(root / "one", root / "two", 2)


QUICK = dict(threads=1, progress=False)
ALIGN = dict(steps=3, record_every=1, batch_pairs=2, **QUICK)
DIVERGE = dict(steps=3, record_every=1, eval_steps=[0], bn_batches=1, train_eval_samples=64, val_samples=64,
               fixed_batch_every=1, **QUICK)


def test_alignment_and_divergence_gradients_follow_the_runs_ranks(runs, tmp_path):
    """The fixed-batch gradients of alignment and divergence on a 2-rank run are the mean of the two ranks'
    shares' gradients (checked against batch_grad on the shares), differ from a one-process run's, and are
    unchanged by a memory bound of one share per pass; a bound below the share is refused naming micro_batch
    before anything is written."""
    one, two = runs
    a1 = realnet.alignment(one, 20, tmp_path / "a1", **ALIGN)
    a2 = realnet.alignment(two, 20, tmp_path / "a2", **ALIGN)
    a2m = realnet.alignment(two, 20, tmp_path / "a2m", micro_batch=8, **ALIGN)
    ctx = RunContext(two, AlignmentOptions(**ALIGN))
    base = ctx.branch(20)
    assert ctx.bn_world == 2
    x, y = ctx.data.fixed_batches("train", 1, 16, FIXED_BATCH_SEED, ctx.rt.device)[0]
    fm, _ = functional_model(base.model, "batch")
    theta = dict(base.model.named_parameters())
    shares = [grad_vector(batch_grad(fm, theta, x[r::2], y[r::2], RT)[1]) for r in (0, 1)]
    assert a2.fixed_grad_norm_start == pytest.approx(float(((shares[0] + shares[1]) / 2).double().norm()), rel=1e-5)
    assert a1.fixed_grad_norm_start == pytest.approx(float(grad_vector(batch_grad(fm, theta, x, y, RT)[1])
                                                           .double().norm()), rel=1e-5)
    assert abs(a1.fixed_grad_norm_start / a2.fixed_grad_norm_start - 1) > 1e-3
    for col in AlignmentRecords.columns():
        np.testing.assert_array_equal(getattr(a2m.records, col), getattr(a2.records, col), err_msg=col)
    d1 = realnet.divergence(one, 20, tmp_path / "d1", **DIVERGE)
    d2 = realnet.divergence(two, 20, tmp_path / "d2", **DIVERGE)
    d2m = realnet.divergence(two, 20, tmp_path / "d2m", micro_batch=8, **DIVERGE)
    np.testing.assert_array_equal(d2m.fixed_batch_track.grad_norm, d2.fixed_batch_track.grad_norm)
    np.testing.assert_array_equal(d2m.fixed_batch_track.loss, d2.fixed_batch_track.loss)
    assert np.abs(d1.fixed_batch_track.loss[0] - d2.fixed_batch_track.loss[0]) > 1e-4
    for trip in (realnet.alignment, realnet.divergence):
        with pytest.raises(ConfigError, match="micro_batch=4 is smaller than the BatchNorm group of 8 examples"):
            trip(two, 20, tmp_path / "bad", micro_batch=4, **(ALIGN if trip is realnet.alignment else DIVERGE))
        assert not (tmp_path / "bad").exists()
