"""quadsgd.simulation: agreement with the pure-numpy twins, input validation, memory, reproducibility."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.linalg as sla

import quadsgd as qs
import quadsgd.simulation as S
from quadsgd.simulation import draw_normals, simulate
from quadsgd.simulation._reference import exact_event_times, reference_exact, reference_step
from quadsgd.simulation.exact import k_step_transition, one_step_matrices, sqrt_psd
from quadsgd.simulation.plan import make_plan

from .simtruth import step_system

KERNELS = (qs.Last(), qs.EMA(0.1), qs.TwoPoint(5), qs.SWA(4), qs.NPoint(3, 2),
           qs.Kernel([0.5, 0.0, 0.2, 0.3]), qs.EMA(0.3), qs.SWA(1))


def _models():
    rs = np.random.default_rng(3)
    A = rs.standard_normal((3, 3))
    nonnormal = qs.LinearModel.from_quadratic(A @ A.T + np.eye(3), np.diag([1.0, 0.3, 2.0]) + 0.1, lr=0.1,
                                              momentum=0.4)
    B = rs.standard_normal((40, 40)) / 6
    big = B @ B.T + 0.5 * np.eye(40)  # d > _DENSE_NUMBA_MAX_D: the BLAS path
    return {
        "diag": qs.LinearModel(np.array([1.0, 0.3, 0.05]), lr=0.3),
        "diag_mom": qs.LinearModel(np.array([1.0, 0.3, 0.05]), lr=0.3, momentum=0.6),
        "dense_small": qs.LinearModel(np.array([[1.0, 0.2], [0.2, 0.5]]), lr=0.3, momentum=0.5),
        "nonnormal": nonnormal,
        "dense_blas": qs.LinearModel(big, lr=0.5 / np.linalg.eigvalsh(big).max(), momentum=0.3),
    }


MODELS = _models()


def _lr_schedule(m, T):
    lr = np.full(T, m.lr)
    lr[T // 4: T // 2] = 0.6 * m.lr
    return lr


# =========================================================================== twins (step)
@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_step_matches_numpy_twin(name, dtype):
    m = MODELS[name]
    d, C, T = m.dim, 5, 37
    lr = _lr_schedule(m, T)
    u0 = np.linspace(1.0, 2.0, d)
    res = simulate(m, T, C, KERNELS, lr=lr, u0=u0, record_every=6, seed=11, dtype=dtype,
                   per_chain_loss=True, record_states=[0, 3])
    xi = draw_normals(11, C, T * d).reshape(C, T, d)
    cl, avg = reference_step(m.omega, m.loss_matrix(), u0, lr, m.momentum, KERNELS, res.times, xi,
                             dtype=dtype)
    tol = 1e-12 if dtype == np.float64 else 2e-6
    scale = np.abs(cl).max()
    np.testing.assert_allclose(res.chain_loss, cl, rtol=tol, atol=tol * scale)
    np.testing.assert_allclose(res.loss, cl.mean(axis=1), rtol=tol, atol=tol * scale)
    np.testing.assert_allclose(res.loss_std, cl.std(axis=1, ddof=1), rtol=1e-6, atol=tol * scale)
    np.testing.assert_allclose(res.final, avg[:, -1], rtol=tol, atol=tol * np.abs(avg).max())
    np.testing.assert_allclose(res.states, np.transpose(avg[:, :, [0, 3]], (0, 2, 1, 3)), rtol=tol,
                               atol=tol * np.abs(avg).max())
    assert res.final.dtype == dtype and res.states.dtype == dtype
    np.testing.assert_array_equal(res.times, [6, 12, 18, 24, 30, 36, 37])


def test_long_lag_kernels_match_twin_with_few_slots():
    # TwoPoint / SWA / NPoint with supports much longer than the record spacing and vice versa
    m = MODELS["diag_mom"]
    ks = (qs.TwoPoint(40), qs.SWA(30), qs.NPoint(4, 9), qs.TwoPoint(3))
    C, T, d = 3, 300, m.dim
    for every in (1, 7, 50, 300):
        res = simulate(m, T, C, ks, record_every=every, seed=2, per_chain_loss=True)
        xi = draw_normals(2, C, T * d).reshape(C, T, d)
        cl, avg = reference_step(m.omega, m.loss_matrix(), np.ones(d), np.full(T, m.lr), m.momentum, ks,
                                 res.times, xi)
        np.testing.assert_allclose(res.chain_loss, cl, rtol=1e-11, atol=1e-13)
        np.testing.assert_allclose(res.final, avg[:, -1], rtol=1e-11, atol=1e-13)


# =========================================================================== twins (exact)
def _exact_zeta(m, ks, times, lr, C, seed):
    E = exact_event_times(ks, times, lr)
    has_S = any(not isinstance(k, (qs.Last, qs.EMA)) and k.stride == 1 and k.point_weights.size >= 3
                and np.all(k.point_weights == k.point_weights[0]) for k in ks)
    p = 1 + (m.momentum != 0) + sum(isinstance(k, qs.EMA) for k in ks) + has_S
    z = draw_normals(seed, C, E.size * m.dim * p)
    return z.reshape(C, E.size, m.dim, p) if m.diagonal else z.reshape(C, E.size, p * m.dim)


@pytest.mark.parametrize("name", list(MODELS))
def test_exact_matches_numpy_twin(name):
    m = MODELS[name]
    d, C, T = m.dim, 4, 60
    lr = _lr_schedule(m, T)
    u0 = np.linspace(1.0, 2.0, d)
    res = simulate(m, T, C, KERNELS, lr=lr, u0=u0, record_every=7, seed=4, method="exact",
                   per_chain_loss=True, record_states=2)
    zeta = _exact_zeta(m, KERNELS, res.times, lr, C, 4)
    # (a) the same transition matrices: agreement to rounding
    plan = make_plan(KERNELS, res.times, "exact", C, d, 8, 2**30, 7, m.momentum != 0)
    has_S = any(sp.block for sp in plan.specs)

    def trans(k, lam):
        M, N = one_step_matrices(m, lam, plan.ema_a, has_S)
        A, Q = k_step_transition(M, N, k)
        return A, sqrt_psd(Q)

    cl, avg = reference_exact(m.omega, m.loss_matrix(), u0, lr, m.momentum, KERNELS, res.times, zeta,
                              transitions=trans)
    np.testing.assert_allclose(res.chain_loss, cl, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(res.final, avg[:, -1], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(res.states, np.transpose(avg[:, :, :2], (0, 2, 1, 3)), rtol=1e-10, atol=1e-12)
    # (b) brute-force matrices (M^k by products, Q_k by the plain sum): the symmetric square root of a
    # rank-deficient Q_k (k < state size) turns rounding into ~sqrt(eps) differences
    cl2, avg2 = reference_exact(m.omega, m.loss_matrix(), u0, lr, m.momentum, KERNELS, res.times, zeta)
    np.testing.assert_allclose(res.chain_loss, cl2, rtol=1e-6, atol=1e-8)


class _TruncatedEMA(qs.AveragingKernel):
    """Defined only here: geometric weights a(1-a)^j on n points spaced ``stride`` apart, renormalised."""

    def __init__(self, a, n, stride):
        self.a, self.n, self.stride = a, n, stride

    @property
    def point_weights(self):
        w = self.a * (1.0 - self.a) ** np.arange(self.n)
        return w / w.sum()


class _Window(qs.AveragingKernel):
    """Defined only here: the uniform average of the last W iterates (tracked by window sums when exact)."""

    def __init__(self, W):
        self.W = W

    @property
    def point_weights(self):
        return np.full(self.W, 1.0 / self.W)


@pytest.mark.parametrize("method", ["step", "exact"])
def test_kernels_defined_only_in_this_module_are_simulated(method):
    """The simulator reads kernels through ``tracking()``: new kernel classes need no library change."""
    m = MODELS["diag_mom"]
    ks = (qs.Last(), _TruncatedEMA(0.3, 4, 3), _Window(5), qs.EMA(0.2))
    d, C, T = m.dim, 3, 40
    u0 = np.linspace(1.0, 2.0, d)
    res = simulate(m, T, C, ks, u0=u0, record_every=4, seed=6, method=method, per_chain_loss=True)
    lr = np.full(T, m.lr)
    if method == "step":
        xi = draw_normals(6, C, T * d).reshape(C, T, d)
        cl, avg = reference_step(m.omega, m.loss_matrix(), u0, lr, m.momentum, ks, res.times, xi)
    else:
        E = exact_event_times(ks, res.times, lr)
        p = 1 + 1 + 1 + 1  # u, b, one EMA, the window sum S of _Window(5)
        zeta = draw_normals(6, C, E.size * d * p).reshape(C, E.size, d, p)
        plan = make_plan(ks, res.times, "exact", C, d, 8, 2**30, 4, True)
        assert plan.has_S and plan.ema_a.tolist() == [0.2]

        def trans(k, lam):
            M, N = one_step_matrices(m, lam, plan.ema_a, True)
            A, Q = k_step_transition(M, N, k)
            return A, sqrt_psd(Q)

        cl, avg = reference_exact(m.omega, m.loss_matrix(), u0, lr, m.momentum, ks, res.times, zeta,
                                  transitions=trans)
    np.testing.assert_allclose(res.chain_loss, cl, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(res.final, avg[:, -1], rtol=1e-11, atol=1e-13)


def test_k_step_transition_against_brute_force_and_lyapunov():
    m = MODELS["nonnormal"]
    M, N = step_system(m)
    for k in (1, 2, 3, 7, 64, 1000):
        A, Q = k_step_transition(M, N, k)
        P = np.eye(M.shape[0])
        Qb = np.zeros_like(M)
        for _ in range(k):
            Qb += P @ N @ N.T @ P.T
            P = M @ P
        np.testing.assert_allclose(A, P, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(Q, Qb, rtol=1e-9, atol=1e-12)
    # k -> infinity: the stationary covariance (scipy Lyapunov)
    A, Q = k_step_transition(M, N, 1 << 20)
    np.testing.assert_allclose(Q, sla.solve_discrete_lyapunov(M, N @ N.T), rtol=1e-8, atol=1e-10)
    # and the simulator's one-step matrices are the (u, buf) system of the model
    M2, N2 = one_step_matrices(m, m.lr, [], False)
    np.testing.assert_allclose(M2, M, rtol=0, atol=1e-15)
    np.testing.assert_allclose(N2, N, rtol=0, atol=0)


# =========================================================================== paths agree
def test_diagonal_and_dense_paths_agree():
    om = np.array([1.0, 0.3, 0.05])
    for beta in (0.0, 0.7):
        md = qs.LinearModel(om, lr=0.3, momentum=beta)
        mD = qs.LinearModel(np.diag(om), lr=0.3, momentum=beta)
        a = simulate(md, 50, 6, KERNELS, record_every=5, seed=8)
        b = simulate(mD, 50, 6, KERNELS, record_every=5, seed=8)
        np.testing.assert_allclose(a.final, b.final, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(a.loss, b.loss, rtol=1e-12)
    # BLAS path (d > 32) against the diagonal path
    from quadsgd.simulation.step import _DENSE_NUMBA_MAX_D

    assert _DENSE_NUMBA_MAX_D < 40
    om = np.linspace(0.1, 1.0, 40)
    a = simulate(qs.LinearModel(om, lr=0.5), 30, 4, KERNELS, record_every=3, seed=1)
    b = simulate(qs.LinearModel(np.diag(om), lr=0.5), 30, 4, KERNELS, record_every=3, seed=1)
    np.testing.assert_allclose(a.final, b.final, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["diag_mom", "nonnormal", "dense_blas"])
@pytest.mark.parametrize("method", ["step", "exact"])
def test_float32_tracks_float64(name, method):
    m = MODELS[name]
    a = simulate(m, 200, 8, KERNELS, record_every=20, seed=3, method=method)
    b = simulate(m, 200, 8, KERNELS, record_every=20, seed=3, dtype=np.float32, method=method)
    assert b.final.dtype == np.float32 and b.loss.dtype == np.float64
    np.testing.assert_allclose(b.final, a.final, rtol=0, atol=2e-4 * np.abs(a.final).max())
    np.testing.assert_allclose(b.loss, a.loss, rtol=2e-4)


# =========================================================================== reproducibility
def _digest(res):
    h = hashlib.sha256()
    for x in (res.loss, res.loss_std, res.final, res.chain_loss):
        h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()


_REPRO_SCRIPT = textwrap.dedent("""
    import hashlib, numpy as np, quadsgd as qs
    from quadsgd.simulation import simulate
    ks = (qs.Last(), qs.EMA(0.05), qs.TwoPoint(7), qs.SWA(5))
    rs = np.random.default_rng(0)
    B = rs.standard_normal((40, 40)) / 6
    models = [qs.LinearModel(np.linspace(0.05, 1, 6), lr=0.5, momentum=0.3),
              qs.LinearModel(np.array([[1.0, 0.2], [0.2, 0.5]]), lr=0.3),
              qs.LinearModel(B @ B.T + 0.5 * np.eye(40), lr=0.05, momentum=0.5)]
    h = hashlib.sha256()
    for m in models:
        for method in ("step", "exact"):
            r = simulate(m, 120, 37, ks, record_every=10, seed=5, method=method, per_chain_loss=True)
            for x in (r.loss, r.loss_std, r.final, r.chain_loss):
                h.update(np.ascontiguousarray(x).tobytes())
    print(h.hexdigest())
