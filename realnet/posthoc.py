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
  state_dict files or ``.safetensors`` files. Each file's index says where its tensors are (no data read); then all
  files are read in step, a few MiB of each at a time, in a thread (``preadv``, the kernel asked to read ahead)
  while the previous segment is summed in float64 in cache-sized blocks and rounded once into the result's own
  tensors (memory: the result plus 64 MiB, whatever the number of files; a realnet checkpoint's optimizer state
  is not read, its model storages are checked against their CRC-32). Integer buffers (``num_batches_tracked``)
  come from the last file; every tensor is returned in that file's dtype. :func:`check_compatible` checks that
  files hold the same architecture from their indexes alone. :func:`save_state_dict` writes the result
  atomically (``.safetensors`` or ``torch.save``), :func:`save_merged_checkpoint` as a realnet checkpoint (when
  the inputs are realnet checkpoints).
* :func:`parse_candidate` -- a candidate spec: a quadsgd kernel spec (``twopoint:400``, ``npoint:4:200``,
  ``swa:800``, ``ema:0.002``, ``last``) or a cooldown ``cooldown:SHAPE:L[:final]`` (shapes of
  :func:`quadsgd.cooldown`: linear, 1-sqrt, cosine, exp), turned into its kernel by
  :func:`quadsgd.kernel_for_schedule`.

The command ``python -m realnet posthoc`` (:mod:`realnet.posthoc_run`) evaluates many candidates on a run.
Derivation of the projection and the residual: ``docs/posthoc.md``.
"""
from __future__ import annotations

import bisect
import dataclasses
import hashlib
import io
import json
import math
import os
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import quadsgd as qs
from quadsgd.kernels import AveragingKernel, parse_kernel
from sgdtraj.arguments import check_array, check_int, check_size
from sgdtraj.files import atomic_output

from .checkpoint import MAGIC, CheckpointError, load_checkpoint, save_checkpoint

__all__ = ["GridRealisation", "realise", "grid_weights", "average_checkpoints", "check_compatible", "read_state_dict",
           "save_state_dict", "save_merged_checkpoint", "parse_candidate", "WEIGHT_SUM_TOL", "EMA_TAIL"]

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
# reading checkpoints: where each tensor's bytes are, then positioned reads
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


@dataclass(frozen=True, eq=False)
class _Entry:
    """One tensor of a checkpoint file. offset: byte offset of its (contiguous) data in the file, or -1 when ``data``
    holds the tensor (a file only torch itself can read). crc: CRC-32 of its bytes recorded in the file (checked as
    they are read), None when there is none to check."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int = -1
    data: torch.Tensor | None = None
    crc: int | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    @property
    def summed(self) -> bool:
        """Averaged (floating or complex) rather than taken from the last file (integers, bool)."""
        return self.dtype.is_floating_point or self.dtype.is_complex


#: safetensors dtype names (https://github.com/huggingface/safetensors, the file format)
_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                       "BOOL": torch.bool, "C64": torch.complex64, "F8_E4M3": torch.float8_e4m3fn,
                       "F8_E5M2": torch.float8_e5m2, "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64}
_SAFETENSORS_NAMES = {v: k for k, v in _SAFETENSORS_DTYPES.items()}


