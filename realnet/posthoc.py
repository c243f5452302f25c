r"""Post-hoc averaging of stored checkpoints: any kernel realised on a checkpoint grid, and a streaming merge.

The paper's Lemma 2 / Table 1: an average :math:`\sum_k\mu_k\theta_{T-k}` stands for the learning-rate
schedule whose step ``r`` steps before ``T`` has the multiplier :math:`m_r = \sum_{q<r}\mu_q`. A run held at a
constant lr with checkpoints can therefore be "cooled down" after the fact by merging its checkpoints.

* :func:`realise` / :func:`grid_weights` -- a kernel evaluated at step ``T`` on the steps that have a
  checkpoint. Exact (residual 0) when every lag carrying weight is a checkpoint (two-point, n-point / LAWA,
  SWA with a stride that the grid has). Otherwise the least-squares projection of the kernel's *schedule*:
  a merge of checkpoints at lags :math:`g_0 = 0 < g_1 < \dots` realises the step-function schedule
  :math:`c_j` on :math:`r \in (g_j, g_{j+1}]` (:math:`c_{n-1} = 1` beyond the oldest checkpoint: the weights sum
  to 1), and :math:`\sum_r (c(r) - m_r)^2` is smallest for :math:`c_j` = the mean of :math:`m_r` over the interval.
  Means of a non-decreasing sequence are non-decreasing, so the weights :math:`w_j = c_j - c_{j-1}` are
  non-negative and sum to 1; on a dense grid they are the kernel's weights. The residual is
  :math:`\|c - m\|_2 / \|1 - m\|_2`: under Lemma 2 with orthogonal batch gradients of equal norm, the distance
  between the realised and the requested merge over the distance between the requested merge and the last
  iterate. The realised weights' own equivalent schedule is returned with them (the merge stands for it).
* :func:`average_checkpoints` -- :math:`\sum_i w_i\,\mathrm{state}_i` over realnet checkpoints, ``torch.save``
  state_dict files or ``.safetensors`` files, read one file at a time into a float64 accumulator (memory: the
  accumulator plus one checkpoint; safetensors and state_dict files are read tensor by tensor / memory-mapped).
  Integer buffers (``num_batches_tracked``) come from the last file; every tensor is returned in that file's
  dtype; while one file is summed the kernel reads the next one ahead (``posix_fadvise``), so I/O and arithmetic
  overlap. :func:`save_state_dict` writes the result atomically (``.safetensors`` or ``torch.save``),
  :func:`save_merged_checkpoint` as a realnet checkpoint (when the inputs are realnet checkpoints).
* :func:`parse_candidate` -- a candidate spec: a quadsgd kernel spec (``twopoint:400``, ``npoint:4:200``,
  ``swa:800``, ``ema:0.002``, ``last``) or a cooldown ``cooldown:SHAPE:L[:final]`` (shapes of
  :func:`quadsgd.cooldown`: linear, 1-sqrt, cosine, exp), turned into its kernel by
  :func:`quadsgd.kernel_for_schedule`.

The command ``python -m realnet posthoc`` (:mod:`realnet.posthoc_run`) evaluates many candidates on a run.
Derivation of the projection and the residual: ``docs/posthoc.md``.
"""
from __future__ import annotations

import hashlib
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

import quadsgd as qs
from quadsgd.kernels import AveragingKernel, parse_kernel
from sgdtraj.arguments import check_array, check_int, check_size
from sgdtraj.files import atomic_output

from .checkpoint import MAGIC, CheckpointError, load_checkpoint, save_checkpoint

__all__ = ["GridRealisation", "realise", "grid_weights", "average_checkpoints", "read_state_dict", "save_state_dict",
           "save_merged_checkpoint", "parse_candidate", "WEIGHT_SUM_TOL", "EMA_TAIL"]

#: |sum of the weights - 1| allowed by :func:`average_checkpoints`
WEIGHT_SUM_TOL = 1e-6
#: an infinite kernel (EMA) is taken over the lags until its remaining weight is below this
EMA_TAIL = 1e-12


