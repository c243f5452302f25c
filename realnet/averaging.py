r"""Averaging in your own training loop: any quadsgd kernel as an averaged model, and its equivalent
learning-rate schedule as a scheduler (Sandler et al., Appendix A.2, Lemma 2 and Table 1).

* :class:`KernelAveragedModel` -- a ``torch.nn.Module`` holding a deep copy of your model whose parameters are
  :math:`\hat\theta_t = \sum_k \mu_k\theta_{t-k}` for any :mod:`quadsgd` kernel (or spec string such as
  ``"twopoint:100"``), at a chosen step ``at_step`` or continuously (``at_step=None``). Conventions of
  :class:`torch.optim.swa_utils.AveragedModel`: ``avg.module``, ``avg.update_parameters(model)`` after every
  optimizer step, ``use_buffers``, works with :func:`torch.optim.swa_utils.update_bn`.
* :class:`EquivalentScheduleLR` -- a :class:`torch.optim.lr_scheduler.LRScheduler` whose last iterate equals
  that average when each batch's gradient is constant (Lemma 2): the step :math:`r` steps before :math:`T` gets
  the base lr times :math:`\sum_{m<r}\mu_m` (:func:`quadsgd.equivalent_schedule`).

Indexing: :math:`\theta_s` is the model when the object is built (``start_step`` s, default 0; for the scheduler
the base scheduler's ``last_epoch``); the k-th ``update_parameters`` call sees :math:`\theta_{s+k}`. A finite
kernel must fit, ``support - 1 <= at_step - start_step``; an EMA starts at :math:`e_s = \theta_s`. With these
conventions the average at ``T`` and the equivalent schedule over steps ``s+1..T`` agree exactly under Lemma 2.

Memory (P = averaged elements): none extra for ``last``, EMA and points with ``at_step``; with ``at_step=None``
a ring of (n-1)s iterates for n points at stride s, W iterates plus a float64 sum for an SWA window W. Extra
memory above ``memory_limit`` bytes raises ValueError. Integer buffers are copied, never averaged.
``state_dict()`` is complete (a resumed run continues bit-identically) and loads with ``weights_only=True``.
How each kernel is kept and the arithmetic: ``docs/averaging-api.md``.
"""
from __future__ import annotations

import copy
import math
import weakref
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from quadsgd.kernels import AveragingKernel, parse_kernel
from sgdtraj.arguments import check_bool, check_int

__all__ = ["KernelAveragedModel", "EquivalentScheduleLR", "unwrap_model", "equivalent_multipliers"]

_FORMAT = 1
_DEFAULT_MEMORY_LIMIT = 4 * 2 ** 30


# =============================================================================================
# Shared helpers
# =============================================================================================
def _as_kernel(kernel) -> AveragingKernel:
    """A quadsgd kernel from a kernel or its spec string; ValueError naming ``kernel`` otherwise."""
    if isinstance(kernel, AveragingKernel):
        return kernel
    if isinstance(kernel, str):
        try:
            return parse_kernel(kernel)
        except ValueError as e:
            raise ValueError(f"kernel={kernel!r}: {e}") from None
    raise ValueError("kernel must be a quadsgd averaging kernel (qs.TwoPoint(100), qs.EMA(0.01), ...) or its "
                     f"spec string ('twopoint:100', 'ema:0.01', 'swa:50', 'npoint:3:20', 'kernel:0.5,0.5'), "
                     f"got {kernel!r}")


def _check_steps(kernel: AveragingKernel, at_step, start_step, at_name: str = "at_step") -> tuple[int, int]:
    """Validated (at_step, start_step): at_step > start_step >= 0 and a finite kernel that fits."""
    start = check_int("start_step", start_step, 0)
    T = check_int(at_name, at_step, 1)
    if T <= start:
        raise ValueError(f"{at_name}={T} is in the past: the model at construction is already at step "
                         f"start_step={start}; {at_name} must be >= {start + 1}")
    support = kernel.support
    if math.isfinite(support) and int(support) - 1 > T - start:
        raise ValueError(
            f"kernel {kernel} needs the iterates theta_{{T-{int(support) - 1}}}..theta_T (support {int(support)} "
            f"steps), longer than {at_name}={T} allows from start_step={start} (theta_{start}..theta_{T}, "
            f"{T - start + 1} iterates): use {at_name} >= {start + int(support) - 1} or a shorter kernel")
    return T, start


