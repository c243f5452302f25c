"""realnet.averaging: kernel averages and equivalent schedules in a plain PyTorch training loop.

Ground truths: torch.optim.swa_utils.AveragedModel (EMA via get_ema_multi_avg_fn, its default SWA average),
the explicit weighted sum of stored snapshots, quadsgd.simulate on the linear model driven by the same
normals, quadsgd.equivalent_schedule, and Lemma 2 (constant gradient per batch: average == end point).
"""
from __future__ import annotations

import copy
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

import quadsgd as qs
from quadsgd.kernels import AveragingKernel, Tracking, parse_kernel
from quadsgd.simulation import draw_normals
from realnet.averaging import EquivalentScheduleLR, KernelAveragedModel, equivalent_multipliers, unwrap_model

REPO = Path(__file__).resolve().parents[1]

KERNELS = ["last", "twopoint:3", "npoint:3:2", "swa:4", "ema:0.3", "kernel:0.5,0.3,0.2", "kernel:0.1,0,0.6,0.3",
           "kernel:0,1"]


# =============================================================================================
# helpers
# =============================================================================================
def _flat(m: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in m.parameters()])


def _float_buffers(m: nn.Module) -> list[torch.Tensor]:
    return [b.detach().clone() for b in m.buffers() if b.is_floating_point()]


def _mlp(dtype=torch.float64, bn=False, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Linear(4, 6)] + ([nn.BatchNorm1d(6)] if bn else []) + [nn.Tanh(), nn.Linear(6, 2)]
    return nn.Sequential(*layers).to(dtype)


def _batches(n, dtype=torch.float64, seed=1, size=8):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(size, 4, generator=g).to(dtype)
        out.append((x, torch.stack([x.sum(1), x[:, 0] * x[:, 1]], 1)))
    return out


def _sgd_step(model, opt, batch):
    x, y = batch
    opt.zero_grad()
    ((model(x) - y) ** 2).mean().backward()
    opt.step()


def _mu(kernel: AveragingKernel, t: int) -> np.ndarray:
    """Weights of theta_t, theta_{t-1}, ..., theta_0 in the average at t (theta_{<0} count as theta_0;
    an EMA started at theta_0 puts its tail (1-a)^t on theta_0)."""
    tr = kernel.tracking()
    if tr.kind == "geometric":
        a = tr.decay
        mu = a * (1.0 - a) ** np.arange(t + 1)
        mu[t] = (1.0 - a) ** t
        return mu
    w = kernel.weights()
    mu = np.zeros(t + 1)
    for k, wk in enumerate(w):
        mu[min(k, t)] += wk
    return mu


def _explicit(kernel, hist: list[torch.Tensor], t: int) -> torch.Tensor:
    mu = _mu(kernel, t)
    return sum(float(mu[k]) * hist[t - k] for k in range(t + 1) if mu[k] != 0.0)


def _trajectory(steps, model=None, lr=0.05, dtype=torch.float64):
    """A real SGD(momentum) trajectory: (model, optimizer, batches)."""
    model = model if model is not None else _mlp(dtype)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    return model, opt, _batches(steps, dtype)


# =============================================================================================
# 1. AveragedModel agreement (EMA and the default SWA average)
# =============================================================================================
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("use_buffers", [False, True])
def test_ema_bit_equal_to_averaged_model(dtype, use_buffers):
    a = 0.125
    assert 1.0 - (1.0 - a) == a  # get_ema_multi_avg_fn lerps with weight 1 - decay
    model, opt, batches = _trajectory(12, _mlp(dtype, bn=True), dtype=dtype)
    ours = KernelAveragedModel(model, qs.EMA(a), use_buffers=use_buffers)
    ref = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(1.0 - a), use_buffers=use_buffers)
    ref.update_parameters(model)  # the same trajectory: the EMA starts at theta_0
    for b in batches:
        _sgd_step(model, opt, b)
        ours.update_parameters(model)
        ref.update_parameters(model)
        for p, q in zip(ours.module.parameters(), ref.module.parameters()):
            assert torch.equal(p, q)
        for p, q in zip(_float_buffers(ours.module), _float_buffers(ref.module)):
            assert torch.equal(p, q)
    assert not torch.equal(_flat(ours.module), _flat(model))
    # integer buffers are copied (AveragedModel with use_buffers=True averages them with int arithmetic)
    assert int(ours.module[1].num_batches_tracked) == int(model[1].num_batches_tracked) == 12