# =============================================================================================
# candidates
# =============================================================================================
def parse_candidate(spec) -> AveragingKernel:
    """The kernel of a candidate spec: quadsgd's grammar or ``cooldown:SHAPE:L[:final]``; an AveragingKernel is
    returned as is. ValueError naming the spec and the forms otherwise."""
    if isinstance(spec, AveragingKernel):
        return spec
    if isinstance(spec, str) and spec.strip().lower().startswith("cooldown"):
        parts = spec.strip().split(":")
        try:
            if len(parts) not in (3, 4):
                raise ValueError("takes SHAPE and L (and the exp shape's final lr factor)")
            final = float(parts[3]) if len(parts) == 4 else 0.01
            return qs.kernel_for_schedule(qs.cooldown(parts[1], int(parts[2]), final=final))
        except ValueError as e:
            raise ValueError(f"bad kernel spec {spec!r} ({e}); form: cooldown:SHAPE:L[:final] with SHAPE one of "
                             f"{', '.join(qs.schedules.COOLDOWN_SHAPES)}") from None
    try:
        return parse_kernel(spec)
    except ValueError as e:
        raise ValueError(f"{e}, cooldown:SHAPE:L[:final]") from None


# =============================================================================================
# a kernel on a checkpoint grid
# =============================================================================================
@dataclass(frozen=True, eq=False)
class GridRealisation:
    """A kernel at step ``at_step`` realised on checkpoint steps.

    kernel: the requested kernel's spec. at_step: T. steps: the checkpoint steps given (shape (n,), input
    order). weights: weight per entry of ``steps`` (0 for steps after T or not needed), summing to 1.
    residual: :math:`\\|c - m\\|_2/\\|1 - m\\|_2` (0: exact). target: the requested multipliers :math:`m_r`,
    r = 1..len (the step r before T). realised: the realised weights' multipliers over the same r.
    """

    kernel: str
    at_step: int
    steps: np.ndarray
    weights: np.ndarray
    residual: float
    target: np.ndarray
    realised: np.ndarray

    @property
    def exact(self) -> bool:
        return self.residual == 0.0

    @property
    def window(self) -> int:
        """Lag of the oldest checkpoint carrying weight (steps; 0 for the last iterate)."""
        used = self.weights != 0
        return int(self.at_step - self.steps[used].min()) if used.any() else 0

    @property
    def effective_length(self) -> float:
        r"""Effective averaging length :math:`1 + 2\sum_k k w_k = 1 + 2\sum_r (1 - c_r)` in steps (SWA(W): W;
        two-point at distance D: D + 1; EMA(a): 2/a - 1)."""
        lags = self.at_step - self.steps
        return float(1.0 + 2.0 * np.sum(self.weights * lags))

    def realised_kernel(self) -> AveragingKernel:
        """The realised weights as a quadsgd kernel (dense lags 0..window)."""
        mu = np.zeros(self.window + 1)
        np.add.at(mu, (self.at_step - self.steps)[self.weights != 0], self.weights[self.weights != 0])
        return qs.kernel_for_schedule(np.cumsum(mu) / mu.sum()) if mu.size > 1 else qs.Last()

    def schedule(self, lr: float = 1.0) -> np.ndarray:
        """The realised equivalent schedule in time order: lr of the updates T - window + 1 .. T (shape (window,))."""
        return float(lr) * self.realised[: self.window][::-1].copy()

    def schedule_summary(self) -> str:
        """The realised schedule as runs in time order, e.g. ``"0.2 x160, 0.8 x240, then 1"``."""
        m = self.schedule()
        if m.size == 0:
            return "1 (the last iterate)"
        runs, start = [], 0
        for i in range(1, m.size + 1):
            if i == m.size or abs(m[i] - m[start]) > 1e-12:
                runs.append(f"{m[start]:.3g} x{i - start}")
                start = i
        return ", ".join(runs) + " (lr multipliers in time order, ending at T)"


def _target_length(kernel: AveragingKernel) -> int:
    """Lags that carry the kernel: its support, or (infinite support) until the tail is below EMA_TAIL."""
    if not math.isinf(kernel.support):
        return int(kernel.support)
    R = 1
    while 1.0 - float(kernel.cumulative(R)) > EMA_TAIL:
        R *= 2
        check_size("kernel", R, f"the schedule of {kernel!r} down to a tail of {EMA_TAIL:g}")
    return R