def equivalent_multipliers(kernel, at_step: int, start_step: int = 0) -> np.ndarray:
    r"""Lemma 2 / Table 1 multipliers of steps ``start_step+1 .. at_step``; shape (at_step - start_step,).

    ``out[i - start_step - 1]`` = :math:`\sum_{m<r}\mu_m` with :math:`r = T - i + 1` (step T: r = 1),
    i.e. ``qs.equivalent_schedule(kernel, ones)`` -- the same call on the same array, so
    ``base * out`` equals ``qs.equivalent_schedule(kernel, base)`` bit for bit.
    """
    k = _as_kernel(kernel)
    T, s = _check_steps(k, at_step, start_step)
    return np.asarray(k.cumulative(np.arange(T - s, 0, -1)), dtype=np.float64)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel (``.module``) and torch.compile
    (``._orig_mod``) wrappers, in any nesting."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
            continue
        inner = getattr(model, "_orig_mod", None) if isinstance(model, nn.Module) else None
        if isinstance(inner, nn.Module):
            model = inner
            continue
        return model


def _is_float(t: torch.Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulator dtype of a running sum: float64 (complex128 for complex tensors)."""
    return torch.complex128 if dtype.is_complex else torch.float64


def _mean_step(dst: list, src: list, divisor: float, in_place: bool = False) -> None:
    r"""Running weighted mean: ``dst += (src - dst) / divisor`` (a copy when divisor == 1).

    in_place: ``lerp(dst, src, 1/divisor)`` instead -- no temporary (one rounding of 1/divisor more).
    """
    if divisor == 1.0:
        torch._foreach_copy_(dst, src)
        return
    if in_place:
        torch._foreach_lerp_(dst, src, 1.0 / divisor)
        return
    diff = torch._foreach_sub(src, dst)
    torch._foreach_div_(diff, divisor)
    torch._foreach_add_(dst, diff)


_CHUNK = 1 << 16  # elements per chunk of a mixed-dtype CPU operation (cast in cache, then same-dtype op)


def _cpu_mixed(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Mixed-dtype elementwise ops are not vectorised on CPU: there, cast chunk by chunk instead."""
    return a.device.type == "cpu" and a.dtype != b.dtype


def _acc_(S: torch.Tensor, x: torch.Tensor, alpha: float) -> None:
    """``S += alpha * x`` for a flat accumulator S (float64) and a flat x of any float dtype."""
    if not _cpu_mixed(S, x):
        S.add_(x, alpha=alpha)
        return
    for a in range(0, S.numel(), _CHUNK):
        S[a:a + _CHUNK].add_(x[a:a + _CHUNK].to(S.dtype), alpha=alpha)


def _sum_rows_(S: torch.Tensor, ring: torch.Tensor) -> None:
    """``S = ring.sum(0)`` accumulated in S's dtype."""
    if not _cpu_mixed(S, ring):
        torch.sum(ring, dim=0, dtype=S.dtype, out=S)
        return
    for a in range(0, S.numel(), _CHUNK):
        torch.sum(ring[:, a:a + _CHUNK].to(S.dtype), dim=0, out=S[a:a + _CHUNK])


def _mean_into_(dst: list, sums: list, W: int) -> None:
    """``dst[j] = sums[j] / W``, the accumulator-precision mean rounded once to dst's dtype."""
    for sv, d in zip(sums, dst):
        if not _cpu_mixed(sv, d) or not d.is_contiguous():
            torch.div(sv, W, out=d)
            continue
        df, sf = d.view(-1), sv.reshape(-1)
        for a in range(0, df.numel(), _CHUNK):
            df[a:a + _CHUNK].copy_(sf[a:a + _CHUNK] / W)


def _divisors(weights: np.ndarray) -> np.ndarray:
    """Divisors d_k of the running weighted mean over chronologically ordered non-zero weights; (n,)."""
    w = np.asarray(weights, dtype=np.float64)
    if np.all(w == w[0]):
        return np.arange(1, w.size + 1, dtype=np.float64)  # exact integers: AveragedModel's arithmetic
    d = np.cumsum(w) / w
    d[0] = 1.0
    return d


# =============================================================================================
# Trackers: how each kind of kernel tracking keeps the average (chosen once from kernel.tracking())
# =============================================================================================
class _GroupStore:
    """The averaged tensors grouped by dtype, and the ring / running-sum buffers of sliding windows.

    Buffers are registered on the averaged model ``host`` passed to each method (``avg_ring_{g}``:
    (ring_length, N) rows of flat iterates; ``avg_sum_{g}``: (N,) float64 running sum), so they are part of its
    ``state_dict`` and follow it through ``.to()``, deepcopy and pickling; the store keeps no reference to it.
    """

    def __init__(self, avg: list[torch.Tensor], ring_length: int, needs_sum: bool):
        self.ring_length = int(ring_length)
        self.needs_sum = bool(needs_sum)
        self.views: dict = {}  # (group, row) -> (ring data_ptr, views of the row shaped like the tensors)
        by_dtype: dict[torch.dtype, list[int]] = {}
        for i, t in enumerate(avg):
            by_dtype.setdefault(t.dtype, []).append(i)
        self.groups: list[tuple[list[int], list, list[int]]] = []  # (tensor indices, shapes, numels)
        nbytes = 0
        for dt, idx in by_dtype.items():
            devs = {avg[i].device for i in idx}
            if len(devs) > 1 and self.ring_length:
                raise ValueError(f"model: sliding windows need the {dt} tensors on one device, "
                                 f"found {sorted(map(str, devs))}")
            numels = [avg[i].numel() for i in idx]
            N = int(sum(numels))
            self.groups.append((idx, [avg[i].shape for i in idx], numels))
            nbytes += self.ring_length * N * avg[idx[0]].element_size()
            if self.needs_sum:
                nbytes += N * torch.empty((), dtype=_acc_dtype(dt)).element_size()
        self.extra_bytes = int(nbytes)

    def check_memory(self, kernel, copies: int, memory_limit) -> None:
        if self.ring_length and memory_limit is not None and self.extra_bytes > memory_limit:
            raise ValueError(
                f"kernel {kernel} with at_step=None keeps a sliding window of {copies} copies of the model "
                f"({self.extra_bytes / 2 ** 20:.1f} MiB) > memory_limit={memory_limit:.4g} bytes: pass at_step=T (no "
                "extra memory), a shorter kernel, or a larger memory_limit")

    def allocate(self, host: nn.Module, avg: list[torch.Tensor]) -> None:
        """Register the ring (every slot padded with theta_s) and the running sum."""
        for g, (idx, _shapes, numels) in enumerate(self.groups):
            t0 = avg[idx[0]]
            N = int(sum(numels))
            if self.ring_length:
                host.register_buffer(f"avg_ring_{g}", torch.empty((self.ring_length, N), dtype=t0.dtype,
                                                                       device=t0.device))
            if self.needs_sum:
                host.register_buffer(f"avg_sum_{g}", torch.zeros(N, dtype=_acc_dtype(t0.dtype),
                                                                      device=t0.device))
        if self.ring_length:
            with torch.no_grad():
                for g, (idx, _s, _n) in enumerate(self.groups):
                    cur = [avg[i] for i in idx]
                    for row in range(self.ring_length):
                        torch._foreach_copy_(self.row_views(host, g, row), cur)
                    if self.needs_sum:
                        self.recompute_sum(host, g)

    def ring(self, host: nn.Module, g: int) -> torch.Tensor:
        return getattr(host, f"avg_ring_{g}")

    def sum(self, host: nn.Module, g: int) -> torch.Tensor:
        return getattr(host, f"avg_sum_{g}")

    def row_views(self, host: nn.Module, g: int, row: int | None,
                  flat: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Views of ring row ``row`` (or of the flat tensor ``flat``) of group g, shaped like its tensors."""
        idx, shapes, numels = self.groups[g]
        if flat is None:
            ring = self.ring(host, g)
            hit = self.views.get((g, row))
            if hit is not None and hit[0] == ring.data_ptr():
                return hit[1]
            flat = ring[row]
        views = [v.view(sh) for v, sh in zip(flat.split(numels), shapes)]
        if row is not None:
            if len(self.views) > 4 * len(self.groups) * max(self.ring_length, 1):
                self.views.clear()
            self.views[(g, row)] = (self.ring(host, g).data_ptr(), views)
        return views

    def recompute_sum(self, host: nn.Module, g: int) -> None:
        _sum_rows_(self.sum(host, g), self.ring(host, g))


class _Tracker:
    """One way of keeping an average; ``update`` takes the i-th iterate (1-based call index)."""

    name = "tracker"
    ring_length = 0  # ring rows (parameter-sized copies) the tracker needs
    needs_sum = False  # a float64 running sum beside the ring
    n_points = 0  # points of a running mean at fixed calls (the resume state's next_point ranges over them)

    def __init__(self):
        self.next_point = 0  # the next of those points

    @property
    def copies(self) -> int:
        """Parameter-sized copies held besides the averaged module."""
        return self.ring_length + int(self.needs_sum)

    def update(self, store: _GroupStore, host: nn.Module, avg: list, src: list, i: int) -> None:
        raise NotImplementedError


class _Copy(_Tracker):
    """``last``: a copy of the iterate at call ``at`` (every call when ``at`` is None)."""

    name = "last"

    def __init__(self, at: int | None):
        super().__init__()
        self.at = at

    def update(self, store, host, avg, src, i):
        if self.at is None or i == self.at:
            torch._foreach_copy_(avg, src)


class _Ema(_Tracker):
    r"""``geometric``: :math:`e \leftarrow \mathrm{lerp}(e, \theta, a)` every call."""

    name = "ema"

    def __init__(self, decay: float):
        super().__init__()
        self.decay = float(decay)

    def update(self, store, host, avg, src, i):
        torch._foreach_lerp_(avg, src, self.decay)


class _PointsAt(_Tracker):
    """``points`` with ``at_step``: the running weighted mean of the n points, built in the module itself at
    the calls ``calls`` (chronological) with divisors ``divisors``; no extra memory."""

    name = "points"

    def __init__(self, calls: np.ndarray, divisors: np.ndarray):
        super().__init__()
        self.calls, self.divisors = calls, divisors
        self.n_points = int(calls.size)
        if self.n_points and calls[0] == 0:  # the model at construction is the first point
            self.next_point = 1

    def update(self, store, host, avg, src, i):
        j = self.next_point
        if j < self.n_points and self.calls[j] == i:
            _mean_step(avg, src, float(self.divisors[j]))
            self.next_point = j + 1


class _Window(_Tracker):
    """A uniform stride-1 window of W iterates, ``at_step=None``: a ring of W iterates and a float64 running
    sum (add the newest, subtract the stored oldest; recomputed from the ring every W calls)."""

    name = "window"
    needs_sum = True

    def __init__(self, width: int):
        super().__init__()
        self.ring_length = int(width)

    def update(self, store, host, avg, src, i):
        W = self.ring_length
        row = i % W
        for g, (idx, _s, _n) in enumerate(store.groups):
            ring, S = store.ring(host, g), store.sum(host, g)
            cur = [src[j] for j in idx]
            if row == 0:
                torch._foreach_copy_(store.row_views(host, g, row), cur)
                store.recompute_sum(host, g)
            else:
                _acc_(S, ring[row], -1.0)
                torch._foreach_copy_(store.row_views(host, g, row), cur)
                _acc_(S, ring[row], 1.0)
            _mean_into_([avg[j] for j in idx], store.row_views(host, g, None, S), W)


class _Ring(_Tracker):
    """``points``, ``at_step=None``: a ring of the last (n-1)s iterates and a fresh weighted mean of the n
    points (lags ``lags``, chronological, divisors ``divisors``) every call."""

    name = "ring"

    def __init__(self, lags: np.ndarray, divisors: np.ndarray, length: int):
        super().__init__()
        self.lags, self.divisors = lags, divisors
        self.ring_length = int(length)

    def update(self, store, host, avg, src, i):
        R = self.ring_length
        for g, (idx, _s, _n) in enumerate(store.groups):
            dst = [avg[j] for j in idx]
            cur = [src[j] for j in idx]
            for lag, d in zip(self.lags.tolist(), self.divisors.tolist()):
                _mean_step(dst, cur if lag == 0 else store.row_views(host, g, (i - lag) % R), d, in_place=True)
            torch._foreach_copy_(store.row_views(host, g, i % R), cur)


def _make_tracker(kernel: AveragingKernel, at_step: int | None, start_step: int) -> _Tracker:
    """The tracker for ``kernel.tracking()`` (its kind and fields; never the kernel's class)."""
    tr = kernel.tracking()
    kind = tr.kind
    if kind == "geometric" and float(tr.decay) == 1.0:
        kind = "last"
    if kind == "last":
        return _Copy(None if at_step is None else at_step - start_step)
    if kind == "geometric":
        return _Ema(float(tr.decay))
    if kind == "points":
        s, n = int(tr.stride), int(tr.n)
        w = tr.weight_array()
        lags = np.arange(n, dtype=np.int64) * s
        nz = np.flatnonzero(w)[::-1]  # chronological: the largest lag first
        div = _divisors(w[nz])
        if at_step is not None:
            return _PointsAt((at_step - start_step) - lags[nz], div)
        if tr.uniform_window:
            return _Window(int(tr.uniform_window))
        return _Ring(lags[nz], div, int(lags[-1]))
    raise ValueError(f"kernel {kernel!r} has tracking kind {tr.kind!r}, which KernelAveragedModel cannot keep "
                     "online (known: 'last', 'geometric', 'points')")


# =============================================================================================
# KernelAveragedModel
# =============================================================================================
class KernelAveragedModel(nn.Module):
    r"""Average of a model's trajectory with any quadsgd kernel: :math:`\hat\theta_t = \sum_k\mu_k\theta_{t-k}`.

    Parameters
    ----------
    model : torch.nn.Module
        The model being trained (DDP / DataParallel / ``torch.compile`` wrappers are unwrapped); it is
        :math:`\theta_s` of the average. ``avg.module`` is a deep copy of the unwrapped model.
    kernel : quadsgd kernel or spec string
        ``qs.TwoPoint(100)`` / ``"twopoint:100"``, ``"npoint:3:50"``, ``"swa:200"``, ``"ema:0.01"``,
        ``"kernel:0.5,0.3,0.2"``, ``"last"`` (:func:`quadsgd.kernels.parse_kernel`).
    at_step : int or None
        T: after the update that sees :math:`\theta_T`, ``avg.module`` holds
        :math:`\sum_k\mu_k\theta_{T-k}` and further updates are refused. None: the current average
        after every update (EMA; sliding windows, memory in the module docstring).
    use_buffers : bool
        Average the floating buffers (BatchNorm running statistics) with the same kernel; False (default):
        copy all buffers from the model at every update (then call ``update_bn`` on the average).
    start_step : int, keyword-only
        Step s of ``model`` at construction (default 0): the k-th update sees :math:`\theta_{s+k}`.
    device : torch.device, keyword-only
        Keep the average there (model tensors are moved at each update); default: the model's device.
    memory_limit : float or None, keyword-only
        Bytes allowed for the extra copies of sliding windows (default 4 GiB; None: no limit).

    Attributes: ``module``, ``kernel``, ``at_step``, ``start_step``, ``use_buffers``, ``n_updates``,
    ``step`` (:math:`s` + updates), ``ready``, ``extra_copies`` (parameter-sized copies besides
    ``module``), ``extra_bytes``.

    Raises ValueError naming the argument for: a kernel that is not a kernel or spec (``"swa:0"``: window
    < 1), a finite kernel longer than ``at_step - start_step + 1`` iterates, ``at_step <= start_step``
    (already passed), a model without parameters, ``at_step=None`` with a kernel whose tracking cannot
    be kept online or whose window exceeds ``memory_limit``; :meth:`update_parameters` after ``at_step``.
    """

    def __init__(self, model: nn.Module, kernel, at_step: int | None = None, use_buffers: bool = False, *,
                 start_step: int = 0, device: torch.device | str | None = None,
                 memory_limit: float | None = _DEFAULT_MEMORY_LIMIT):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        k = _as_kernel(kernel)
        self.use_buffers = check_bool("use_buffers", use_buffers)
        if at_step is None:
            self.start_step = check_int("start_step", start_step, 0)
            self.at_step = None
        else:
            self.at_step, self.start_step = _check_steps(k, at_step, start_step)
        if memory_limit is not None:
            try:
                memory_limit = float(memory_limit)
            except (TypeError, ValueError):
                raise ValueError(f"memory_limit must be a number of bytes or None, got {memory_limit!r}") from None
            if not memory_limit >= 0:
                raise ValueError(f"memory_limit must be >= 0 bytes or None, got {memory_limit!r}")
        self.kernel = k
        inner = unwrap_model(model)
        if next(inner.parameters(), None) is None:
            raise ValueError(f"model has no parameters to average ({type(inner).__name__})")
        self.module = copy.deepcopy(inner)
        if device is not None:
            self.module = self.module.to(device)
        self._n_params = sum(1 for _ in self.module.parameters())
        bufs = list(self.module.buffers())
        self._n_buffers = len(bufs)
        if self.use_buffers:
            self._avg_buffer_idx = [i for i, b in enumerate(bufs) if _is_float(b)]
            self._copy_buffer_idx = [i for i, b in enumerate(bufs) if not _is_float(b)]
        else:
            self._avg_buffer_idx, self._copy_buffer_idx = [], list(range(len(bufs)))
        self._calls = 0
        self._tracker = _make_tracker(k, self.at_step, self.start_step)
        self._store = _GroupStore(self._avg_tensors(), self._tracker.ring_length, self._tracker.needs_sum)
        self._store.check_memory(k, self._tracker.copies, memory_limit)
        self._store.allocate(self, self._avg_tensors())

    # ------------------------------------------------------------------ tensors
    def _avg_tensors(self) -> list[torch.Tensor]:
        """The averaged tensors of ``module``: parameters, then floating buffers if use_buffers."""
        out = [p.detach() for p in self.module.parameters()]
        if self._avg_buffer_idx:
            bufs = list(self.module.buffers())
            out += [bufs[i].detach() for i in self._avg_buffer_idx]
        return out

    def _copied_tensors(self) -> list[torch.Tensor]:
        bufs = list(self.module.buffers())
        return [bufs[i].detach() for i in self._copy_buffer_idx]

    def _sources(self, model: nn.Module, avg: list, copied: list) -> tuple[list, list]:
        inner = unwrap_model(model)
        params = [p.detach() for p in inner.parameters()]
        bufs = [b.detach() for b in inner.buffers()]
        if len(params) != self._n_params or len(bufs) != self._n_buffers:
            raise ValueError(f"model has {len(params)} parameters and {len(bufs)} buffers, the averaged model "
                             f"{self._n_params} and {self._n_buffers}: pass the model being averaged")
        src = params + [bufs[i] for i in self._avg_buffer_idx]
        src_copy = [bufs[i] for i in self._copy_buffer_idx]
        src = [s if s.device == a.device else s.to(a.device) for s, a in zip(src, avg)]
        src_copy = [s if s.device == a.device else s.to(a.device) for s, a in zip(src_copy, copied)]
        return src, src_copy

    # ------------------------------------------------------------------ update
    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        """Take the iterate :math:`\\theta_{s+k}` of ``model`` (the k-th call); call after every optimizer step."""
        i = self._calls + 1
        if self.at_step is not None and self.start_step + i > self.at_step:
            raise ValueError(
                f"update_parameters would see step {self.start_step + i}, after at_step={self.at_step}: the average "
                f"at step {self.at_step} is complete in avg.module (build a new KernelAveragedModel for a later step)")
        avg = self._avg_tensors()
        copied = self._copied_tensors()
        src, src_copy = self._sources(model, avg, copied)
        self._tracker.update(self._store, self, avg, src, i)
        if copied:
            torch._foreach_copy_(copied, src_copy)
        self._calls = i

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    # ------------------------------------------------------------------ info
    @property
    def n_updates(self) -> int:
        """Number of :meth:`update_parameters` calls so far."""
        return self._calls

    @property
    def step(self) -> int:
        """Step of the latest iterate seen (``start_step + n_updates``)."""
        return self.start_step + self._calls

    @property
    def ready(self) -> bool:
        """True when ``module`` holds the average: always with at_step=None, else once step == at_step."""
        return self.at_step is None or self.step == self.at_step

    @property
    def extra_copies(self) -> int:
        """Parameter-sized copies held besides ``module`` (ring slots, running sum)."""
        return self._tracker.copies

    @property
    def extra_bytes(self) -> int:
        """Bytes of those copies."""
        return self._store.extra_bytes

    def extra_repr(self) -> str:
        return (f"kernel={self.kernel}, at_step={self.at_step}, start_step={self.start_step}, "
                f"use_buffers={self.use_buffers}, tracking={self._tracker.name!r}, extra_copies={self.extra_copies}")

    # ------------------------------------------------------------------ state
    def _identity(self) -> dict[str, Any]:
        return {"kernel": str(self.kernel), "at_step": self.at_step, "start_step": self.start_step,
                "use_buffers": self.use_buffers}

    def get_extra_state(self) -> dict[str, Any]:
        return {"format": _FORMAT, **self._identity(), "calls": self._calls, "next_point": self._tracker.next_point}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            raise ValueError(f"state_dict: not a KernelAveragedModel state of format {_FORMAT}")
        for key, mine in self._identity().items():
            if state.get(key) != mine:
                raise ValueError(f"state_dict was saved with {key}={state.get(key)!r}, this average has "
                                 f"{key}={mine!r}: build it with the same arguments before loading")
        calls = check_int("state_dict calls", state["calls"], 0)
        if self.at_step is not None and self.start_step + calls > self.at_step:
            raise ValueError(f"state_dict holds {calls} updates, beyond at_step={self.at_step}")
        self._calls = calls
        self._tracker.next_point = check_int("state_dict next_point", state["next_point"], 0,
                                             self._tracker.n_points)
        self._store.views.clear()

    def _apply(self, fn, *args, **kwargs):
        store = self.__dict__.get("_store")
        if store is not None:
            store.views.clear()
        return super()._apply(fn, *args, **kwargs)


# =============================================================================================
# EquivalentScheduleLR
# =============================================================================================
def _refuse_after_at_step(ref):
    def hook(optimizer, args, kwargs):
        sched = ref()
        if sched is not None and sched.last_epoch >= sched.at_step:
            raise ValueError(
                f"optimizer step {sched.last_epoch + 1} is after at_step={sched.at_step}: EquivalentScheduleLR's "
                f"schedule ends at step {sched.at_step} (its end point is the average at that step)")
    return hook


class EquivalentScheduleLR(LRScheduler):
    r"""The learning-rate schedule whose end point equals a kernel average (Lemma 2, Table 1 generalised).

    The lr of optimizer step i (1-based) is :math:`\mathrm{base}_i\cdot m_i` in every param group, with
    :math:`m_i = \sum_{m<r}\mu_m`, :math:`r = T - i + 1` (:func:`quadsgd.equivalent_schedule`;
    :math:`m_i = 1` before the kernel's support, e.g. two-point: 1 up to step T-Δ, then 1/2). Under a
    constant gradient per batch the end point :math:`\theta_T` equals the average
    :math:`\sum_k\mu_k\theta_{T-k}` of the same run with the base schedule
    (:class:`KernelAveragedModel` with the same ``at_step``); in training the two are close (paper, Fig. 5).

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
    kernel : quadsgd kernel or spec string (``"twopoint:1000"``, ``"ema:0.001"``, ``"swa:500"``, ...)
    at_step : int
        T, the averaging time; a finite kernel must fit in steps ``start+1..T`` (support - 1 <= T - start).
        ``optimizer.step()`` after step T raises ValueError (a step pre-hook); so does ``step()`` beyond it.
    base : LRScheduler or None
        Scheduler of the same optimizer giving base_i (stepped by this one: call only this ``step()``);
        None: the optimizer's lr at construction, constant.
    start_step : int or None, keyword-only
        Optimizer steps already taken (default: ``base.last_epoch``, or 0 without a base).

    ``state_dict()`` holds this scheduler's counters and the base's state (``base_state``); load it with
    the same kernel, at_step and base type.
    """

    def __init__(self, optimizer: Optimizer, kernel, at_step: int, base: LRScheduler | None = None, *,
                 start_step: int | None = None):
        if not isinstance(optimizer, Optimizer):
            raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        k = _as_kernel(kernel)
        if base is not None:
            if not isinstance(base, LRScheduler):
                raise ValueError("base must be an LRScheduler of the same optimizer or None, "
                                 f"got {type(base).__name__}")
            if base.optimizer is not optimizer:
                raise ValueError("base must schedule the same optimizer as EquivalentScheduleLR")
            done = int(base.last_epoch)
            if start_step is not None and check_int("start_step", start_step, 0) != done:
                raise ValueError(f"start_step={start_step} disagrees with base.last_epoch={done}")
        else:
            done = 0 if start_step is None else check_int("start_step", start_step, 0)
        self.kernel = k
        self.at_step, self.start_step = _check_steps(k, at_step, done)
        self.base = base
        self._mult = equivalent_multipliers(k, self.at_step, self.start_step)
        self._base_lr = [_clone_lr(g["lr"]) for g in optimizer.param_groups]
        self._started = False
        if done > 0:
            for g in optimizer.param_groups:
                g.setdefault("initial_lr", _clone_lr(g["lr"]))
        super().__init__(optimizer, last_epoch=done - 1 if done > 0 else -1)
        self._hook = optimizer.register_step_pre_hook(_refuse_after_at_step(weakref.ref(self)))

    def multiplier(self, step: int) -> float:
        """:math:`m_i` of optimizer step ``step`` (1-based; 1.0 outside start_step+1..at_step)."""
        j = int(step) - self.start_step - 1
        return float(self._mult[j]) if 0 <= j < self._mult.size else 1.0

    def get_lr(self) -> list:
        m = self.multiplier(self.last_epoch + 1)
        return [b * m for b in self._base_lr]

    def step(self, epoch: int | None = None) -> None:
        if epoch is not None:
            raise ValueError("epoch is not supported by EquivalentScheduleLR: call step() once per optimizer step")
        if self._started:
            if self.last_epoch >= self.at_step:
                raise ValueError(f"step() past at_step={self.at_step}: the equivalent schedule ends at step "
                                 f"{self.at_step}")
            if self.base is not None:
                for g, b in zip(self.optimizer.param_groups, self._base_lr):
                    if isinstance(g["lr"], torch.Tensor):
                        g["lr"].copy_(b)
                    else:
                        g["lr"] = b
                self.base.step()
                self._base_lr = [_clone_lr(g["lr"]) for g in self.optimizer.param_groups]
        self._started = True
        super().step()

    def state_dict(self) -> dict[str, Any]:
        skip = {"optimizer", "base", "kernel", "_mult", "_hook"}
        sd = {k: v for k, v in self.__dict__.items() if k not in skip}
        sd["kernel"] = str(self.kernel)
        sd["base_state"] = None if self.base is None else self.base.state_dict()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        sd = dict(state_dict)
        for key, mine in (("kernel", str(self.kernel)), ("at_step", self.at_step), ("start_step", self.start_step)):
            if sd.get(key) != mine:
                raise ValueError(f"state_dict was saved with {key}={sd.get(key)!r}, this scheduler has {key}={mine!r}")
        base_state = sd.pop("base_state", None)
        if (base_state is None) != (self.base is None):
            raise ValueError("state_dict and this scheduler differ in having a base scheduler")
        if self.base is not None:
            self.base.load_state_dict(base_state)
        sd.pop("kernel")
        self.__dict__.update(sd)


def _clone_lr(v):
    return v.clone() if isinstance(v, torch.Tensor) else v
