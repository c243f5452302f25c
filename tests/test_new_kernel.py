"""A kernel added in one file -- this one -- works everywhere without touching library code.

``TailAverage(n, cycle, decay)`` averages every ``cycle``-th iterate of the last ``n * cycle`` steps with
geometrically decaying weights (a cyclic SWA with a decaying tail). quadsgd knows nothing about it: it
declares only its ``point_weights``, ``stride`` and spec name, and the generic behaviour of
:class:`quadsgd.AveragingKernel` (Horner generating function, tracking by weighted points, cumulative sums,
the spec grammar) makes it work in the exact theory, the transient moments, both simulation methods,
``quadsgd.testing``, the sweep specs, :class:`realnet.averaging.KernelAveragedModel` /
:class:`~realnet.averaging.EquivalentScheduleLR` and realnet's averaging side-trip. Each consumer is checked
against an independent ground truth.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest

import quadsgd as qs
from quadsgd import testing as qst

from .groundtruth import brute_expected_loss, brute_stationary_cov


@dataclass(frozen=True)
class TailAverage(qs.AveragingKernel):
    """Weights proportional to (1 - decay)^j on the iterates t - j*cycle, j < n."""

    n: int
    cycle: int
    decay: float
    spec_name: ClassVar[str] = "test_tail"
    params: ClassVar[tuple] = ("n", "cycle", "decay")

    @property
    def stride(self) -> int:
        return self.cycle

    @property
    def point_weights(self) -> np.ndarray:
        w = (1.0 - self.decay) ** np.arange(self.n)
        return w / w.sum()


KERNEL = TailAverage(4, 3, 0.3)


def _dense_weights(k) -> np.ndarray:
    mu = np.zeros(k.support)
    mu[:: k.cycle] = k.point_weights
    return mu


def test_spec_grammar_and_behaviour_come_from_the_base_class():
    assert str(KERNEL) == "test_tail:4:3:0.3" and qs.parse_kernel(str(KERNEL)) == KERNEL
    t = KERNEL.tracking()
    assert (t.kind, t.stride, t.n) == ("points", 3, 4) and t.uniform_window == 0
    mu = _dense_weights(KERNEL)
    cs = np.concatenate([[0.0], np.cumsum(mu)])  # sum_{m<r} mu_m, 1 past the support
    np.testing.assert_allclose(KERNEL.cumulative(np.arange(14)), cs[np.minimum(np.arange(14), mu.size)],
                               rtol=0, atol=1e-15)
    g = np.linspace(-0.9, 0.99, 7)
    brute = np.array([np.sum(np.outer(mu, mu) * gi ** np.abs(np.subtract.outer(np.arange(10), np.arange(10))))
                      for gi in g])
    np.testing.assert_allclose(qs.kernel_variance_ratio(KERNEL, g), brute, rtol=1e-12)


@pytest.mark.parametrize("kind", ["diagonal-momentum", "non-normal"])
def test_exact_theory_against_brute_force(kind):
    if kind == "diagonal-momentum":
        m = qs.LinearModel(np.array([1.0, 0.2, 0.03]), lr=0.3, momentum=0.6)
    else:
        A = np.array([[1.0, 0.3, 0.0], [0.3, 0.5, 0.1], [0.0, 0.1, 0.2]])
        C = np.array([[1.0, 0.6, 0.2], [0.6, 1.0, 0.5], [0.2, 0.5, 1.0]])
        m = qs.LinearModel.from_quadratic(A, C, lr=0.4)
    cov = qs.stationary_covariance(m, KERNEL)
    truth = brute_stationary_cov(m, KERNEL)
    np.testing.assert_allclose(cov if cov.ndim == 2 else np.diag(cov), truth if cov.ndim == 2 else np.diag(truth),
                               rtol=1e-9, atol=1e-12)
    lrs = np.concatenate([np.full(25, m.lr), np.full(25, m.lr / 3)])
    np.testing.assert_allclose(qs.expected_loss(m, KERNEL, steps=50, lr=lrs),
                               brute_expected_loss(m, KERNEL, 50, lrs=lrs), rtol=1e-10)


def test_simulation_and_quadsgd_testing_agree_with_the_theory():
    m = qs.LinearModel(np.array([1.0, 0.1]), lr=0.2, momentum=0.5)
    qst.assert_stationary_matches(qs.stationary_covariance(m, KERNEL), m, KERNEL, chains=20000)  # exact method
    curve = qs.expected_loss(m, KERNEL, steps=60, u0=np.array([2.0, -1.0]))
    qst.assert_curve_matches(curve, m, KERNEL, 60, u0=np.array([2.0, -1.0]), chains=4000, record_every=6)
    # the two simulation methods produce the same averages as the numpy twin fed the same normals
    from quadsgd.simulation import draw_normals
    from quadsgd.simulation._reference import reference_step

    res = qs.simulate(m, 30, 5, (qs.Last(), KERNEL), record_every=10, seed=3, per_chain_loss=True)
    xi = draw_normals(3, 5, 30 * m.dim).reshape(5, 30, m.dim)
    loss, _ = reference_step(m.omega, m.loss_matrix(), np.ones(m.dim), np.full(30, m.lr), m.momentum,
                             (qs.Last(), KERNEL), res.times, xi)
    np.testing.assert_allclose(res.chain_loss, loss, rtol=1e-12)


def test_sweep_spec_names_the_kernel(tmp_path):
    from quadsgd.sweeps import run_spec

    spec = {"sweep": {"seed": 1, "kernels": ["Last", "TailAverage"], "quantities": ["stationary_loss"]},
            "params": {"n_fast": 1, "n_slow": 1, "n": 4, "cycle": 3, "decay": 0.3}, "grid": {"lr": [0.1, 0.5]}}
    df = run_spec(spec, tmp_path / "sw", scheduler="serial", progress=False, figures=False)
    for lr, g in df.groupby("lr"):
        m = qs.LinearModel(np.array([1.0, 0.015]), float(lr))
        assert g[g["kernel"] == "TailAverage"]["value"].item() == qs.stationary_loss(m, KERNEL)


def test_pytorch_average_and_its_equivalent_schedule():
    torch = pytest.importorskip("torch")
    from realnet.averaging import EquivalentScheduleLR, KernelAveragedModel

    torch.manual_seed(0)
    T = 20
    grads = torch.randn(T, 6, dtype=torch.float64)  # Lemma 2's premise: a fixed gradient per step
    p = torch.nn.Parameter(torch.zeros(6, dtype=torch.float64))
    model = torch.nn.Module()
    model.p = p
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.0)
    avg = KernelAveragedModel(model, str(KERNEL), at_step=T)
    history = [p.detach().clone()]
    for t in range(T):
        opt.zero_grad()
        p.grad = grads[t].clone()
        opt.step()
        avg.update_parameters(model)
        history.append(p.detach().clone())
    mu = _dense_weights(KERNEL)
    explicit = sum(mu[j] * history[T - j] for j in range(mu.size))
    torch.testing.assert_close(avg.module.p.detach(), explicit, rtol=1e-12, atol=1e-14)
    # the equivalent schedule's end point equals the average (Lemma 2), its lrs equal qs.equivalent_schedule
    q = torch.nn.Parameter(torch.zeros(6, dtype=torch.float64))
    opt2 = torch.optim.SGD([q], lr=0.1)
    sched = EquivalentScheduleLR(opt2, KERNEL, at_step=T)
    lrs = []
    for t in range(T):
        lrs.append(opt2.param_groups[0]["lr"])
        opt2.zero_grad()
        q.grad = grads[t].clone()
        opt2.step()
        sched.step()
    np.testing.assert_array_equal(lrs, qs.equivalent_schedule(KERNEL, np.full(T, 0.1)))
    torch.testing.assert_close(q.detach(), explicit, rtol=1e-12, atol=1e-14)


def test_realnet_averaging_sidetrip(tmp_path):
    pytest.importorskip("torch")
    import realnet
    from realnet.config import TrainConfig

    run = tmp_path / "run"
    realnet.train(TrainConfig(dataset="digits", model="resnet20", width=4, steps=6, batch_size=16, lr=0.05,
                              checkpoint_every=3, eval_every=0, progress=False, eval_samples=64, threads=1), run)
    spec = str(TailAverage(2, 2, 0.5))  # support 3: fits from reported step 2 on
    s = realnet.averaging_sidetrip(run, 3, tmp_path / "avg", lr=1e-4, steps=3, report_steps=[1, 3], kernels=[spec],
                          bn_batches=1, train_eval_samples=32, val_samples=32, threads=1, progress=False)
    kres = s.kernels[spec]
    assert kres.skipped == [1] and [r.k for r in kres.results] == [3]
    assert kres.results[0].relative_l2 < 0.05  # Lemma 2 at a small lr: the average ~ its equivalent side-trip
    sched = s.schedules.select(s.schedules.kernel == spec)
    np.testing.assert_array_equal(sched.lr, qs.equivalent_schedule(TailAverage(2, 2, 0.5), np.full(3, 1e-4)))
