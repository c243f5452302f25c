r"""Exact transient theory: the expected loss curve of an averaged iterate, and equivalent lr schedules.

* :func:`expected_loss` -- :math:`E[\tfrac12\hat u_t^\top H\hat u_t]` for t = 0..T under any lr schedule,
  from first and second moments propagated exactly by the compiled kernels of
  :mod:`quadsgd.theory._moments`. The kernel says how its average is kept
  (:meth:`AveragingKernel.tracking <quadsgd.kernels.AveragingKernel.tracking>`): the last iterate, a
  geometric recursion (EMA: a Markov augmentation of the state) or weighted points at a stride; a
  uniform window of consecutive iterates takes an O(dT) block-sum path.
* :func:`equivalent_schedule` -- Table 1 / Lemma 2: the lr schedule whose last iterate equals the
  kernel average, from :meth:`AveragingKernel.cumulative <quadsgd.kernels.AveragingKernel.cumulative>`.
"""
from __future__ import annotations

import math

import numpy as np

from sgdtraj.arguments import check_array, check_int, check_lr_schedule, check_size

from ..kernels import AveragingKernel, Last
from .stationary import _check_model_kernel

__all__ = ["expected_loss", "equivalent_schedule"]


def _check_kernel(kernel):
    if not isinstance(kernel, AveragingKernel):
        raise ValueError(f"kernel must be an averaging kernel (qs.Last(), qs.EMA(...), ...), got {kernel!r}")


def equivalent_schedule(kernel: AveragingKernel, lr, steps: int | None = None) -> np.ndarray:
    r"""Learning-rate schedule whose last iterate equals the kernel average (Table 1, generalised; Lemma 2).

    With a constant gradient per batch (Lemma 2), the average :math:`\sum_m \mu_m\theta_{t-m}`
    equals the end point of a side-trip from :math:`\theta_{t-k}` whose step taken ``r`` steps
    before the averaging time has learning rate

    .. math:: \lambda'_{-r} = \lambda_{-r}\sum_{m<r}\mu_m,\qquad r = 1..k .

    (SWA window W: :math:`\lambda\min(r,W)/W`; two-point: :math:`\lambda/2` for :math:`r\le\Delta`;
    EMA: :math:`\lambda(1-(1-a)^r)` -- the paper's Table 1 EMA row is off by one step against its
    own proof, eq. 29.)

    kernel: any averaging kernel. lr: array of shape (k,), the base lr of the last k steps
    (``lr[-1]`` is the last step), or a scalar together with ``steps=k`` (``steps`` defaults to the
    kernel's support; a kernel of infinite support, e.g. EMA, needs it). ``steps``: an integer >= 1 (the
    rule of :func:`sgdtraj.arguments.check_int`: 10.0 is 10, 2.5 / True / "10" are refused).
    Returns: array of shape (k,), ``out[-r]`` the equivalent lr of the step r steps before the end.
    Cost O(k) (the kernel's ``cumulative`` is a closed form for SWA, TwoPoint, NPoint and EMA); an output
    beyond 2 GiB (e.g. a scalar lr with the default steps = support of ``SWA(10**12)``) is refused with a
    ValueError naming ``steps``.
    """
    _check_kernel(kernel)
    if isinstance(lr, (str, bytes)) or isinstance(lr, (bool, np.bool_)):
        raise ValueError(f"lr must be a non-negative real number or 1-D array, got {lr!r}")
    lr_arr = check_array("lr", lr, ndim=(0, 1), finite=False, square=False, nonempty=False)
    if lr_arr.ndim == 0:
        if steps is None:
            if math.isinf(kernel.support):
                raise ValueError(f"steps must be given for a scalar lr with the kernel {kernel!r} "
                                 "(infinite support)")
            check_size("steps", kernel.support, f"the schedule over the support of {kernel!r} (steps defaults "
                       "to the support)", hint="pass steps= (the number of last steps you need)")
            steps = int(kernel.support)
        steps = check_int("steps", steps, 1)
        check_size("steps", steps, "the equivalent schedule")
        lr_arr = np.full(steps, float(lr_arr))
    elif lr_arr.size == 0:
        raise ValueError(f"lr must be a scalar or a non-empty 1-D array, got shape {lr_arr.shape}")
    elif steps is not None and check_int("steps", steps, 1) != lr_arr.size:
        raise ValueError(f"steps = {steps} does not match len(lr) = {lr_arr.size}")
    if not np.all(np.isfinite(lr_arr)) or np.any(lr_arr < 0):
        raise ValueError("lr must be finite and non-negative")
    k = lr_arr.size
    r = np.arange(k, 0, -1)  # position i (0-based) is r = k - i steps before the averaging time
    return lr_arr * kernel.cumulative(r)