def realise(kernel, at_step: int, steps) -> GridRealisation:
    """``kernel`` (spec or quadsgd kernel) at step ``at_step`` on the checkpoint ``steps``; see the module docstring.

    steps: 1-D integers (any order; those after ``at_step`` get weight 0). ValueError naming ``at_step`` if it
    is not among ``steps``, naming ``steps`` for non-integers or duplicates, naming ``kernel`` for a bad spec or a
    schedule longer than 2 GiB of lags. Cost O(R + n) for a kernel of R lags and n checkpoints.
    """
    k = parse_candidate(kernel)
    T = check_int("at_step", at_step, 0)
    s = np.asarray(steps)
    if s.ndim != 1 or s.size == 0 or s.dtype.kind not in "iu":
        raise ValueError(f"steps must be a non-empty 1-D array of integer checkpoint steps, got {steps!r}")
    s = s.astype(np.int64)
    if len(np.unique(s)) != s.size:
        raise ValueError("steps must not repeat a step")
    if T not in set(s.tolist()):
        before = s[s < T]
        near = f"; the latest checkpoint before it is {int(before.max())}" if before.size else ""
        raise ValueError(f"at_step {T} has no checkpoint among the steps{near}")
    R = _target_length(k)
    check_size("kernel", R, f"the schedule of {k!r}")
    m = k.cumulative(np.arange(1, R + 1))  # m[r-1], r = 1..R
    lags_all = T - s
    order = np.argsort(lags_all)
    order = order[lags_all[order] >= 0]
    g = lags_all[order]
    # checkpoints beyond the first lag >= R cannot carry weight
    cut = int(np.searchsorted(g, R, side="left")) + 1
    g = g[:cut]
    n = g.size
    P = np.concatenate([[0.0], np.cumsum(m)])

    def mean(a: int, b: int) -> float:  # mean of m_r over r in (a, b], m_r = 1 beyond R
        lo, hi = min(a, R), min(b, R)
        return (P[hi] - P[lo] + max(0, b - max(a, R))) / (b - a)

    c = np.ones(n)
    for j in range(n - 1):
        c[j] = mean(int(g[j]), int(g[j + 1]))
    c = np.minimum(np.maximum.accumulate(c), 1.0)  # the means are non-decreasing: only rounding is undone here
    w_sorted = np.diff(np.concatenate([[0.0], c]))
    L = max(int(g[-1]), R)
    realised = np.ones(L)
    for j in range(n - 1):
        realised[g[j]: g[j + 1]] = c[j]
    target = np.ones(L)
    target[:R] = m
    mu = k.weights(R) if not math.isinf(k.support) else None
    on_grid = mu is not None and set(np.flatnonzero(mu).tolist()) <= set(g.tolist())
    if on_grid:  # exact: the kernel's own weights, not their rounded re-derivation
        w_sorted = mu[g.clip(max=R - 1)] * (g < R)
        realised, residual = target.copy(), 0.0
    else:
        den = float(np.linalg.norm(1.0 - target))
        num = float(np.linalg.norm(realised - target))
        residual = num / den if den > 0 else (0.0 if num == 0 else math.inf)
        w_sorted[np.abs(w_sorted) < 1e-15] = 0.0
    weights = np.zeros(s.size)
    weights[order[:n]] = w_sorted
    return GridRealisation(kernel=str(k), at_step=T, steps=s, weights=weights, residual=residual, target=target,
                           realised=realised)


def grid_weights(kernel, at_step: int, steps) -> tuple[np.ndarray, float]:
    """(weight per entry of ``steps``, residual) of ``kernel`` at ``at_step`` on the checkpoint grid ``steps``
    (:func:`realise`; exact with residual 0 when the kernel's lags are checkpoints)."""
    r = realise(kernel, at_step, steps)
    return r.weights, r.residual


# =============================================================================================
# reading checkpoints one tensor / one file at a time
# =============================================================================================
class _Window(io.RawIOBase):
    """A read-only view of ``fh`` from ``offset`` on (torch.load of a payload behind a header)."""

    def __init__(self, fh, offset: int, size: int):
        self._fh, self._off, self._size, self._pos = fh, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, b) -> int:
        n = max(0, min(len(b), self._size - self._pos))
        self._fh.seek(self._off + self._pos)
        got = self._fh.readinto(memoryview(b)[:n])
        self._pos += got
        return got