def test_ema_any_decay_within_rounding_of_averaged_model():
    a = 0.1  # 1 - (1 - a) != a: AveragedModel's weight differs from ours by one rounding
    model, opt, batches = _trajectory(20)
    ours = KernelAveragedModel(model, f"ema:{a}")
    ref = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(1.0 - a))
    ref.update_parameters(model)
    for b in batches:
        _sgd_step(model, opt, b)
        ours.update_parameters(model)
        ref.update_parameters(model)
    torch.testing.assert_close(_flat(ours.module), _flat(ref.module), rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("with_start", [False, True])
def test_uniform_swa_bit_equal_to_averaged_model_default(dtype, with_start):
    """AveragedModel's default average of theta_1..theta_T (of theta_0..theta_T with an update at
    construction) is SWA(T) (SWA(T+1)) at at_step=T."""
    T = 9
    model, opt, batches = _trajectory(T, _mlp(dtype), dtype=dtype)
    ours = KernelAveragedModel(model, qs.SWA(T + 1 if with_start else T), at_step=T)
    ref = AveragedModel(model)
    if with_start:
        ref.update_parameters(model)
    for b in batches:
        _sgd_step(model, opt, b)
        ours.update_parameters(model)
        ref.update_parameters(model)
    assert ours.ready and ours.extra_copies == 0
    for p, q in zip(ours.module.parameters(), ref.module.parameters()):
        assert torch.equal(p, q)


# =============================================================================================
# 2. any kernel == the explicit weighted sum of stored snapshots
# =============================================================================================
@pytest.mark.parametrize("spec", KERNELS)
@pytest.mark.parametrize("at_step", [None, 9])
def test_any_kernel_equals_weighted_snapshot_sum(spec, at_step):
    k = parse_kernel(spec)
    steps = 14 if at_step is None else at_step
    model, opt, batches = _trajectory(steps)
    avg = KernelAveragedModel(model, spec, at_step=at_step)
    hist = [_flat(model).clone()]
    for t, b in enumerate(batches, 1):
        _sgd_step(model, opt, b)
        avg.update_parameters(model)
        hist.append(_flat(model).clone())
        if at_step is None or t == at_step:
            torch.testing.assert_close(_flat(avg.module), _explicit(k, hist, t), rtol=0, atol=1e-12)
    assert avg.ready and avg.step == steps
    if at_step is not None:
        assert avg.extra_copies == 0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=6).filter(lambda w: w[-1] > 0),
       st.integers(1, 4), st.integers(2, 4), st.integers(0, 6), st.booleans(), st.integers(0, 3))
def test_property_weighted_sums(wints, delta, n, extra, sliding, start):
    """Random Kernel(weights) and NPoint(n, delta), at_step or sliding, any start_step."""
    w = np.asarray(wints, dtype=np.float64)
    for k in (qs.Kernel(w / w.sum()), qs.NPoint(n, delta)):
        T = start + max(int(k.support) - 1 + extra, 1)
        g = torch.Generator().manual_seed(sum(wints) + 7 * delta)
        p = nn.Parameter(torch.randn(5, generator=g, dtype=torch.float64))
        holder = nn.ParameterList([p])
        avg = KernelAveragedModel(holder, k, at_step=None if sliding else T, start_step=start)
        hist = [p.detach().clone()]
        for t in range(1, T - start + 1):
            with torch.no_grad():
                p.add_(torch.randn(5, generator=g, dtype=torch.float64))
            avg.update_parameters(holder)
            hist.append(p.detach().clone())
            if sliding or t == T - start:
                torch.testing.assert_close(avg.module[0].detach(), _explicit(k, hist, t), rtol=0, atol=1e-12)


