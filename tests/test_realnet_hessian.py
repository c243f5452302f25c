"""realnet.hessian: HVPs (double backward, torch.func) against finite differences and each other, Lanczos
against the full Hessian of tiny BatchNorm networks, conventions (BN modes, chunks, untouched model), errors.

Ground truth: ``torch.autograd.functional.hessian`` of a loss written here independently (its own
functional_call over a parameter dict), numpy's ``eigh`` of it, central finite differences of gradients,
and the optimizer's own gradient from ``realnet.trainer.train_step``. Everything in float64 unless stated.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from realnet.hessian import (
    FlatModel,
    ParamLayout,
    SampleLoss,
    lanczos,
    projected_gradients,
    rayleigh_quotients,
    residual_norms,
)
from realnet.models import create_model
from realnet.trainer import train_step


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: these tiny ops are dominated by thread synchronisation, which on a shared 2-core
    machine costs far more than the work (timings: benchmarks/results/2026-12-07-numbers-from-docstrings.md)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def tiny_net(act=nn.Tanh, seed=0) -> nn.Module:
    """Conv-BN-act x2 + pooling + linear: 219 parameters; BN running statistics set by a train-mode pass."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), act(),
                        nn.Conv2d(4, 4, 3, padding=1, stride=2), nn.BatchNorm2d(4), act(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    x = torch.randn(64, 1, 8, 8)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(x)
    net.eval()
    return net


def sample(n=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


def independent_loss(net: nn.Module, x, y, bn_mode: str, chunk: int):
    """The sample loss as a function of a flat float64 vector, written without realnet.hessian."""
    import copy
    m = copy.deepcopy(net).double()
    if bn_mode == "batch":
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.track_running_stats = False
                mod.running_mean = mod.running_var = mod.num_batches_tracked = None
        m.train()
    else:
        m.eval()
    names = [n for n, _ in m.named_parameters()]
    shapes = [p.shape for _, p in m.named_parameters()]
    sizes = [p.numel() for _, p in m.named_parameters()]
    xd = x.double()

    def f(theta):
        params = {n: t.reshape(s) for n, t, s in zip(names, torch.split(theta, sizes), shapes)}
        tot = 0.0
        for i in range(0, len(x), chunk):
            out = functional_call(m, params, (xd[i:i + chunk],))
            tot = tot + F.cross_entropy(out, y[i:i + chunk], reduction="sum")
        return tot / len(x)

    theta0 = torch.cat([p.detach().reshape(-1) for p in m.parameters()])
    return f, theta0


# ----------------------------------------------------------------------------------------- HVPs
@pytest.mark.parametrize("bn_mode", ["eval", "batch"])
def test_hvp_double_backward_equals_func_and_finite_differences(bn_mode):
    net = tiny_net()
    x, y = sample()
    L = SampleLoss(net, x, y, chunk_size=16, bn_mode=bn_mode, dtype=torch.float64)
    assert L.size == sum(p.numel() for p in net.parameters()) == 219
    g = torch.Generator().manual_seed(5)
    for _ in range(2):
        v = torch.randn(L.size, generator=g, dtype=torch.float64)
        v /= v.norm()
        a = L.hvp(v, method="double_backward")
        b = L.hvp(v, method="func")
        assert float((a - b).norm() / a.norm()) < 1e-12
        # central differences of gradients: error = c h^2 (truncation) + ~eps |g| / h (rounding). At h = 1e-4
        # the truncation term is ~1e-8 relative for this net and rounding ~1e-12, so 1e-6 is a safe bound; and
        # the error must shrink 100x from h = 1e-3 to 1e-4 (pure second order), which only the exact HVP allows.
        errs = []
        for h in (1e-3, 1e-4):
            fd = (L.gradient(L.theta0 + h * v) - L.gradient(L.theta0 - h * v)) / (2 * h)
            errs.append(float((fd - a).norm() / a.norm()))
        assert errs[1] < 1e-6
        assert 70 < errs[0] / errs[1] < 130, errs


def test_hvp_at_other_theta_and_chunking():
    net = tiny_net()
    x, y = sample()
    v = torch.randn(219, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    th = ParamLayout.of(net).flatten(net, torch.float64) * 1.1
    # eval mode: the chunk is only a memory bound
    a = SampleLoss(net, x, y, chunk_size=16, bn_mode="eval", dtype=torch.float64).hvp(v, th)
    b = SampleLoss(net, x, y, chunk_size=64, bn_mode="eval", dtype=torch.float64).hvp(v, th)
    c = SampleLoss(net, x, y, chunk_size=7, bn_mode="eval", dtype=torch.float64).hvp(v, th)
    assert float((a - b).norm() / a.norm()) < 1e-12 and float((a - c).norm() / a.norm()) < 1e-12
    # batch mode: the chunk is the BatchNorm batch -- the mean over chunks of each chunk's own Hessian
    Lb = SampleLoss(net, x, y, chunk_size=16, bn_mode="batch", dtype=torch.float64)
    fm = FlatModel(net, bn_mode="batch", dtype=torch.float64)
    per = sum(fm.hvp(x[i:i + 16], y[i:i + 16], v, th) for i in range(0, 64, 16)) / 4
    hb = Lb.hvp(v, th)
    assert float((hb - per).norm() / per.norm()) < 1e-12
    whole = SampleLoss(net, x, y, chunk_size=64, bn_mode="batch", dtype=torch.float64).hvp(v, th)
    assert float((hb - whole).norm() / whole.norm()) > 1e-3  # a different function, as documented
    # Rayleigh quotients on the sample's own chunks average to v^T H v of the sample loss
    D = torch.stack([v / v.norm(), torch.ones(219, dtype=torch.float64) / 219 ** 0.5])
    rq = rayleigh_quotients(Lb, Lb.chunks(), D, th)
    assert rq.shape == (4, 2)
    np.testing.assert_allclose(rq.mean(0), [float(d @ Lb.hvp(d, th)) for d in D], rtol=1e-10)


def test_model_is_untouched_and_no_autocast():
    net = tiny_net()
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = sample()
    for mode in ("eval", "batch"):
        L = SampleLoss(net, x, y, chunk_size=16, bn_mode=mode)
        v = torch.ones(L.size)
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            hv = L.hvp(v)
            g = L.gradient()
        assert hv.dtype == torch.float32 and g.dtype == torch.float32
        ref = SampleLoss(net, x, y, chunk_size=16, bn_mode=mode).hvp(v)
        assert torch.allclose(hv, ref, rtol=1e-6, atol=1e-7)  # autocast did not reach the HVP
    assert net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_batch_mode_gradient_is_the_optimizers_gradient():
    torch.manual_seed(0)
    model = create_model("resnet20", 10, small_stem=True, width=2)
    x = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    y = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(3))
    fm = FlatModel(model, bn_mode="batch", label_smoothing=0.1)
    g = fm.grad(x, y)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    train_step(model, opt, x, y, lr=0.0, label_smoothing=0.1)  # train-mode BN, the run's loss
    ref = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert torch.allclose(g, ref, rtol=1e-5, atol=1e-7)
    # the two HVP methods agree on the real architecture (ReLU, option-A shortcuts, train-mode BN), float64
    f64 = FlatModel(model, bn_mode="batch", dtype=torch.float64)
    v = torch.randn(f64.size, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    a, b = f64.hvp(x, y, v, method="double_backward"), f64.hvp(x, y, v, method="func")
    assert float((a - b).norm() / a.norm()) < 1e-12
    D = torch.randn(3, fm.size, generator=torch.Generator().manual_seed(4))
    G = projected_gradients(fm, [(x, y), (x, y)], D)
    assert G.shape == (2, 3)
    np.testing.assert_allclose(G[0], (D @ ref).double().numpy(), rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------- Lanczos
@pytest.mark.parametrize("bn_mode,act", [("eval", nn.ReLU), ("batch", nn.Tanh)])
def test_lanczos_top_k_matches_full_hessian(bn_mode, act):
    net = tiny_net(act)
    x, y = sample()
    L = SampleLoss(net, x, y, chunk_size=32, bn_mode=bn_mode, dtype=torch.float64)
    f, theta0 = independent_loss(net, x, y, bn_mode, 32)
    assert torch.equal(theta0, L.theta0)
    H = torch.autograd.functional.hessian(f, theta0).numpy()
    np.testing.assert_allclose(H, H.T, atol=1e-12)
    w, U = np.linalg.eigh(H)
    w, U = w[::-1], U[:, ::-1]
    k = 6
    assert np.min(np.abs(np.diff(w[:k + 1]))) > 1e-3 * w[0]  # separated: eigenvectors are well defined
    res = lanczos(L.operator(), L.size, k=k, dtype=torch.float64, tol=1e-10, seed=0)
    assert res.converged.all()
    np.testing.assert_allclose(res.eigenvalues, w[:k], rtol=1e-6)
    assert np.all(np.diff(res.eigenvalues) <= 0)
    cos = np.abs(np.sum(res.eigenvectors.numpy() * U[:, :k].T, axis=1))
    assert np.all(cos > 0.999), cos
    explicit = residual_norms(L.operator(), res.eigenvalues, res.eigenvectors)
    assert np.all(explicit < 1e-8 * w[0])
    np.testing.assert_allclose(res.residuals, explicit, atol=1e-8 * w[0])
    # float32 Lanczos on the float32 operator agrees to float32 accuracy
    L32 = SampleLoss(net, x, y, chunk_size=32, bn_mode=bn_mode)
    r32 = lanczos(L32.operator(), L32.size, k=3, tol=1e-5)
    np.testing.assert_allclose(r32.eigenvalues, w[:3], rtol=1e-4)


def test_lanczos_thick_restart_recovers_a_known_spectrum():
    rng = np.random.default_rng(0)
    n = 300
    Q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    lam = np.concatenate([np.array([9.0, 8.0, 7.5, 7.0, 6.0]), rng.uniform(-3, 3, n - 5)])
    A = torch.tensor((Q * lam) @ Q.T)
    top = np.argsort(lam)[::-1][:5]
    for steps in (None, 9):  # 9: forces many thick restarts
        r = lanczos(lambda v: A @ v, n, k=5, steps=steps, dtype=torch.float64, tol=1e-11, max_restarts=500)
        assert r.converged.all()
        np.testing.assert_allclose(r.eigenvalues, lam[top], rtol=1e-10)
        cos = np.abs(np.sum(r.eigenvectors.numpy() * Q[:, top].T, axis=1))
        assert np.all(cos > 1 - 1e-9)
        if steps == 9:
            assert r.restarts > 0 and r.krylov_dim <= 9
            again = lanczos(lambda v: A @ v, n, k=5, steps=steps, dtype=torch.float64, tol=1e-11, max_restarts=500)
            assert np.array_equal(again.eigenvalues, r.eigenvalues)  # deterministic start vector (seed)
            assert torch.equal(again.eigenvectors, r.eigenvectors)
    # a rank-deficient operator whose Krylov space closes early: the full space is still covered
    P = torch.tensor(Q[:, :3] * [3.0, 2.0, 1.0]) @ torch.tensor(Q[:, :3]).T
    r = lanczos(lambda v: P @ v, n, k=4, steps=20, dtype=torch.float64, tol=1e-10)
    np.testing.assert_allclose(r.eigenvalues, [3.0, 2.0, 1.0, 0.0], atol=1e-10)


# ----------------------------------------------------------------------------------------- errors
def test_clear_errors_naming_the_option():
    net = tiny_net()
    x, y = sample()
    L = SampleLoss(net, x, y, chunk_size=16, bn_mode="eval")
    with pytest.raises(ValueError, match=r"k = 500 .* only 219 .*k must be in \[1, 219\]"):
        lanczos(L.operator(), L.size, k=500)
    with pytest.raises(ValueError, match=r"steps .* must exceed k"):
        lanczos(L.operator(), L.size, k=10, steps=10)
    with pytest.raises(ValueError, match=r"sample_size \(60\) must be a multiple of chunk_size \(16\)"):
        SampleLoss(net, x[:60], y[:60], chunk_size=16, bn_mode="batch")
    with pytest.raises(ValueError, match="bn_mode must be one of"):
        SampleLoss(net, x, y, bn_mode="train")
    with pytest.raises(ValueError, match="method must be one of"):
        L.hvp(torch.ones(219), method="hessian")
    with pytest.raises(ValueError, match=r"v must be a tensor of shape \(219,\)"):
        L.hvp(torch.ones(5))
    frozen = tiny_net()
    for p in frozen.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        ParamLayout.of(frozen)