# ====================================================================================
# Exact transient expected loss
# ====================================================================================

def _check_lr_schedule(m, steps, lr):
    """(steps, lrs (steps,)) after checking steps >= 1 and every lr in [0, m.lr_bound) (:func:`check_lr_schedule`)."""
    steps = check_int("steps", steps, 1)
    check_size("steps", steps + 1, "the loss curve (steps + 1 values)")
    if lr is None:
        return steps, np.full(steps, m.lr)
    lrs, _ = check_lr_schedule(lr, steps, m.lr_bound)
    return steps, lrs


def _tracked_points(tracking, steps: int):
    """(stride D, point weights w, EMA decay a) for the moment kernels: a > 0 selects the Markov EMA path.

    Only the points at lags <= steps can see the chain move: the K = steps // D + 1 first points are kept
    and all later ones (they sit at u0 for every t <= steps) are merged into one point of their total
    weight at lag K D > steps -- exact, and O(steps / D) memory for a kernel of any support (SWA(10**12)).
    """
    if tracking.kind == "last":
        return 1, np.ones(1), 0.0
    if tracking.kind == "geometric":
        a = float(tracking.decay)
        return 1, np.ones(1), a if a < 1.0 else 0.0
    if tracking.kind == "points":
        D, n = int(tracking.stride), int(tracking.n)
        K = steps // D + 1
        if K >= n:
            return D, np.ascontiguousarray(tracking.weight_array(), dtype=np.float64), 0.0
        if tracking.weights is None:  # uniform 1/n: nothing of size n is formed
            w = np.full(K + 1, 1.0 / n)
            w[K] = (n - K) / n
        else:
            full = np.asarray(tracking.weights, dtype=np.float64)
            w = np.concatenate([full[:K], [full[K:].sum()]])
        return D, w, 0.0
    raise ValueError(f"expected_loss cannot track an average of kind {tracking.kind!r} "
                     "(known: 'last', 'geometric', 'points')")