def test_sliding_window_long_run_stays_exact():
    """The float64 running sum of a sliding SWA window (add newest, subtract oldest, recompute every W
    calls) stays at rounding level over many windows, for float32 parameters too (one tensor larger than
    the CPU cast chunk)."""
    W, steps = 7, 120
    g = torch.Generator().manual_seed(3)
    holder = nn.ParameterList([nn.Parameter(torch.randn(64, generator=g) * 100.0),
                               nn.Parameter(torch.randn(7, 10001, generator=g))])
    avg = KernelAveragedModel(holder, qs.SWA(W))
    hist = [_flat(holder).double()]
    err = 0.0
    for t in range(1, steps + 1):
        with torch.no_grad():
            for p in holder:
                p.add_(torch.randn(p.shape, generator=g) * 10.0)
        avg.update_parameters(holder)
        hist.append(_flat(holder).double())
        ref = _explicit(qs.SWA(W), hist, t)
        err = max(err, float(((_flat(avg.module).double() - ref).abs() / ref.abs().clamp_min(1.0)).max()))
    assert avg.extra_copies == W + 1
    assert err < 2 * 2.0 ** -24  # one float32 rounding of the exact mean (plus float64 noise)


# =============================================================================================
# 3. the linear model: quadsgd.simulate, equivalent_schedule
# =============================================================================================
class _LinearSGD(nn.Module):
    r"""quadsgd's linear model as a module: parameter u, loss 1/2 u'Omega u - xi'u (gradient Omega u - xi)."""

    def __init__(self, omega, u0):
        super().__init__()
        self.u = nn.Parameter(torch.tensor(u0, dtype=torch.float64))
        self.register_buffer("omega", torch.tensor(omega, dtype=torch.float64))

    def forward(self, xi):
        return 0.5 * (self.omega * self.u * self.u).sum() - (xi * self.u).sum()


LIN_KERNELS = (qs.Last(), qs.TwoPoint(10), qs.NPoint(3, 5), qs.SWA(8), qs.EMA(0.1), qs.Kernel([0.4, 0.1, 0.3, 0.2]))


def _linear_run(m, steps, seed, lr_of_step, avgs_spec=()):
    d = m.dim
    xi = draw_normals(seed, 1, steps * d).reshape(steps, d)  # step t (0-based) uses xi[t]
    mod = _LinearSGD(m.omega, np.ones(d))
    opt = torch.optim.SGD(mod.parameters(), lr=float(lr_of_step(0) if callable(lr_of_step) else m.lr),
                          momentum=m.momentum)
    return mod, opt, torch.from_numpy(xi)