def _index_safetensors(path: Path) -> list[_Entry]:
    """The tensors of a ``.safetensors`` file from its header: 8-byte little-endian length, JSON
    ``{name: {dtype, shape, data_offsets: [begin, end]}}`` (offsets from the end of the header)."""
    size = path.stat().st_size

    def bad(why: str):
        return ValueError(f"cannot read {str(path)!r} as a .safetensors file: {why}")

    with open(path, "rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < n <= size - 8:
            raise bad("no valid header length")
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, ValueError) as e:
            raise bad(f"header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    out = []
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _SAFETENSORS_DTYPES[spec["dtype"]]
            shape = tuple(int(d) for d in spec["shape"])
            begin, end = (int(x) for x in spec["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise bad(f"tensor {name!r} has an unknown dtype or a malformed entry {spec!r}") from None
        e = _Entry(name, dtype, shape, offset=8 + n + begin)
        if end - begin != e.nbytes or e.offset + e.nbytes > size or min(shape, default=0) < 0:
            raise bad(f"tensor {name!r}: its bytes {begin}..{end} do not fit its shape {shape} or the file "
                      f"(truncated?)")
        out.append(e)
    return sorted(out, key=lambda e: e.offset)


def _zip_crcs(src) -> tuple[list[int], list[tuple[int, int]]]:
    """(sorted local-header offsets, [(CRC-32, size)] of those records) of the zip archive ``src``."""
    with zipfile.ZipFile(src) as zf:
        infos = sorted(zf.infolist(), key=lambda z: z.header_offset)
    return [z.header_offset for z in infos], [(z.CRC, z.file_size) for z in infos]


def _index_torch(path: Path, fh, base: int, size: int, pick, crc: bool) -> list[_Entry] | None:
    """The tensors of the state_dict ``pick(obj)`` of the ``torch.save`` archive at ``base`` of ``fh``: torch reads
    the pickle and the zip directory (``map_location="meta"``: no tensor data) and reports each storage's offset;
    None when it does not (a future torch, the legacy format) or a tensor is not a dense view of its own storage.
    crc: give each tensor that is a whole zip record the record's CRC-32 (checked as it is read)."""
    try:
        obj = torch.load(_Window(fh, base, size), map_location="meta", weights_only=True)
        headers, records = _zip_crcs(_Window(fh, base, size))
    except Exception:  # noqa: BLE001 - the caller falls back to torch's own reader, which reports the error
        return None
    out = []
    for name, t in pick(obj).items():
        st = t.untyped_storage()
        rec = getattr(st, "_checkpoint_offset", None)
        if not isinstance(rec, int) or not t.is_contiguous():
            return None
        e = _Entry(name, t.dtype, tuple(t.shape), offset=base + rec + t.storage_offset() * t.dtype.itemsize)
        j = bisect.bisect_right(headers, rec) - 1
        rcrc, rsize = records[j] if j >= 0 else (0, -1)
        whole = t.storage_offset() == 0 and rsize == st.nbytes() == e.nbytes
        out.append(dataclasses.replace(e, crc=rcrc if crc and whole and (rcrc or not e.nbytes) else None))
    return sorted(out, key=lambda e: e.offset)


def _entries(tensors: dict[str, torch.Tensor]) -> list[_Entry]:
    return [_Entry(k, v.dtype, tuple(v.shape), data=v.contiguous()) for k, v in tensors.items()]


def _index_realnet(path: Path) -> list[_Entry]:
    """The model tensors of a realnet checkpoint. Integrity: the payload's length against the header, and the CRC-32
    that torch records for each storage, checked as the model's bytes are read (the optimizer's momentum is not
    read); a file without those CRCs has the SHA-256 of its whole payload checked instead."""
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
        out = _index_torch(path, fh, n + 40, size, lambda obj: _model_of(obj, path), crc=True)
    if out is not None and all(e.crc is not None for e in out):
        return out
    return _entries(_realnet_model(path))


def _model_of(obj, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict):
        raise CheckpointError(f"unexpected checkpoint format in {str(path)!r} (no model state_dict)")
    return obj["model"]


def _realnet_model(path: Path) -> dict[str, torch.Tensor]:
    """The model state_dict of a realnet checkpoint, checksum verified by streaming (no copy of the file)."""
    n = len(MAGIC)
    with open(path, "rb") as fh:
        head = fh.read(n + 40)
        size = int.from_bytes(head[n:n + 8], "little")
        h = hashlib.sha256()
        while chunk := fh.read(1 << 22):
            h.update(chunk)
        if h.digest() != head[n + 8:n + 40]:
            raise CheckpointError(f"corrupt checkpoint {str(path)!r}: SHA-256 of the payload does not match")
        return _model_of(_load_mapped(path, fh, n + 40, size), path)


def _load_mapped(path: Path, fh, offset: int, size: int):
    """The ``torch.save`` payload at ``offset`` of ``path``, its storages memory-mapped; torch's own reader when its
    private loader is not there (a future torch), which reads every storage."""
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


def _index(path) -> list[_Entry]:
    """The tensors of one checkpoint file (realnet, ``torch.save`` state_dict or ``.safetensors``), in file order,
    without reading their data where the format says where it is."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {str(path)!r}")
    if path.suffix == ".safetensors":
        return _index_safetensors(path)
    with open(path, "rb") as fh:
        if fh.read(len(MAGIC)) == MAGIC:
            return _index_realnet(path)
        out = _index_torch(path, fh, 0, path.stat().st_size, lambda obj: _state_dict_of(obj, path), crc=False)
    if out is not None:
        return out
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is named in one line
        raise ValueError(f"cannot read {str(path)!r} as a torch.save state_dict: {str(e).splitlines()[0]}") from None
    return _entries(_state_dict_of(obj, path))


class _Reader:
    """Positioned reads (``os.preadv``) of one file's tensors, byte ranges in order; the CRC-32 of a tensor that
    has one is checked when its last byte is read."""

    def __init__(self, path: Path):
        self.path, self._fd, self._crc = path, os.open(path, os.O_RDONLY), {}

    def close(self) -> None:
        os.close(self._fd)

    def willneed(self, ranges) -> None:
        """Ask the kernel to start reading the byte ``ranges`` [(offset, size), ...] into the page cache: the disk
        works while this process computes (Linux caps one request at the read-ahead size, so it is cut up)."""
        if not hasattr(os, "posix_fadvise"):
            return
        for off, size in _coalesce(ranges):
            for a in range(off, off + size, _ADVICE):
                try:
                    os.posix_fadvise(self._fd, a, min(_ADVICE, off + size - a), os.POSIX_FADV_WILLNEED)
                except OSError:
                    return

    def read(self, e: _Entry, start: int, into: memoryview) -> None:
        """Bytes ``start .. start + len(into)`` of ``e`` into ``into``."""
        if e.data is not None:
            src = e.data.reshape(-1).view(torch.uint8)
            torch.frombuffer(into, dtype=torch.uint8).copy_(src[start:start + len(into)])
        else:
            done = 0
            while done < len(into):
                got = os.preadv(self._fd, [into[done:]], e.offset + start + done)
                if got <= 0:
                    raise CheckpointError(f"truncated checkpoint {str(self.path)!r}: tensor {e.name!r} ends at byte "
                                          f"{e.offset + e.nbytes}, the file at {e.offset + start + done}")
                done += got
        if e.crc is not None:
            c = zlib.crc32(into, self._crc.pop(e.name, 0) if start else 0)
            if start + len(into) < e.nbytes:
                self._crc[e.name] = c
            elif c != e.crc:
                raise CheckpointError(f"corrupt checkpoint {str(self.path)!r}: tensor {e.name!r} does not match "
                                      f"the CRC-32 recorded for it")


def _read_whole(reader: _Reader, e: _Entry) -> torch.Tensor:
    buf = bytearray(e.nbytes)
    if e.nbytes:
        reader.read(e, 0, memoryview(buf))
    return torch.frombuffer(buf, dtype=e.dtype).reshape(e.shape) if e.nbytes else torch.empty(e.shape, dtype=e.dtype)


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """The state_dict in a realnet checkpoint, a ``torch.save`` state_dict file or a ``.safetensors`` file."""
    path = Path(path)
    entries = _index(path)
    reader = _Reader(path)
    try:
        return {e.name: _read_whole(reader, e) for e in entries}
    finally:
        reader.close()


#: input bytes held at a time (two segments of every file: the one summed and the one being read)
_IN_FLIGHT = 64 << 20
#: input bytes the kernel is asked to read ahead of the segment being read (page cache, not this process's memory)
_AHEAD = 256 << 20
#: bytes per read-ahead request
_ADVICE = 4 << 20
#: elements summed at a time (a float64 accumulator and a conversion buffer of 256 KiB each: in a core's L2 cache)
_BLOCK = 1 << 15


def _coalesce(ranges, gap: int = 1 << 16) -> list[tuple[int, int]]:
    """Byte ranges [(offset, size)] merged where they overlap or are less than ``gap`` apart, in order."""
    out: list[list[int]] = []
    for off, size in sorted(r for r in ranges if r[1] > 0):
        if out and off <= out[-1][0] + out[-1][1] + gap:
            out[-1][1] = max(out[-1][1], off + size - out[-1][0])
        else:
            out.append([off, size])
    return [(a, b) for a, b in out]


def _as_real(e: _Entry) -> tuple[torch.dtype, int]:
    """(element dtype, element count) of ``e`` read as reals (a complex number is two)."""
    if e.dtype.is_complex:
        return e.dtype.to_real(), 2 * e.numel
    return e.dtype, e.numel


def _segments(sizes: list[int], per: int) -> list[list[tuple[int, int, int]]]:
    """Tensors of ``sizes`` elements cut into runs of ``per`` elements: [[(tensor, start, stop), ...], ...]."""
    segs, seg, room = [], [], per
    for k, n in enumerate(sizes):
        s = 0
        while s < n:
            take = min(n - s, room)
            seg.append((k, s, s + take))
            s, room = s + take, room - take
            if room == 0:
                segs.append(seg)
                seg, room = [], per
    return segs + ([seg] if seg else [])


def _check_same_architecture(indexes: list[list[_Entry]], paths: list[Path]) -> None:
    ref = {e.name: e for e in indexes[0]}
    for p, idx in zip(paths[1:], indexes[1:]):
        for e in idx:
            r = ref.get(e.name)
            if r is None:
                raise ValueError(f"{str(p)!r} has tensor {e.name!r} that {str(paths[0])!r} lacks: checkpoints of "
                                 f"different architectures cannot be averaged")
            if e.shape != r.shape:
                raise ValueError(f"tensor {e.name!r} has shape {e.shape} in {str(p)!r} but {r.shape} in "
                                 f"{str(paths[0])!r}: checkpoints of different architectures cannot be averaged")
            if (e.summed, e.dtype.is_complex) != (r.summed, r.dtype.is_complex):
                raise ValueError(f"tensor {e.name!r} is {e.dtype} in {str(p)!r} but {r.dtype} in {str(paths[0])!r}: "
                                 f"checkpoints of different architectures cannot be averaged")
        if len(idx) != len(ref):
            missing = sorted(set(ref) - {e.name for e in idx})[:3]
            raise ValueError(f"{str(p)!r} lacks tensors {missing} that {str(paths[0])!r} has: checkpoints of "
                             f"different architectures cannot be averaged")


def check_compatible(paths) -> None:
    """ValueError naming the file and the tensor where the state_dicts in ``paths`` differ from the first's (names,
    shapes, floating or not: checkpoints of different architectures); reads only where each file's tensors are."""
    paths = [Path(p) for p in paths]
    if paths:
        _check_same_architecture([_index(p) for p in paths], paths)


def _weighted_sum(readers: list[_Reader], tensors: list[list[_Entry]], w: list[float], out: list[torch.Tensor],
                  pool: ThreadPoolExecutor) -> None:
    """``out[k] = sum_i w[i] * tensors[i][k]`` (flat views of the result tensors), summed in float64 in order
    i = 0, 1, ... and rounded once to ``out[k]``'s dtype. The files are read in step, segment by segment, in the
    ``pool``'s thread while the previous segment is summed here block by block in cache; the thread also asks the
    kernel to read ahead and touches the result's fresh pages of the segment it reads."""
    n = len(readers)
    reals = [[_as_real(e) for e in row] for row in tensors]
    widest = max(dt.itemsize for row in reals for dt, _ in row)
    segs = _segments([c for _, c in reals[0]], max(_BLOCK, _IN_FLIGHT // (2 * n * widest)))
    cap = max(sum(-(-(b - a) * widest // 64) * 64 for _, a, b in seg) for seg in segs)
    bufs = [[torch.empty(cap, dtype=torch.uint8) for _ in range(n)] for _ in range(2)]
    ahead = max(1, _AHEAD // max(1, sum(b - a for _, a, b in segs[0]) * widest * n))

    def advise(s: int) -> None:
        if s < len(segs):
            for i in range(n):
                sz = reals[i]
                readers[i].willneed([(tensors[i][k].offset + a * sz[k][0].itemsize, (b - a) * sz[k][0].itemsize)
                                     for k, a, b in segs[s] if tensors[i][k].offset >= 0])

    def load(s: int) -> list[list[torch.Tensor]]:
        for t in range(ahead if s == 0 else 1):
            advise(s + ahead - 1 + t if s else t)
        views = []
        for i in range(n):
            buf, pos, row = bufs[s % 2][i], 0, []
            mv = memoryview(buf.numpy())
            for k, a, b in segs[s]:
                size = reals[i][k][0].itemsize
                nb = (b - a) * size
                readers[i].read(tensors[i][k], a * size, mv[pos:pos + nb])
                row.append(buf[pos:pos + nb].view(reals[i][k][0]))
                pos += -(-nb // 64) * 64
            views.append(row)
        for k, a, b in segs[s]:  # the page faults of the result's fresh memory, here rather than in the sum
            out[k][a:b].view(torch.uint8).numpy().fill(0)
        return views

    acc = torch.empty(_BLOCK, dtype=torch.float64)
    tmp = torch.empty(_BLOCK, dtype=torch.float64)
    pending = pool.submit(load, 0) if segs else None
    for s, seg in enumerate(segs):
        views = pending.result()
        pending = pool.submit(load, s + 1) if s + 1 < len(segs) else None
        for j, (k, a, b) in enumerate(seg):
            dst, xs = out[k][a:b], [views[i][j] for i in range(n)]
            for c in range(0, b - a, _BLOCK):
                d = min(c + _BLOCK, b - a)
                y = acc[: d - c]
                y.copy_(xs[0][c:d])
                y.mul_(w[0])
                for i in range(1, n):
                    x = xs[i][c:d]
                    if x.dtype != torch.float64:
                        x = tmp[: d - c].copy_(x)
                    y.add_(x, alpha=w[i])
                dst[c:d].copy_(y)


def average_checkpoints(paths, weights) -> dict[str, torch.Tensor]:
    r""":math:`\sum_i w_i\,\mathrm{sd}_i` of the state_dicts in ``paths`` (realnet checkpoints, ``torch.save``
    state_dicts, ``.safetensors``; mixed formats are fine), summed in float64 in path order and rounded once.

    weights: one finite real per path, summing to 1 within :data:`WEIGHT_SUM_TOL` (paths of weight 0 are not
    read). Floating tensors are averaged and returned in the dtype of the last path read; integer and bool
    tensors (``num_batches_tracked``) are those of the last path with non-zero weight. The files are read in step,
    a few MiB of each at a time, into the result's own tensors (memory: the result plus 64 MiB; a realnet
    checkpoint's optimizer state is not read). ValueError naming ``weights`` (length, finiteness, sum) or the
    offending file and tensor (missing / extra keys, a shape mismatch: checkpoints of different architectures; a
    checksum mismatch); FileNotFoundError naming a missing file.
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
    upaths = [p for p, _ in used]
    readers: list[_Reader] = []
    with ThreadPoolExecutor(1, thread_name_prefix="posthoc-read") as pool:
        try:
            indexes = []
            for p in upaths:  # the disk starts on a file while the next one's index is read
                indexes.append(_index(p))
                readers.append(_Reader(p))
                first = _coalesce((e.offset, e.nbytes) for e in indexes[-1] if e.summed and e.offset >= 0)
                pool.submit(readers[-1].willneed, _head(first, _AHEAD // len(upaths)))
            _check_same_architecture(indexes, upaths)
            last = indexes[-1]
            order = [e.name for e in indexes[0] if e.summed]
            by_name = [{e.name: e for e in idx} for idx in indexes]
            result = {e.name: torch.empty(e.shape, dtype=e.dtype) for e in last}
            flat = [(torch.view_as_real(result[k]) if result[k].is_complex() else result[k]).view(-1) for k in order]
            _weighted_sum(readers, [[d[k] for k in order] for d in by_name], [x for _, x in used], flat, pool)
            for e in last:
                if not e.summed:
                    result[e.name] = _read_whole(readers[-1], e)
        finally:
            pool.shutdown(wait=True)
            for r in readers:
                r.close()
    return result


def _head(ranges: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """The first ``size`` bytes of the byte ``ranges``."""
    out = []
    for off, n in ranges:
        if size <= 0:
            break
        out.append((off, min(n, size)))
        size -= n
    return out


def save_state_dict(state_dict: dict[str, torch.Tensor], path) -> Path:
    """Write ``state_dict`` atomically (temporary file, fsync, rename): a ``.safetensors`` file (written here, tensor
    by tensor: no copy of the state_dict in memory; ValueError naming a tensor of a dtype the format has no name for)
    or anything else by ``torch.save``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        header, tensors, pos = {}, [], 0
        for name, v in state_dict.items():
            if v.dtype not in _SAFETENSORS_NAMES:
                raise ValueError(f"tensor {name!r} has dtype {v.dtype}, which a .safetensors file cannot hold "
                                 f"(it holds {', '.join(map(str, _SAFETENSORS_NAMES))})")
            t = v.detach().cpu().contiguous()
            header[name] = {"dtype": _SAFETENSORS_NAMES[t.dtype], "shape": list(t.shape),
                            "data_offsets": [pos, pos + t.numel() * t.element_size()]}
            tensors.append(t)
            pos += t.numel() * t.element_size()
        head = json.dumps(header, separators=(",", ":")).encode()
        head += b" " * (-len(head) % 8)  # the data starts 8-byte aligned
        with atomic_output(path) as tmp, open(tmp, "wb") as fh:
            fh.write(len(head).to_bytes(8, "little") + head)
            for t in tensors:
                if t.numel():
                    fh.write(t.reshape(-1).view(torch.uint8).numpy())
    else:
        with atomic_output(path) as tmp:
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