def expected_loss(m, kernel: AveragingKernel = Last(), steps: int | None = None, lr=None, u0=None) -> np.ndarray:
    r"""Exact expected loss :math:`E[\tfrac12\hat u_t^\top H\hat u_t]` of the averaged iterate for t = 0..steps.

    Starts from a deterministic :math:`u_0` (default ones) with the momentum buffer at 0; for
    :math:`t < 0` the chain sits at :math:`u_0` (an EMA starts at :math:`e_0 = u_0`, window
    averages pad with :math:`u_0`). First and second moments are propagated exactly (no sampling):

    .. math:: E\,\ell_t = \tfrac12\,\bar u_t^\top H\bar u_t + \tfrac12\mathrm{tr}(H\,\mathrm{Cov}\,\hat u_t).

    steps: an integer >= 1 (10.0 is 10; 2.5, True, "10" are refused). lr: None (constant ``m.lr``), a
    number, or an array of shape (steps,) (lr of step t -> t+1); every value finite and in
    [0, ``m.lr_bound``) -- a step with lr = 0 is allowed (frozen), the same rule as :func:`quadsgd.simulate`.
    How the average is followed comes from ``kernel.tracking()``. Cost for diagonal omega: O(d T) for
    the last iterate, a geometric (EMA) average, two points, and (SGD) a uniform window of W
    consecutive iterates (SWA, NPoint(n, 1), a uniform ``Kernel``) -- the window sums use block
    suffix/prefix sums, so nothing is subtracted -- and O(d T n) for n weighted points at a stride
    (NPoint, an arbitrary ``Kernel``: its support) and for a uniform window with momentum.
    Dense diagonalizable omega: the same per pair of eigen-directions, O(d^2 T n). Only the points of a
    finite kernel at lags <= steps are propagated (the others sit at u0): a kernel of any support
    (``TwoPoint(10**9)``, ``SWA(10**12)``) costs what its first ``steps`` lags cost.
    Returns: shape (steps + 1,).
    """
    _check_model_kernel(m, kernel)
    if steps is None:
        raise ValueError("steps must be given (an integer >= 1)")
    steps, lrs = _check_lr_schedule(m, steps, lr)
    d = m.dim
    if u0 is None:
        u0 = np.ones(d)
    u0 = check_array("u0", u0, shape=(d,))
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        out = _expected_loss(m, kernel, steps, lrs, u0)
    if not np.all(np.isfinite(out)):
        raise ValueError("expected_loss: the loss curve is not finite in float64 (u0, lr or the loss matrix hold "
                         "values whose squares overflow); rescale the model or u0")
    return out


def _expected_loss(m, kernel, steps, lrs, u0):
    """The moment propagation of :func:`expected_loss` (arguments already validated)."""
    from . import _moments

    d = m.dim
    H = m.loss_matrix()
    tracking = kernel.tracking()
    D, w, a = _tracked_points(tracking, steps)
    beta = m.momentum
    if m.diagonal:
        lam = np.ascontiguousarray(m.omega)
        pairs = np.stack([np.arange(d), np.arange(d)], axis=1).astype(np.int64)
        sig = np.ones(d)
        hw = np.asarray(H, dtype=np.float64)
        W = tracking.uniform_window  # >= 2: a uniform window of consecutive iterates (block-sum paths)
        if beta == 0.0 and W >= 2:
            cov = _moments.sgd_diag_cov_loss_swa(lam, hw, lrs, W, 64)  # O(d T)
        elif beta == 0.0:
            cov = _moments.sgd_diag_cov_loss(lam, hw, lrs, D, w, a, 64)
        else:
            cov = _moments.cov_loss_curves(lam, pairs, sig, hw, lrs, beta, D, w, a, 64)
        if W >= 2:
            mean = _moments.mean_loss_diag_swa(lam, hw, u0, lrs, beta, W)
        else:
            mean = _moments.mean_loss_diag(lam, hw, u0, lrs, beta, D, w, a)
        return mean + cov
    lam, V, Vinv, cond = m._eig
    if Vinv is None or cond >= 1e8:
        raise ValueError(f"expected_loss needs a diagonalizable omega; its eigenvector matrix has "
                         f"condition number {cond:.3g}")
    Sig = Vinv @ Vinv.conj().T
    Hm = H if H.ndim == 2 else np.diag(H)
    Hp = V.conj().T @ Hm @ V  # loss matrix in eigen-coordinates
    iu, ju = np.triu_indices(d)
    pairs = np.stack([iu, ju], axis=1).astype(np.int64)
    sig = np.ascontiguousarray(Sig[iu, ju])
    hw = np.ascontiguousarray(np.where(iu == ju, 1.0, 2.0) * Hp[ju, iu])
    cov = _moments.cov_loss_curves(np.ascontiguousarray(lam), pairs, sig, hw, lrs, beta, D, w, a, 64)
    mhat = _moments.mean_curves(np.ascontiguousarray(lam), (Vinv @ u0).astype(np.complex128), lrs, beta, D, w, a)
    mean = 0.5 * np.einsum("ti,ti->t", mhat.conj(), mhat @ Hp.T).real
    return mean + cov
