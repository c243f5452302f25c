r"""Exact stationary and transient theory of averaged SGD iterates in the linear model.

See the paper's Appendix A (eq. 14-21, Table 1) and Lemma 1 (eq. 13).
"""
from __future__ import annotations

import numpy as np

from .kernels import AveragingKernel, EMA

__all__ = ["equivalent_schedule"]


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
    (``lr[-1]`` is the last step), or a scalar together with ``steps=k``.
    Returns: array of shape (k,), ``out[-r]`` the equivalent lr of the step r steps before the end.
    """
    if not isinstance(kernel, AveragingKernel):
        raise ValueError(f"kernel must be an averaging kernel (qs.Last(), qs.EMA(...), ...), got {kernel!r}")
    lr_arr = np.asarray(lr, dtype=np.float64)
    if lr_arr.ndim == 0:
        if steps is None:
            if isinstance(kernel, EMA):
                raise ValueError("steps must be given for a scalar lr with an EMA kernel (infinite support)")
            steps = int(kernel.support)
        if int(steps) < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        lr_arr = np.full(int(steps), float(lr_arr))
    elif lr_arr.ndim != 1 or lr_arr.size == 0:
        raise ValueError(f"lr must be a scalar or a non-empty 1-D array, got shape {lr_arr.shape}")
    elif steps is not None and int(steps) != lr_arr.size:
        raise ValueError(f"steps = {steps} does not match len(lr) = {lr_arr.size}")
    if not np.all(np.isfinite(lr_arr)) or np.any(lr_arr < 0):
        raise ValueError("lr must be finite and non-negative")
    k = lr_arr.size
    r = np.arange(k, 0, -1)  # position i (0-based) is r = k - i steps before the averaging time
    return lr_arr * kernel.cumulative(r)
