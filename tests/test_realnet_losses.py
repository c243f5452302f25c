"""realnet.sidetrips._losses: memory-bounded and ghost-BatchNorm evaluation equal the one-shot path."""
from __future__ import annotations

import copy

import pytest
import torch

from realnet.config import ConfigError
from realnet.models import create_model
from realnet.sidetrips._losses import ONE_SHOT, BatchPlan, batch_grad, batch_losses, functional_model
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