""")


def test_bit_identical_across_thread_counts():
    """NUMBA_NUM_THREADS=1 and =2 in fresh processes give the same bytes (and the same as here)."""
    digests = []
    for n in (1, 2):
        env = dict(os.environ, NUMBA_NUM_THREADS=str(n))
        out = subprocess.run([sys.executable, "-c", _REPRO_SCRIPT], env=env, capture_output=True, text=True,
                             timeout=600, cwd=os.path.dirname(os.path.dirname(__file__)))
        assert out.returncode == 0, out.stderr
        digests.append(out.stdout.strip())
    assert digests[0] == digests[1]
    ns = {}
    lines = _REPRO_SCRIPT.replace("print(h.hexdigest())", "digest = h.hexdigest()")
    exec(compile(lines, "<repro>", "exec"), ns)
    assert ns["digest"] == digests[0]


def test_bit_identical_for_any_segmentation_and_chain_count():
    m = qs.LinearModel(np.linspace(0.05, 1, 5), lr=0.5, momentum=0.5)
    ks = (qs.Last(), qs.EMA(0.05), qs.TwoPoint(7), qs.SWA(5), qs.NPoint(3, 4))
    for method in ("step", "exact"):
        ref = simulate(m, 97, 9, ks, record_every=4, seed=12, method=method, per_chain_loss=True)
        for seg in (1, 3, 50):
            r = simulate(m, 97, 9, ks, record_every=4, seed=12, method=method, per_chain_loss=True,
                         _segment_steps=seg)
            assert _digest(r) == _digest(ref)
        r = simulate(m, 97, 9, ks, record_every=4, seed=12, method=method, per_chain_loss=True, progress=True)
        assert _digest(r) == _digest(ref)
        # a chain's trajectory does not depend on how many other chains run
        r4 = simulate(m, 97, 4, ks, record_every=4, seed=12, method=method, per_chain_loss=True)
        assert np.array_equal(r4.final, ref.final[:, :4])
        assert np.array_equal(r4.chain_loss, ref.chain_loss[:, :4])
    import numba

    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        r1 = simulate(m, 97, 9, ks, record_every=4, seed=12, per_chain_loss=True)
    finally:
        numba.set_num_threads(old)
    assert _digest(r1) == _digest(simulate(m, 97, 9, ks, record_every=4, seed=12, per_chain_loss=True))


# =========================================================================== results
def test_result_fields_and_options():
    m = MODELS["diag"]
    res = simulate(m, 10, 3, qs.EMA(0.5), record_every=4, seed=None)
    assert isinstance(res, qs.SimulationResult)
    assert res.kernels == (qs.EMA(0.5),)
    np.testing.assert_array_equal(res.times, [4, 8, 10])
    assert res.loss.shape == (1, 3) and res.final.shape == (1, 3, 3)
    assert res.chain_loss is None and res.states is None and res.state_chains is None
    assert isinstance(res.seed, int) and res.method == "step" and res.lr == m.lr
    assert res.loss_sem.shape == res.loss.shape
    assert res.kernel_index(qs.EMA(0.5)) == 0
    with pytest.raises(ValueError, match="not among"):
        res.kernel_index(qs.Last())
    r = simulate(m, 10, 5, (qs.Last(), qs.SWA(3)), record_states=[4, 1], per_chain_loss=True, seed=1)
    assert r.states.shape == (2, 2, 10, 3)
    np.testing.assert_array_equal(r.state_chains, [4, 1])
    np.testing.assert_array_equal(r.states[:, :, -1], r.final[:, [4, 1]])
    np.testing.assert_allclose(r.chain_loss.mean(axis=1), r.loss, rtol=1e-14)
    one = simulate(m, 5, 1, seed=0)
    assert np.all(one.loss_std == 0.0)


def test_trackers_memory_is_a_few_states():
    """TwoPoint(1e5) / SWA(1e5) over 1e3 chains x 1e3 coordinates with records >= the support apart:
    one or two accumulator slots (plan only: the run itself would take minutes)."""
    times = S.record_times(4 * 10**5, 10**5)
    for k in (qs.TwoPoint(10**5), qs.SWA(10**5), qs.NPoint(3, 5 * 10**4)):
        for method in ("step", "exact"):
            plan = make_plan((qs.Last(), k), times, method, 1000, 1000, 8, 2**30, 10**5, False)
            assert plan.n_slots <= 2
    with pytest.raises(ValueError, match=r"record_every=1 .*TwoPoint\(delta=100000\)"):
        make_plan((qs.TwoPoint(10**5),), S.record_times(10**6, 1), "step", 1000, 1000, 8, 2**30, 1, False)
    m = qs.LinearModel(np.ones(1000), lr=0.5)
    with pytest.raises(ValueError, match="record_every"):
        simulate(m, 10**6, 1000, (qs.SWA(10**5),), record_every=10)


def test_huge_uniform_kernels_cost_no_weight_arrays():
    """SWA(1e9) / NPoint(1e7, 3): the plan never materialises the weights (O(1) memory in the support),
    and a window longer than the closed-form threshold averages correctly: with records every step,
    SWA(W) at tau is ((W - tau) u0 + sum_{t<=tau} u_t) / W, u_t read from the Last kernel's states."""
    import tracemalloc

    from quadsgd.simulation import plan as P

    times = S.record_times(4 * 10**9, 10**9)
    tracemalloc.start()
    try:
        for k in (qs.SWA(10**9), qs.NPoint(10**7, 3)):
            for method in ("step", "exact"):
                plan = make_plan((qs.Last(), k), times, method, 10, 10, 8, 2**30, 10**9, False)
                assert plan.n_slots <= 2
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20
    W = 2 * P._UNIFORM_DENSE_MAX  # closed-form weights and suffix sums
    m = qs.LinearModel(np.array([0.5, 0.2]), lr=0.3)
    u0 = np.array([1.0, 0.0])
    for method in ("step", "exact"):
        r = simulate(m, 30, 3, (qs.Last(), qs.SWA(W)), u0=u0, seed=2, method=method, record_states=3)
        u = r.states[0]  # (chains, R, d), t = 1..30
        tau = r.times.astype(float)[None, :, None]
        want = ((W - tau) * u0 + np.cumsum(u, axis=1)) / W
        np.testing.assert_allclose(r.states[1], want, rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(r.states[1][..., 1], np.cumsum(u[..., 1], axis=1) / W, rtol=1e-10)


def test_long_delta_run_uses_few_slots_and_matches_twin():
    m = qs.LinearModel(np.array([0.5, 0.01]), lr=0.5)
    T, C = 6000, 2
    ks = (qs.TwoPoint(2000), qs.SWA(1500))
    res = simulate(m, T, C, ks, record_every=2000, seed=9, per_chain_loss=True,
                   memory_limit=3 * C * 2 * 8)  # at most 3 state copies in all
    xi = draw_normals(9, C, T * 2).reshape(C, T, 2)
    cl, avg = reference_step(m.omega, m.omega, np.ones(2), np.full(T, m.lr), 0.0, ks, res.times, xi)
    np.testing.assert_allclose(res.chain_loss, cl, rtol=1e-10)


def test_exact_piecewise_lr_and_too_many_pieces():
    m = MODELS["diag"]
    lr = np.where(np.arange(100) < 50, 0.3, 0.1)
    a = simulate(m, 100, 4, lr=lr, method="exact", seed=0)
    assert a.loss.shape == (1, 100)
    lr = 0.1 + 0.1 * np.random.default_rng(0).random(5000)
    with pytest.raises(ValueError, match="pieces"):
        simulate(m, 5000, 2, lr=lr, method="exact")


# =========================================================================== validation
@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=0), "steps"),
    (dict(steps=-3), "steps"),
    (dict(steps=2.5), "steps"),
    (dict(steps=True), "steps"),
    (dict(chains=0), "chains"),
    (dict(chains=1.5), "chains"),
    (dict(lr=np.full(9, 0.1)), "lr"),
    (dict(lr=np.full((10, 1), 0.1)), "lr"),
    (dict(lr=5.0), "lr"),
    (dict(lr=np.r_[np.full(9, 0.1), 5.0]), r"lr\[9\]"),
    (dict(lr=np.r_[np.full(9, 0.1), -0.1]), r"lr\[9\]"),
    (dict(lr=np.r_[np.full(9, 0.1), np.nan]), "lr"),
    (dict(method="euler"), "method"),
    (dict(record_every=0), "record_every"),
    (dict(record_every=11), "record_every"),
    (dict(dtype=np.float16), "dtype"),
    (dict(dtype=np.int64), "dtype"),
    (dict(dtype="complex128"), "dtype"),
    (dict(dtype="nonsense"), "dtype"),
    (dict(kernels=()), "kernels"),
    (dict(kernels=("ema",)), "kernels"),
    (dict(u0=np.ones(2)), "u0"),
    (dict(u0=np.array([1.0, np.inf, 0.0])), "u0"),
    (dict(seed=-1), "seed"),
    (dict(seed=1.5), "seed"),
    (dict(record_states=[7]), "record_states"),
    (dict(record_states=[1, 1]), "record_states"),
])
def test_bad_input_raises_value_error_naming_it(kwargs, match):
    m = MODELS["diag"]
    args = dict(steps=10, chains=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        simulate(m, **args)


def test_bad_model_and_undefined_loss():
    with pytest.raises(ValueError, match="LinearModel"):
        simulate(np.eye(2), 10, 2)
    m = qs.LinearModel(np.array([[1.0, 0.5], [0.0, 1.0]]), lr=0.1)  # non-symmetric, no hessian
    with pytest.raises(ValueError, match="hessian"):
        simulate(m, 10, 2)