def _is_realnet(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(len(MAGIC)) == MAGIC


def _realnet_model(path: Path) -> dict[str, torch.Tensor]:
    """The model state_dict of a realnet checkpoint, checksum verified by streaming (no copy of the file)."""
    n = len(MAGIC)
    size_total = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(n + 40)
        if len(head) < n + 40:
            raise CheckpointError(f"truncated checkpoint (header incomplete): {str(path)!r}")
        size = int.from_bytes(head[n:n + 8], "little")
        if size_total - n - 40 != size:
            raise CheckpointError(f"truncated or corrupt checkpoint {str(path)!r}: payload has "
                                  f"{size_total - n - 40} bytes, header says {size}")
        h = hashlib.sha256()
        while chunk := fh.read(1 << 22):
            h.update(chunk)
        if h.digest() != head[n + 8:n + 40]:
            raise CheckpointError(f"corrupt checkpoint {str(path)!r}: SHA-256 of the payload does not match")
        obj = _load_mapped(path, fh, n + 40, size)
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict):
        raise CheckpointError(f"unexpected checkpoint format in {str(path)!r} (no model state_dict)")
    return obj["model"]


def _load_mapped(path: Path, fh, offset: int, size: int):
    """The ``torch.save`` payload at ``offset`` of ``path``, its storages memory-mapped (only the pages of the tensors
    used are read: the model, not the optimizer's momentum); torch's own reader when its private loader is not
    there (a future torch), which reads every storage."""
    import torch.serialization as ser

    try:
        whole = torch.UntypedStorage.from_file(str(path), False, offset + size)
        with ser._open_zipfile_reader(_Window(fh, offset, size)) as zf:
            return ser._load(zf, "cpu", torch._weights_only_unpickler, overall_storage=whole[offset:],
                             weights_only=True, encoding="utf-8")
    except (AttributeError, TypeError):
        return torch.load(_Window(fh, offset, size), map_location="cpu", weights_only=True)


def _state_dict_of(obj, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            return _state_dict_of(obj[key], path)
    raise ValueError(f"{str(path)!r} holds no state_dict (a dict of tensors, or one under 'state_dict' / 'model')")


def _iter_tensors(path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of one checkpoint file, as lazily as its format allows."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {str(path)!r}")
    if path.suffix == ".safetensors":
        try:
            from safetensors import safe_open
        except ImportError:
            raise ImportError("reading .safetensors files needs the safetensors package: "
                              "pip install 'sgd-trajectories[realnet]' (or pip install safetensors)") from None
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)
        return
    if _is_realnet(path):
        yield from _realnet_model(path).items()
        return
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is named in one line
        raise ValueError(f"cannot read {str(path)!r} as a torch.save state_dict: {str(e).splitlines()[0]}") from None
    yield from _state_dict_of(obj, path).items()


#: elements converted to the accumulator's dtype at a time (a reused 8 MiB float64 buffer: no page faults of fresh
#: temporaries, and torch's mixed-dtype in-place add is several times slower than a copy plus a same-dtype add)
_CHUNK = 1 << 20


def _accumulate(acc: torch.Tensor, t: torch.Tensor, w: float, scratch: dict) -> None:
    """``acc += w * t`` in ``acc``'s dtype, converting ``t`` chunk by chunk into a reused buffer."""
    buf = scratch.get(acc.dtype)
    if buf is None:
        buf = scratch[acc.dtype] = torch.empty(_CHUNK, dtype=acc.dtype)
    a, x = acc.view(-1), t.reshape(-1)
    for i in range(0, a.numel(), _CHUNK):
        j = min(i + _CHUNK, a.numel())
        b = buf[: j - i]
        b.copy_(x[i:j])
        a[i:j].add_(b, alpha=w)


def _read_ahead(path: Path) -> None:
    """Ask the kernel to read ``path`` into the page cache in the background (no memory of this process)."""
    if hasattr(os, "posix_fadvise"):
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)
        except OSError:
            pass


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """The state_dict in a realnet checkpoint, a ``torch.save`` state_dict file or a ``.safetensors`` file."""
    return {k: v.clone() for k, v in _iter_tensors(path)}