def test_linear_model_average_equals_simulate():
    m = qs.LinearModel(np.array([0.5, 1.0, 2.0, 4.0]), lr=0.2, momentum=0.5)
    steps, seed = 40, 11
    res = qs.simulate(m, steps, 1, kernels=LIN_KERNELS, record_every=1, seed=seed, record_states=1)
    mod, opt, xi = _linear_run(m, steps, seed, None)
    sliding = [KernelAveragedModel(mod, k) for k in LIN_KERNELS]
    at_T = [KernelAveragedModel(mod, k, at_step=steps) for k in LIN_KERNELS]
    for t in range(steps):
        opt.zero_grad()
        mod(xi[t]).backward()
        opt.step()
        for ki, a in enumerate(sliding):
            a.update_parameters(mod)
            np.testing.assert_allclose(a.module.u.detach().numpy(), res.states[ki, 0, t], rtol=0, atol=1e-12)
        for a in at_T:
            a.update_parameters(mod)
    for ki, a in enumerate(at_T):
        np.testing.assert_allclose(a.module.u.detach().numpy(), res.final[ki, 0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(mod.u.detach().numpy(), res.final[0, 0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("kernel", LIN_KERNELS[1:])
def test_linear_model_scheduler_lrs_equal_equivalent_schedule(kernel):
    m = qs.LinearModel(np.array([0.5, 1.0, 2.0, 4.0]), lr=0.2, momentum=0.5)
    steps, seed = 30, 5
    mod, opt, xi = _linear_run(m, steps, seed, None)
    sched = EquivalentScheduleLR(opt, kernel, at_step=steps)
    lrs = []
    for t in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.zero_grad()
        mod(xi[t]).backward()
        opt.step()
        sched.step()
    expected = qs.equivalent_schedule(kernel, m.lr, steps=steps)
    assert np.array_equal(np.asarray(lrs), expected)
    # the side-trip with that schedule in quadsgd's simulator ends where this optimizer ends
    res = qs.simulate(m, steps, 1, kernels=(qs.Last(),), lr=expected, seed=seed)
    np.testing.assert_allclose(mod.u.detach().numpy(), res.final[0, 0], rtol=0, atol=1e-12)


# =============================================================================================
# 4. Lemma 2: constant gradient per batch -> average == end point of the equivalent schedule
# =============================================================================================
class _Linear(nn.Module):
    """Loss linear in the parameters: the gradient of batch i is g_i whatever the parameters."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3, 4, dtype=torch.float64))
        self.b = nn.Parameter(torch.zeros(4, dtype=torch.float64))

    def forward(self, g):
        gw, gb = g
        return (gw * self.w).sum() + (gb * self.b).sum()


def _lemma2_run(model, opt, sched, grads, update=None):
    for g in grads:
        opt.zero_grad()
        model(g).backward()
        opt.step()
        if sched is not None:
            sched.step()
        if update is not None:
            update.update_parameters(model)


LEMMA2 = ["last", "twopoint:20", "twopoint:6", "npoint:3:4", "swa:7", "swa:21", "ema:0.2", "kernel:0.5,0.3,0.2"]


@pytest.mark.parametrize("spec", LEMMA2)
def test_lemma2_average_equals_equivalent_schedule_endpoint(spec):
    T = 20
    g = torch.Generator().manual_seed(2)
    grads = [(torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64))
             for _ in range(T)]
    base = lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=T, eta_min=0.01)  # noqa: E731
    torch.manual_seed(0)
    main = _Linear()
    with torch.no_grad():
        main.w.normal_()
    side = copy.deepcopy(main)
    opt = torch.optim.SGD(main.parameters(), lr=0.3, momentum=0.9)
    avg = KernelAveragedModel(main, spec, at_step=T)
    _lemma2_run(main, opt, base(opt), grads, avg)
    opt2 = torch.optim.SGD(side.parameters(), lr=0.3, momentum=0.9)
    sched = EquivalentScheduleLR(opt2, spec, at_step=T, base=base(opt2))
    _lemma2_run(side, opt2, sched, grads)
    torch.testing.assert_close(_flat(avg.module), _flat(side), rtol=0, atol=1e-12)
    if parse_kernel(spec).tracking().kind != "last":
        assert (_flat(avg.module) - _flat(main)).abs().max() > 1e-3  # the average is not the end point


def test_lemma2_from_a_checkpoint_with_momentum_state():
    """A side-trip from theta_S (momentum buffer carried over) vs the average of theta_S..theta_T."""
    S, T = 7, 19
    g = torch.Generator().manual_seed(4)
    grads = [(torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64))
             for _ in range(T)]
    main = _Linear()
    opt = torch.optim.SGD(main.parameters(), lr=0.2, momentum=0.8)
    _lemma2_run(main, opt, None, grads[:S])
    for spec in ("twopoint:12", "ema:0.3", "swa:5"):
        m_, s_ = copy.deepcopy(main), copy.deepcopy(main)
        o1 = torch.optim.SGD(m_.parameters(), lr=0.2, momentum=0.8)
        o1.load_state_dict(copy.deepcopy(opt.state_dict()))  # (load_state_dict keeps the buffers' storage)
        o2 = torch.optim.SGD(s_.parameters(), lr=0.2, momentum=0.8)
        o2.load_state_dict(copy.deepcopy(opt.state_dict()))
        avg = KernelAveragedModel(m_, spec, at_step=T, start_step=S)
        _lemma2_run(m_, o1, None, grads[S:], avg)
        sched = EquivalentScheduleLR(o2, spec, at_step=T, start_step=S)
        _lemma2_run(s_, o2, sched, grads[S:])
        torch.testing.assert_close(_flat(avg.module), _flat(s_), rtol=0, atol=1e-12)
        k = parse_kernel(spec)
        assert np.array_equal(equivalent_multipliers(k, T, S), qs.equivalent_schedule(k, 1.0, steps=T - S))


def test_scheduler_with_base_and_param_groups_equals_equivalent_schedule():
    T = 25
    w1, w2 = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))

    def make():
        o = torch.optim.SGD([{"params": [w1], "lr": 0.1}, {"params": [w2], "lr": 0.03}], momentum=0.9)
        return o, torch.optim.lr_scheduler.StepLR(o, step_size=4, gamma=0.7)

    o, base = make()
    base_lrs = []
    for _ in range(T):
        base_lrs.append([gr["lr"] for gr in o.param_groups])
        o.step()
        base.step()
    base_lrs = np.asarray(base_lrs)
    for spec in ("twopoint:8", "ema:0.05", "npoint:4:3", "swa:10"):
        o, base = make()
        sched = EquivalentScheduleLR(o, spec, at_step=T, base=base)
        lrs = []
        for _ in range(T):
            lrs.append([gr["lr"] for gr in o.param_groups])
            o.step()
            sched.step()
        lrs = np.asarray(lrs)
        k = parse_kernel(spec)
        for gi in range(2):
            assert np.array_equal(lrs[:, gi], qs.equivalent_schedule(k, base_lrs[:, gi]))
        if np.isfinite(k.support):  # multiplier 1 before the support (sum of the weights: 1 to an ulp)
            L = int(k.support)
            one = float(k.cumulative(L))
            assert abs(one - 1.0) <= 2.0 ** -52
            assert np.array_equal(lrs[:T - L + 1], base_lrs[:T - L + 1] * one)
            assert not np.any(lrs[T - L + 1:] == base_lrs[T - L + 1:])
        with pytest.raises(ValueError, match="at_step=25"):
            o.step()  # step T+1 is refused before it changes anything
        assert sched.get_last_lr() == [gr["lr"] for gr in o.param_groups]


# =============================================================================================
# 5. DDP (torchrun, 2 CPU ranks, gloo) and torch.compile
# =============================================================================================
def test_ddp_two_ranks_same_average(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "tests.ddp_averaging_worker", str(tmp_path)]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert a["types"] == b["types"] == ["Sequential"] * 3  # the unwrapped module, not DDP
    for x, y, ref in zip(a["avg"], b["avg"], a["ref"]):
        assert torch.equal(x, y)
        torch.testing.assert_close(x, ref, rtol=0, atol=1e-12)


def test_torch_compile_training_model_averages_uncompiled_module():
    model, opt, batches = _trajectory(6)
    compiled = torch.compile(model, backend="eager")
    assert unwrap_model(compiled) is model
    avg_c = KernelAveragedModel(compiled, "twopoint:3", at_step=6)
    avg_u = KernelAveragedModel(model, "twopoint:3", at_step=6)
    ema_c = KernelAveragedModel(compiled, "ema:0.25")
    ema_u = KernelAveragedModel(model, "ema:0.25")
    for b in batches:
        _sgd_step(compiled, opt, b)
        for x in (avg_c, ema_c):
            x.update_parameters(compiled)
        for x in (avg_u, ema_u):
            x.update_parameters(model)
    assert type(avg_c.module) is nn.Sequential
    assert torch.equal(_flat(avg_c.module), _flat(avg_u.module))
    assert torch.equal(_flat(ema_c.module), _flat(ema_u.module))
    x = batches[0][0]
    assert torch.equal(avg_c(x), avg_u.module(x))


# =============================================================================================
# 6. BatchNorm: use_buffers both ways, update_bn
# =============================================================================================
@pytest.mark.parametrize("spec,at_step", [("twopoint:4", 8), ("swa:3", None), ("ema:0.3", None)])
def test_batchnorm_buffers_and_update_bn(spec, at_step):
    k = parse_kernel(spec)
    model, opt, batches = _trajectory(8, _mlp(bn=True))
    plain = KernelAveragedModel(model, spec, at_step=at_step)
    withb = KernelAveragedModel(model, spec, at_step=at_step, use_buffers=True)
    bn = model[1]
    hist_p, hist_b = [_flat(model).clone()], [torch.cat([bn.running_mean, bn.running_var]).clone()]
    for b in batches:
        model.train()
        _sgd_step(model, opt, b)
        plain.update_parameters(model)
        withb.update_parameters(model)
        hist_p.append(_flat(model).clone())
        hist_b.append(torch.cat([bn.running_mean, bn.running_var]).clone())
    t = len(batches)
    ref_p = _explicit(k, hist_p, t)
    for avg in (plain, withb):
        torch.testing.assert_close(_flat(avg.module), ref_p, rtol=0, atol=1e-12)
        assert int(avg.module[1].num_batches_tracked) == int(bn.num_batches_tracked) == t
    # use_buffers=False: the model's current buffers; True: their average
    assert torch.equal(plain.module[1].running_mean, bn.running_mean)
    assert torch.equal(plain.module[1].running_var, bn.running_var)
    got = torch.cat([withb.module[1].running_mean, withb.module[1].running_var])
    torch.testing.assert_close(got, _explicit(k, hist_b, t), rtol=0, atol=1e-12)
    assert not torch.allclose(got, hist_b[-1])
    # update_bn recomputes the statistics of the averaged weights, as on an explicit copy of them
    loader = [x for x, _ in _batches(5, seed=9, size=16)]
    ref = copy.deepcopy(model)
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(ref_p, ref.parameters())
    update_bn(loader, ref)
    for avg in (plain, withb):
        before = avg.module[1].running_mean.clone()
        update_bn(loader, avg)
        assert not torch.equal(before, avg.module[1].running_mean)
        torch.testing.assert_close(avg.module[1].running_mean, ref[1].running_mean, rtol=0, atol=1e-12)
        torch.testing.assert_close(avg.module[1].running_var, ref[1].running_var, rtol=0, atol=1e-12)


# =============================================================================================
# 7. state_dict: a resumed run continues bit-identically
# =============================================================================================
@pytest.mark.parametrize("spec,at_step,use_buffers", [("ema:0.3", None, True), ("swa:4", None, False),
                                                      ("twopoint:3", None, True), ("npoint:3:3", 14, False),
                                                      ("kernel:0.2,0.3,0.5", 14, True), ("last", 14, False)])
def test_state_dict_round_trip_continues_bit_identically(spec, at_step, use_buffers):
    model, opt, batches = _trajectory(14, _mlp(bn=True))
    avg = KernelAveragedModel(model, spec, at_step=at_step, use_buffers=use_buffers)
    for b in batches[:6]:
        _sgd_step(model, opt, b)
        avg.update_parameters(model)
    buf = io.BytesIO()
    torch.save(avg.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    resumed = KernelAveragedModel(_mlp(bn=True, seed=5), spec, at_step=at_step, use_buffers=use_buffers)
    resumed.load_state_dict(sd)
    assert resumed.n_updates == 6
    for b in batches[6:]:
        _sgd_step(model, opt, b)
        avg.update_parameters(model)
        resumed.update_parameters(model)
        for x, y in zip(avg.state_dict().values(), resumed.state_dict().values()):
            assert x == y if isinstance(x, dict) else torch.equal(x, y)
    with pytest.raises(ValueError, match="kernel"):
        KernelAveragedModel(_mlp(bn=True), "ema:0.5", at_step=at_step, use_buffers=use_buffers).load_state_dict(sd)


def test_scheduler_state_dict_round_trip():
    T = 16

    def make():
        w = nn.Parameter(torch.ones(3))
        o = torch.optim.SGD([w], lr=0.1, momentum=0.9)
        base = torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.9)
        return w, o, base, EquivalentScheduleLR(o, "twopoint:10", at_step=T, base=base)

    def run(w, o, s, n):
        out = []
        for _ in range(n):
            o.zero_grad()
            (w * w).sum().backward()
            o.step()
            s.step()
            out.append(o.param_groups[0]["lr"])
        return out

    w, o, _, s = make()
    full = run(w, o, s, T)
    w, o, base, s = make()
    head = run(w, o, s, 7)
    ckpt = io.BytesIO()
    torch.save({"w": w.detach(), "opt": o.state_dict(), "sched": s.state_dict()}, ckpt)
    ckpt.seek(0)
    c = torch.load(ckpt, weights_only=True)
    w2, o2, _, s2 = make()
    with torch.no_grad():
        w2.copy_(c["w"])
    o2.load_state_dict(c["opt"])
    s2.load_state_dict(c["sched"])
    assert head + run(w2, o2, s2, T - 7)[:-1] == full[:-1]  # the last step() sets the (refused) step T+1


# =============================================================================================
# 8. bad input: ValueErrors naming the argument
# =============================================================================================
class _Opaque(AveragingKernel):
    """A kernel without an online tracking rule."""

    point_weights = np.array([0.5, 0.5])

    def tracking(self):
        return Tracking("spectral")


def test_bad_inputs_name_the_argument():
    model = _mlp()
    with pytest.raises(ValueError, match="at_step=5"):
        KernelAveragedModel(model, "twopoint:10", at_step=5)  # support longer than at_step
    with pytest.raises(ValueError, match="at_step=5 is in the past"):
        KernelAveragedModel(model, "swa:3", at_step=5, start_step=6)
    with pytest.raises(ValueError, match="at_step"):
        KernelAveragedModel(model, "last", at_step=0)
    with pytest.raises(ValueError, match="window"):
        KernelAveragedModel(model, "swa:0")
    with pytest.raises(ValueError, match="window"):
        KernelAveragedModel(model, "swa:0", at_step=3)
    with pytest.raises(ValueError, match="kernel"):
        KernelAveragedModel(model, 3)
    with pytest.raises(ValueError, match="kernel"):
        KernelAveragedModel(model, "no_such_kernel:4")  # test modules register kernels of their own (Triangle)
    with pytest.raises(ValueError, match="model has no parameters"):
        KernelAveragedModel(nn.ReLU(), "ema:0.1")
    with pytest.raises(ValueError, match="model must be"):
        KernelAveragedModel("resnet20", "ema:0.1")
    with pytest.raises(ValueError, match="use_buffers"):
        KernelAveragedModel(model, "ema:0.1", use_buffers="yes")
    with pytest.raises(ValueError, match="tracking"):
        KernelAveragedModel(model, _Opaque())  # cannot be kept online
    with pytest.raises(ValueError, match="memory_limit"):
        KernelAveragedModel(model, "twopoint:100", memory_limit=1000)
    KernelAveragedModel(model, "twopoint:100", at_step=100, memory_limit=0)  # at_step needs no copy
    avg = KernelAveragedModel(model, "twopoint:2", at_step=3)
    for _ in range(3):
        avg.update_parameters(model)
    with pytest.raises(ValueError, match="after at_step=3"):
        avg.update_parameters(model)
    with pytest.raises(ValueError, match="model has"):
        KernelAveragedModel(model, "ema:0.1").update_parameters(nn.Linear(2, 2))

    w = nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([w], lr=0.1)
    with pytest.raises(ValueError, match="at_step=10"):
        EquivalentScheduleLR(opt, "twopoint:20", at_step=10)
    with pytest.raises(ValueError, match="window"):
        EquivalentScheduleLR(opt, "swa:0", at_step=10)
    other = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="base"):
        EquivalentScheduleLR(opt, "ema:0.1", at_step=10, base=torch.optim.lr_scheduler.StepLR(other, 2))
    base = torch.optim.lr_scheduler.StepLR(opt, 2)
    for _ in range(5):
        opt.step()
        base.step()
    with pytest.raises(ValueError, match="at_step=4 is in the past"):
        EquivalentScheduleLR(opt, "twopoint:2", at_step=4, base=base)
    sched = EquivalentScheduleLR(opt, "twopoint:2", at_step=7, base=base)
    assert sched.start_step == 5
    for _ in range(2):
        opt.step()
        sched.step()
    with pytest.raises(ValueError, match="at_step=7"):
        opt.step()
    with pytest.raises(ValueError, match="at_step=7"):
        sched.step()