def average_checkpoints(paths, weights) -> dict[str, torch.Tensor]:
    r""":math:`\sum_i w_i\,\mathrm{sd}_i` of the state_dicts in ``paths`` (realnet checkpoints, ``torch.save``
    state_dicts, ``.safetensors``; mixed formats are fine), streamed one file at a time into float64.

    weights: one finite real per path, summing to 1 within :data:`WEIGHT_SUM_TOL` (paths of weight 0 are not
    read). Floating tensors are averaged and returned in the dtype of the last path read; integer and bool
    tensors (``num_batches_tracked``) are those of the last path with non-zero weight. Memory: the float64
    accumulator plus one file. ValueError naming ``weights`` (length, finiteness, sum) or the offending file
    and tensor (missing / extra keys, a shape mismatch: checkpoints of different architectures);
    FileNotFoundError naming a missing file.
    """
    paths = [Path(p) for p in (paths if not isinstance(paths, (str, Path)) else [paths])]
    w = check_array("weights", weights, ndim=(1,))
    if w.size != len(paths):
        raise ValueError(f"weights must have one entry per path: {w.size} weights for {len(paths)} paths")
    if abs(float(w.sum()) - 1.0) > WEIGHT_SUM_TOL:
        raise ValueError(f"weights must sum to 1 (within {WEIGHT_SUM_TOL:g}), they sum to {float(w.sum())!r}")
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"checkpoint file not found: {str(p)!r}")
    used = [(p, float(x)) for p, x in zip(paths, w) if x != 0.0]
    scratch: dict[torch.dtype, torch.Tensor] = {}
    acc: dict[str, torch.Tensor] = {}
    meta: dict[str, tuple[tuple, torch.dtype]] = {}
    first = None
    for i, (p, wi) in enumerate(used):
        if i + 1 < len(used):
            _read_ahead(used[i + 1][0])  # the kernel reads the next file while this one is summed
        seen = set()
        for name, t in _iter_tensors(p):
            seen.add(name)
            if first is None:
                meta[name] = (tuple(t.shape), t.dtype)
            elif name not in meta:
                raise ValueError(f"{str(p)!r} has tensor {name!r} that {str(first)!r} lacks: checkpoints of "
                                 f"different architectures cannot be averaged")
            elif tuple(t.shape) != meta[name][0]:
                raise ValueError(f"tensor {name!r} has shape {tuple(t.shape)} in {str(p)!r} but {meta[name][0]} in "
                                 f"{str(first)!r}: checkpoints of different architectures cannot be averaged")
            if t.is_floating_point() or t.is_complex():
                if name not in acc:
                    acc[name] = torch.zeros(t.shape, dtype=torch.complex128 if t.is_complex() else torch.float64)
                _accumulate(acc[name], t, wi, scratch)
            else:
                acc[name] = t.clone()  # integer buffers: the last file's
            meta[name] = (tuple(t.shape), t.dtype)
            del t
        if first is None:
            first = p
        elif seen != set(meta):
            missing = sorted(set(meta) - seen)[:3]
            raise ValueError(f"{str(p)!r} lacks tensors {missing} that {str(first)!r} has: checkpoints of "
                             f"different architectures cannot be averaged")
    out: dict[str, torch.Tensor] = {}
    for name in list(acc):  # cast back one tensor at a time: the float64 accumulator shrinks as the result grows
        t = acc.pop(name)
        out[name] = t.to(meta[name][1]) if t.dtype != meta[name][1] else t
        del t
    return out


def save_state_dict(state_dict: dict[str, torch.Tensor], path) -> Path:
    """Write ``state_dict`` atomically: ``.safetensors`` by safetensors, anything else by ``torch.save``."""
    path = Path(path)
    with atomic_output(path) as tmp:
        if path.suffix == ".safetensors":
            try:
                from safetensors.torch import save_file
            except ImportError:
                raise ImportError("writing .safetensors files needs the safetensors package: "
                                  "pip install 'sgd-trajectories[realnet]' (or pip install safetensors)") from None
            save_file({k: v.contiguous() for k, v in state_dict.items()}, str(tmp))
        else:
            torch.save(state_dict, tmp)
    return path


def save_merged_checkpoint(path, state_dict: dict[str, torch.Tensor], template, merge: dict) -> Path:
    """Write a merged model as a realnet checkpoint: the payload of the realnet checkpoint ``template`` (the newest
    merged one: its step, config, optimizer momentum and RNG states, so side-trips can branch from the merge) with
    ``model`` replaced by ``state_dict`` and ``posthoc`` = ``merge`` (e.g. kernel, steps, weights, residual)."""
    payload = load_checkpoint(template)
    payload.pop("format", None)
    payload["model"] = state_dict
    payload["posthoc"] = merge
    return save_checkpoint(path, payload)
