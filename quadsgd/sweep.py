r"""Parameter sweeps: grid or random designs, computed in parallel, collected as one tidy table, resumable.

:func:`sweep` is the engine: ``sweep(fn, grid, executor)`` calls ``fn(**point)`` for every point of
``grid`` on an executor (default: a local process pool; any ``concurrent.futures``-style executor;
a Dask ``distributed.Client`` as is) and returns a :class:`pandas.DataFrame` with one row per point x
output and the parameters as columns. :func:`run_spec` runs a TOML spec of the built-in quantities
(:mod:`quadsgd.quantities`) and draws its figures; ``python -m quadsgd sweep SPEC.toml --out DIR``
is its command line.

Results directory (``out``)
---------------------------
::

    DIR/results.parquet   the table of the current grid (written atomically at the end of a run,
                          with the run metadata in the Parquet key-value metadata "quadsgd.sweep")
    DIR/run.json          seed, fingerprint, package versions, git hash, counts, status, history
    DIR/spec.toml         (run_spec) a copy of the spec
    DIR/parts/*.parquet   the durable store: one part per finished batch of points, each written to
                          a temporary file and moved into place with os.replace, so a killed run
                          loses at most its in-flight batches; consolidated into one compact part
                          (again atomically) at the end of a run

Every point has a stable id, ``point_id = sha256("quadsgd-sweep-v1", fingerprint, canonical JSON of
the parameters)[:16]`` (the fingerprint identifies the computation: the function and the sweep seed).
A re-run computes only the points whose id is not in the store (resume); each point appears exactly
once in the table however often the run was interrupted. A directory is locked (``fcntl.flock``)
while a sweep writes to it.

Seeds
-----
With ``seed=s``, ``fn`` also receives ``seed=point_seed(s, point)``: 63 bits of
``sha256("quadsgd-seed-v1", s, canonical JSON of the parameters)``, so a point's random stream depends
on its parameters and the sweep seed only, not on the worker count, the order or the batch.
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import importlib.metadata
import inspect
import itertools
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "sweep", "run_spec", "load_spec", "Spec", "expand_grid", "random_design", "product_design",
    "point_id", "point_seed", "draw_figures", "environment_info", "SweepError", "SpecError",
]

_ID_TAG = "quadsgd-sweep-v1"
_SEED_TAG = "quadsgd-seed-v1"
_RESERVED = ("point_id", "status", "reason")
_MAX_POINTS = 10_000_000


class SweepError(RuntimeError):
    """A point failed while the sweep was running (the message names the point and has the worker's traceback)."""


class SpecError(ValueError):
    """A sweep spec is invalid: unknown key, wrong type, missing parameter, unstable point, ..."""


# =============================================================================================
# Canonical parameters, ids and seeds
# =============================================================================================
def _canon(v):
    if isinstance(v, np.generic):
        v = v.item()
    if v is None or isinstance(v, (bool, str, int)):
        return v
    if isinstance(v, float):
        return v
    if isinstance(v, np.ndarray):
        return [_canon(x) for x in v.tolist()]
    if isinstance(v, (list, tuple)):
        return [_canon(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _canon(x) for k, x in v.items()}
    raise TypeError(f"parameter values must be numbers, strings, booleans, None or lists of them; "
                    f"got {v!r} ({type(v).__name__})")


def _canonical_json(params: dict) -> str:
    return json.dumps({str(k): _canon(v) for k, v in params.items()}, sort_keys=True,
                      separators=(",", ":"), allow_nan=True)


def point_id(params: dict, fingerprint: str = "") -> str:
    """Stable id of a point: 16 hex digits of sha256 over the fingerprint and the canonical JSON of ``params``.

    Canonical JSON: keys sorted, floats by their shortest round-trip repr, tuples/arrays as lists, so the
    id does not depend on key order; ``1`` and ``1.0`` are different values (the spec layer normalizes types).
    """
    h = hashlib.sha256(f"{_ID_TAG}\0{fingerprint}\0{_canonical_json(params)}".encode())
    return h.hexdigest()[:16]


def point_seed(seed: int, params: dict) -> int:
    """Seed of a point's random stream: 63 bits of sha256 over the sweep seed and the canonical parameters."""
    h = hashlib.sha256(f"{_SEED_TAG}\0{int(seed)}\0{_canonical_json(params)}".encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


def _cell(v):
    """Value of a parameter as a table cell: scalars as they are, lists/dicts as canonical JSON strings."""
    if isinstance(v, np.generic):
        v = v.item()
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return json.dumps(_canon(v), separators=(",", ":"))


def _fmt_value(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt_value(x) for x in v) + "]"
    return repr(v)


def _varying_keys(points) -> list:
    keys = list(dict.fromkeys(k for p in points for k in p))
    out = []
    for k in keys:
        vals = {json.dumps(_canon(p.get(k, None)), sort_keys=True) for p in points}
        if len(vals) > 1:
            out.append(k)
    return out


def _point_label(i: int, p: dict, keys=None) -> str:
    keys = list(p) if keys is None else [k for k in keys if k in p]
    inner = ", ".join(f"{k}={_fmt_value(p[k])}" for k in keys)
    return f"point #{i}" + (f" ({inner})" if inner else "")


# =============================================================================================
# Designs
# =============================================================================================
def expand_grid(grid) -> list[dict]:
    """Points of a design: a dict of lists -> their Cartesian product (last key varies fastest);
    a list of dicts -> those points. Returns a new list of dicts."""
    if isinstance(grid, dict):
        keys = list(grid)
        values = []
        for k in keys:
            v = grid[k]
            if isinstance(v, (range, np.ndarray)):
                v = list(v)
            if not isinstance(v, (list, tuple)) or len(v) == 0:
                raise ValueError(f"grid[{k!r}] must be a non-empty list of values, got {v!r}")
            values.append(list(v))
        n = math.prod(len(v) for v in values)
        if n > _MAX_POINTS:
            raise ValueError(f"the grid has {n} points (more than {_MAX_POINTS}); use a random design")
        return [dict(zip(keys, combo)) for combo in itertools.product(*values)]
    if isinstance(grid, (list, tuple)):
        out = []
        for i, p in enumerate(grid):
            if not isinstance(p, dict):
                raise ValueError(f"grid must be a dict of lists or a list of dicts; item #{i} is {p!r}")
            out.append(dict(p))
        return out
    raise ValueError(f"grid must be a dict of lists or a list of dicts, got {type(grid).__name__}")


def product_design(*designs) -> list[dict]:
    """Cartesian product of lists of points, merging their keys (ValueError if two designs share a key)."""
    out = [{}]
    for d in designs:
        new = []
        for a in out:
            for b in d:
                both = set(a) & set(b)
                if both:
                    raise ValueError(f"parameter {sorted(both)[0]!r} is set by two designs that are combined")
                new.append({**a, **b})
        out = new
    return out


_DISTRIBUTIONS = ("uniform", "loguniform", "int_uniform", "int_loguniform", "choice")


def random_design(distributions: dict, n: int, seed: int = 0) -> list[dict]:
    """``n`` random points: ``{name: {dist: args}}`` with dist one of

    ``uniform = [lo, hi]``, ``loguniform = [lo, hi]`` (lo > 0), ``int_uniform = [lo, hi]`` (inclusive),
    ``int_loguniform = [lo, hi]`` (inclusive, lo >= 1), ``choice = [v1, v2, ...]``.

    Each parameter has its own stream, seeded by (seed, crc32(name)): adding a parameter does not change
    the others' draws. Returns a list of ``n`` dicts of Python scalars.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"random design: n must be an integer >= 1, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"random design: seed must be an integer >= 0, got {seed!r}")
    cols = {}
    for name, spec in distributions.items():
        where = f"random design: {name!r}"
        if not isinstance(spec, dict) or len(spec) != 1:
            raise ValueError(f"{where} must be a table with one of {', '.join(_DISTRIBUTIONS)}, got {spec!r}")
        (dist, args), = spec.items()
        if dist not in _DISTRIBUTIONS:
            raise ValueError(f"{where}: unknown distribution {dist!r}; allowed: {', '.join(_DISTRIBUTIONS)}")
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(str(name).encode())]))
        if dist == "choice":
            if not isinstance(args, (list, tuple)) or not args:
                raise ValueError(f"{where}: choice needs a non-empty list of values, got {args!r}")
            cols[name] = [args[i] for i in rng.integers(0, len(args), int(n))]
            continue
        if (not isinstance(args, (list, tuple)) or len(args) != 2
                or any(isinstance(a, bool) or not isinstance(a, (int, float)) for a in args)):
            raise ValueError(f"{where}: {dist} needs [low, high] numbers, got {args!r}")
        lo, hi = args
        if not (math.isfinite(lo) and math.isfinite(hi)) or hi < lo:
            raise ValueError(f"{where}: {dist} needs finite low <= high, got {args!r}")
        if dist.startswith("int_") and not (float(lo).is_integer() and float(hi).is_integer()):
            raise ValueError(f"{where}: {dist} needs integer bounds, got {args!r}")
        if "log" in dist and lo <= 0:
            raise ValueError(f"{where}: {dist} needs low > 0, got {args!r}")
        if dist == "uniform":
            v = [float(x) for x in rng.uniform(lo, hi, int(n))]
        elif dist == "loguniform":
            v = [float(x) for x in np.exp(rng.uniform(math.log(lo), math.log(hi), int(n)))]
        elif dist == "int_uniform":
            v = [int(x) for x in rng.integers(int(lo), int(hi) + 1, int(n))]
        else:
            x = np.floor(np.exp(rng.uniform(math.log(lo), math.log(hi + 1), int(n))))
            v = [int(t) for t in np.clip(x, lo, hi)]
        cols[name] = v
    return [{k: cols[k][i] for k in cols} for i in range(int(n))]


# =============================================================================================
# Executors
# =============================================================================================
class _SerialExecutor(cf.Executor):
    """Runs each task in the calling process at submit time (debugging, tiny sweeps)."""

    def submit(self, fn, /, *args, **kwargs):
        f = cf.Future()
        try:
            f.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - delivered through the future
            if isinstance(e, KeyboardInterrupt):
                raise
            f.set_exception(e)
        return f


def _init_worker(threads: int) -> None:
    """Process-pool initializer: limit each worker's BLAS / Numba threads (no oversubscription of the cores)."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    # GNU OpenMP (Numba's "omp" layer) busy-waits between parallel regions: on cores shared with other
    # processes that makes Numba's parallel code ~15x slower; passive waiting costs nothing here
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _set_threads(threads)


def _mp_context():
    import multiprocessing as mp

    # forkserver: workers start from a clean process (fork after Numba / Dask threads is unsafe); spawn elsewhere
    return mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")


def _is_dask_client(obj) -> bool:
    mod = type(obj).__module__ or ""
    return mod.startswith("distributed") and hasattr(obj, "get_executor") and hasattr(obj, "nthreads")


def _prepare_executor(executor, max_workers, threads_per_worker):
    """(executor, n_workers, owned, task_threads, description); ``owned`` executors are shut down by
    :func:`sweep`; ``task_threads`` is the Numba thread count each task sets (None: unchanged)."""
    ncpu = os.cpu_count() or 1
    if threads_per_worker is not None and (isinstance(threads_per_worker, bool)
                                           or not isinstance(threads_per_worker, int) or threads_per_worker < 1):
        raise ValueError(f"threads_per_worker must be an integer >= 1, got {threads_per_worker!r}")
    if executor is None:
        if max_workers is not None and (isinstance(max_workers, bool) or not isinstance(max_workers, int)
                                        or max_workers < 1):
            raise ValueError(f"max_workers must be an integer >= 1, got {max_workers!r}")
        n = max_workers or ncpu
        threads = threads_per_worker or max(1, ncpu // n)
        ex = cf.ProcessPoolExecutor(n, mp_context=_mp_context(), initializer=_init_worker, initargs=(threads,))
        return ex, n, True, threads, f"local process pool ({n} workers x {threads} threads)"
    if isinstance(executor, str):
        if executor == "serial":
            return _SerialExecutor(), 1, True, threads_per_worker, "serial (in process)"
        raise ValueError(f"executor must be None, 'serial', a concurrent.futures executor or a Dask Client; "
                         f"got {executor!r}")
    threads = threads_per_worker or 1  # parallelism comes from the points
    if _is_dask_client(executor):
        n = max(1, sum(executor.nthreads().values()))
        addr = getattr(getattr(executor, "scheduler", None), "address", "?")
        return executor.get_executor(pure=False), n, True, threads, f"dask {addr} ({n} threads)"
    if callable(getattr(executor, "submit", None)):
        n = getattr(executor, "_max_workers", None) or ncpu
        return executor, int(n), False, threads, type(executor).__name__
    raise ValueError(f"executor must be None, 'serial', a concurrent.futures executor or a Dask Client; "
                     f"got {type(executor).__name__}")


def _shutdown(ex, interrupted: bool) -> None:
    if isinstance(ex, cf.ProcessPoolExecutor) and interrupted:
        procs = list((getattr(ex, "_processes", None) or {}).values())
        ex.shutdown(wait=False, cancel_futures=True)
        for p in procs:  # stop the in-flight work now; it is recomputed on resume
            try:
                p.terminate()
            except Exception:  # noqa: BLE001
                pass
        for p in procs:
            p.join(timeout=5)
        ex.shutdown(wait=True)  # joins the pool's manager thread
        return
    ex.shutdown(wait=not interrupted, cancel_futures=True) if isinstance(ex, cf.ProcessPoolExecutor) \
        else ex.shutdown(wait=not interrupted)


# =============================================================================================
# Worker side
# =============================================================================================
def _columnar(res) -> dict:
    """fn's return value as equal-length columns {name: list or 1-D array}."""
    if hasattr(res, "columns") and hasattr(res, "to_numpy") and hasattr(res, "__getitem__"):  # DataFrame
        return {str(c): res[c].to_numpy() for c in res.columns}
    if isinstance(res, dict):
        lengths = {}
        for k, v in res.items():
            if isinstance(v, (list, tuple)) or (isinstance(v, np.ndarray) and v.ndim > 0):
                if isinstance(v, np.ndarray) and v.ndim != 1:
                    raise ValueError(f"output {k!r} must be a scalar or 1-D, got shape {v.shape}")
                lengths[k] = len(v)
        if len(set(lengths.values())) > 1:
            raise ValueError(f"outputs must have equal lengths, got {lengths}")
        n = next(iter(lengths.values())) if lengths else 1
        return {str(k): (v if k in lengths else [_scalar(v, k)] * n) for k, v in res.items()}
    if isinstance(res, (list, tuple)):
        if not all(isinstance(r, dict) for r in res):
            raise ValueError("a list returned by fn must hold dicts (one per output row)")
        keys = list(dict.fromkeys(k for r in res for k in r))
        return {str(k): [_scalar(r.get(k), k) for r in res] for k in keys}
    return {"value": [_scalar(res, "value")]}


def _scalar(v, name):
    if isinstance(v, np.generic):
        v = v.item()
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise ValueError(f"output {name!r} must be a number, string, bool or None, got {type(v).__name__}")


def _set_threads(threads) -> None:
    """Numba threads of the calling thread (thread-local). Numba's parallel code called from a worker
    thread of Dask or a thread pool with several threads can be >10x slower (GNU OpenMP layer)."""
    if not threads:
        return
    try:
        import numba

        numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
    except Exception:  # noqa: BLE001 - numba missing or refusing: keep its default
        pass


def _run_batch(fn, items, threads=None):
    """Worker task: ``[(index, "ok", columns) | (index, "error", message)]`` for ``items = [(index, point, seed)]``.

    threads: Numba threads for this task's thread (None: leave as is)."""
    _set_threads(threads)
    out = []
    for i, point, seed in items:
        try:
            kw = dict(point)
            if seed is not None:
                kw["seed"] = seed
            out.append((i, "ok", _columnar(fn(**kw))))
        except Exception as e:  # noqa: BLE001 - reported to the driver with the traceback
            out.append((i, "error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
    return out


# =============================================================================================
# The store: append-only parts + atomic consolidation
# =============================================================================================
def _deps():
    try:
        import pandas as pd
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("quadsgd sweeps need pandas and pyarrow: pip install 'sgd-trajectories[sweep]'") from e
    return pd, pa, pc, pq


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_write_table(table, path: Path, fsync: bool = False) -> None:
    """Write to a temporary file and move it into place (os.replace): readers and a killed writer never
    see a partial file. ``fsync`` also survives a power cut (slow on network file systems)."""
    _, _, _, pq = _deps()
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    if fsync:
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    os.replace(tmp, path)


class _Store:
    """``DIR/parts/*.parquet``: one file per persisted batch; ``DIR/.lock`` held while open."""

    def __init__(self, root):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.parts = self.root / "parts"
        self.parts.mkdir(exist_ok=True)
        self._lock = open(self.root / ".lock", "a+")
        try:
            import fcntl

            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - not POSIX
            pass
        except OSError:
            self._lock.close()
            raise ValueError(f"another sweep is writing to {self.root} (its lock {self.root / '.lock'} is held)") from None
        for tmp in [*self.parts.glob("*.tmp"), *self.root.glob("*.[0-9]*.tmp")]:  # a killed run's, never moved
            tmp.unlink(missing_ok=True)
        self._seq = 0
        self.written = []

    def close(self):
        if not self._lock.closed:
            self._lock.close()

    def files(self) -> list[Path]:
        return sorted(self.parts.glob("*.parquet"))

    def write_part(self, table) -> Path:
        self._seq += 1
        path = self.parts / f"part-{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}.parquet"
        _atomic_write_table(table, path)
        self.written.append(path)
        return path

    def done_ids(self, files) -> set:
        _, _, _, pq = _deps()
        ids = set()
        for f in files:
            ids.update(pq.read_table(f, columns=["point_id"]).column(0).to_pylist())
        return ids

    def read(self, files=None) -> list:
        """Tables of the parts, each point once (the first file holding it wins)."""
        _, pa, pc, pq = _deps()
        seen = set()
        out = []
        for f in (self.files() if files is None else files):
            t = pq.read_table(f)
            if seen:
                t = t.filter(pc.invert(pc.is_in(t["point_id"], value_set=pa.array(sorted(seen), pa.string()))))
            ids = set(t["point_id"].to_pylist())
            seen |= ids
            if t.num_rows:
                out.append(t)
        return out

    def compact(self, tables, files) -> None:
        """Replace the part ``files`` by one part holding ``tables`` (their content, each point once):
        the new part is in place (atomically) before the old ones are removed, so a kill in between
        leaves duplicates, which :meth:`read` drops."""
        _, pa, _, _ = _deps()
        if len(files) <= 1:
            return
        if tables:
            _atomic_write_table(pa.concat_tables(tables, promote_options="permissive"),
                                self.parts / f"compact-{time.time_ns():020d}-{os.getpid()}.parquet")
        for f in files:
            f.unlink(missing_ok=True)


# =============================================================================================
# Run metadata
# =============================================================================================
def _git_hash() -> tuple[str, bool | None]:
    here = Path(__file__).resolve().parent
    try:
        r = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if r.returncode != 0:
            return "unknown", None
        d = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10)
        return r.stdout.strip(), (bool(d.stdout.strip()) if d.returncode == 0 else None)
    except (OSError, subprocess.SubprocessError):
        return "unknown", None


def environment_info() -> dict:
    """Python and package versions, the git hash of the source tree ("unknown" outside git) and the platform."""
    versions = {"python": platform.python_version()}
    for name in ("sgd-trajectories", "numpy", "scipy", "numba", "pandas", "pyarrow", "dask", "distributed",
                 "matplotlib", "tqdm"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    from . import __version__

    versions["quadsgd"] = __version__
    git, dirty = _git_hash()
    return {"versions": versions, "git": git, "git_dirty": dirty, "platform": platform.platform()}


def _fn_identity(fn) -> str:
    import functools

    if isinstance(fn, functools.partial):
        return f"partial({_fn_identity(fn.func)}, {fn.args!r}, {sorted(fn.keywords.items())!r})"
    name = getattr(fn, "__qualname__", None)
    if name is not None:
        return f"{getattr(fn, '__module__', '')}.{name}"
    r = repr(fn)
    return r if " at 0x" not in r else f"{type(fn).__module__}.{type(fn).__qualname__}"


def _write_run(root: Path, info: dict) -> None:
    path = root / "run.json"
    hist = []
    if path.exists():
        try:
            old = json.loads(path.read_text())
            hist = old.pop("history", [])
            if old.get("run_id") != info.get("run_id"):
                hist.append(old)
        except (OSError, ValueError):
            pass
    _atomic_write_bytes(path, (json.dumps({**info, "history": hist}, indent=2, default=str) + "\n").encode())


# =============================================================================================
# The engine
# =============================================================================================
def sweep(fn, grid, executor=None, *, out=None, seed=None, validate=None, on_invalid="raise",
          batch_size=None, max_workers=None, threads_per_worker=None, progress=True, fingerprint=None,
          metadata=None, config_files=None, desc="sweep"):
    r"""Compute ``fn(**point)`` for every point of ``grid``; return one tidy table (one row per point x output).

    Parameters
    ----------
    fn : callable
        ``fn(**point)`` (plus ``seed=`` when ``seed`` is given) returns the outputs of a point: a scalar
        (column ``value``), a dict of scalars (one row), a dict of equal-length 1-D arrays/lists (one row
        per element; scalars are repeated), a list of dicts (one row each) or a DataFrame. Must be
        picklable for process pools / Dask (a module-level function, a ``functools.partial`` of one, or an
        instance of a module-level class).
    grid : dict of lists (Cartesian product, last key fastest) or list of dicts (the points as given).
    executor : None (a local process pool of ``max_workers`` processes, default: all cores, started with
        "forkserver", each with ``threads_per_worker`` Numba threads, default cores // workers), ``"serial"``
        (in this process), any ``concurrent.futures`` executor (not shut down), or a Dask
        ``distributed.Client`` (used through ``client.get_executor(pure=False)``).
    out : directory, optional
        Persist results there and resume: points already stored are not recomputed (module docstring).
    seed : int, optional
        Sweep seed; ``fn`` then gets ``seed=point_seed(seed, point)`` and the table a ``seed`` column.
    validate : callable, optional
        ``validate(point)`` is called for every point before any work; a ValueError either stops the
        sweep (``on_invalid="raise"``: ValueError naming the point) or marks the point skipped
        (``on_invalid="skip"``: one row with ``status="skipped"`` and the message in ``reason``).
    batch_size : int, optional
        Points per task (default: about 8 tasks per worker, at most 16 points per task). With ``out``,
        a killed run loses at most the tasks in flight.
    progress : bool
        tqdm progress bar counting points (stderr).
    fingerprint : str or callable(point) -> str, optional
        Identity of the computation in the point ids (default: fn's qualified name and the seed).
    metadata, config_files : extra entries for ``run.json``; ``{filename: text}`` written into ``out``.

    Returns
    -------
    pandas.DataFrame with columns ``point_id``, the parameters (lists as JSON strings), ``seed`` (if
    seeded), ``status`` ("ok" / "skipped"), the outputs, ``reason``; rows in grid order, each point's
    output rows in the order fn returned them. Identical for any executor, worker count, batch size and
    any number of interruptions and resumes.

    Raises
    ------
    ValueError before any work (bad grid, duplicate points, invalid point); SweepError when fn raises
    for a point (after the finished points are persisted); KeyboardInterrupt passes through (finished
    points stay persisted).
    """
    pd, pa, pc, pq = _deps()
    if not callable(fn):
        raise ValueError(f"fn must be callable, got {fn!r}")
    if on_invalid not in ("raise", "skip"):
        raise ValueError(f"on_invalid must be 'raise' or 'skip', got {on_invalid!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    for name, v in (("max_workers", max_workers), ("threads_per_worker", threads_per_worker)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if not (executor is None or executor == "serial" or _is_dask_client(executor)
            or callable(getattr(executor, "submit", None))):
        raise ValueError(f"executor must be None, 'serial', a concurrent.futures executor or a Dask Client; "
                         f"got {executor!r}")
    points = expand_grid(grid)
    if not points:
        raise ValueError("the grid has no points")
    n = len(points)
    param_names = list(dict.fromkeys(k for p in points for k in p))
    reserved = set(_RESERVED) | ({"seed"} if seed is not None else set())
    for k in param_names:
        if not isinstance(k, str):
            raise ValueError(f"parameter names must be strings, got {k!r}")
        if k in reserved:
            raise ValueError(f"parameter name {k!r} is reserved (columns {', '.join(sorted(reserved))})")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    fp_default = f"{_fn_identity(fn)}|seed={seed}"
    fp_of = fingerprint if callable(fingerprint) else (lambda p: fp_default if fingerprint is None else fingerprint)
    varying = _varying_keys(points)
    ids, where = [], {}
    for i, p in enumerate(points):
        try:
            pid = point_id(p, fp_of(p))
        except TypeError as e:
            raise ValueError(f"{_point_label(i, p, varying)}: {e}") from None
        if pid in where:
            raise ValueError(f"points #{where[pid]} and #{i} are identical: {_point_label(i, p)}")
        where[pid] = i
        ids.append(pid)
    seeds = [point_seed(seed, p) for p in points] if seed is not None else [None] * n
    skipped = {}
    if validate is not None:
        for i, p in enumerate(points):
            try:
                validate(p)
            except ValueError as e:
                if on_invalid == "raise":
                    raise ValueError(f"{_point_label(i, p, varying)}: {e} (pass on_invalid='skip' to record "
                                     f"such points as skipped)") from None
                skipped[i] = str(e)
    # ---- everything above is checked before any file is touched or any work starts
    store = _Store(out) if out is not None else None
    run = {"run_id": f"{time.time_ns()}-{os.getpid()}", "status": "running", "function": _fn_identity(fn),
           "seed": seed, "n_points": n, "n_skipped_invalid": len(skipped), "argv": list(sys.argv),
           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **environment_info(), **(metadata or {})}
    t0 = time.perf_counter()
    memory = []
    try:
        if store is not None:
            for name, text in (config_files or {}).items():
                _atomic_write_bytes(store.root / name, text.encode() if isinstance(text, str) else text)
            _write_run(store.root, run)
        start_files = store.files() if store is not None else []
        done = store.done_ids(start_files) if store is not None else set()
        todo = [i for i in range(n) if ids[i] not in done]
        run["n_resumed"] = n - len(todo)

        def table_of(entries):
            tabs = []
            for i, status, cols, reason in entries:
                clash = set(cols) & (set(param_names) | reserved)
                if clash:
                    raise SweepError(f"{_point_label(i, points[i], varying)}: output column "
                                     f"{sorted(clash)[0]!r} collides with a parameter or reserved column")
                rows = len(next(iter(cols.values()))) if cols else 1
                data = {"point_id": pa.array([ids[i]] * rows, pa.string())}
                for k in param_names:
                    data[k] = [_cell(points[i].get(k))] * rows
                if seed is not None:
                    data["seed"] = pa.array([seeds[i]] * rows, pa.int64())
                data["status"] = pa.array([status] * rows, pa.string())
                for k, v in cols.items():
                    data[k] = v
                data["reason"] = pa.array([reason] * rows, pa.string())
                try:
                    tabs.append(pa.table(data))
                except (pa.ArrowException, TypeError, ValueError) as e:
                    raise SweepError(f"{_point_label(i, points[i], varying)}: its outputs do not form a table "
                                     f"(each column needs one type): {e}") from None
            return pa.concat_tables(tabs, promote_options="permissive")

        def persist(table):
            if store is not None:
                store.write_part(table)
            memory.append(table)

        from tqdm.auto import tqdm

        bar = tqdm(total=n, initial=n - len(todo), unit="point", desc=desc, disable=not progress,
                   dynamic_ncols=True, file=sys.stderr)
        try:
            sk = [i for i in todo if i in skipped]
            if sk:
                persist(table_of([(i, "skipped", {}, skipped[i]) for i in sk]))
                bar.update(len(sk))
            work = [i for i in todo if i not in skipped]
            run["n_computed"] = 0
            if work:
                ex, workers, owned, threads, ex_desc = _prepare_executor(executor, max_workers, threads_per_worker)
                run["executor"] = ex_desc
                bs = batch_size or max(1, min(16, len(work) // (8 * workers)))
                run["batch_size"] = bs
                batches = [work[j:j + bs] for j in range(0, len(work), bs)]
                interrupted = True
                try:
                    def on_done(ok):
                        persist(table_of([(i, "ok", cols, None) for i, cols in ok]))
                        run["n_computed"] += len(ok)
                        bar.update(len(ok))

                    _execute(ex, fn, batches, points, seeds, threads, max(2, 2 * workers), on_done,
                             lambda i: _point_label(i, points[i], varying))
                    interrupted = False
                except SweepError:
                    interrupted = False
                    raise
                finally:
                    if owned:
                        _shutdown(ex, interrupted)
        finally:
            bar.close()
        stored = store.read(start_files) if start_files else []  # resumed points (and other sweeps')
        tables = stored + memory
        df = _assemble(tables, ids, param_names, seed is not None)
        run["elapsed_s"] = round(time.perf_counter() - t0, 3)
        run["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        run["status"] = "complete"
        if store is not None:
            table = pa.Table.from_pandas(df, preserve_index=False)
            meta = dict(table.schema.metadata or {})
            meta[b"quadsgd.sweep"] = json.dumps({k: v for k, v in run.items() if k != "argv"}, default=str).encode()
            _atomic_write_table(table.replace_schema_metadata(meta), store.root / "results.parquet", fsync=True)
            store.compact(tables, start_files + store.written)
            _write_run(store.root, run)
        return df
    except BaseException as e:
        if store is not None:
            run["status"] = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
            run["error"] = f"{type(e).__name__}: {e}"
            run["elapsed_s"] = round(time.perf_counter() - t0, 3)
            try:
                _write_run(store.root, run)
            except OSError:
                pass
        raise
    finally:
        if store is not None:
            store.close()


def _execute(ex, fn, batches, points, seeds, threads, window, on_done, label):
    """Submit batches (at most ``window`` in flight), hand finished points to ``on_done`` as they come."""
    pending = {}
    it = iter(batches)
    error = None

    def submit_more():
        while len(pending) < window:
            b = next(it, None)
            if b is None:
                return
            pending[ex.submit(_run_batch, fn, [(i, points[i], seeds[i]) for i in b], threads)] = b

    submit_more()
    while pending:
        finished, _ = cf.wait(list(pending), return_when=cf.FIRST_COMPLETED)
        for fut in finished:
            b = pending.pop(fut)
            if fut.cancelled():
                continue
            try:
                results = fut.result()
            except Exception as e:  # noqa: BLE001 - the worker itself failed (died, unpicklable fn, ...)
                if error is None:
                    error = SweepError(f"the task computing {', '.join(label(i) for i in b)} failed: "
                                       f"{type(e).__name__}: {e}")
                continue
            ok = [(i, cols) for i, status, cols in results if status == "ok"]
            if ok:
                on_done(ok)
            bad = [(i, msg) for i, status, msg in results if status == "error"]
            if bad and error is None:
                i, msg = bad[0]
                error = SweepError(f"{label(i)} failed: {msg.splitlines()[0]}\n--- worker traceback ---\n{msg}")
        if error is not None:
            for f in pending:
                f.cancel()  # running tasks finish and are persisted; queued ones are dropped
        else:
            submit_more()
    if error is not None:
        raise error


def _assemble(tables, ids, param_names, seeded):
    pd, pa, pc, _ = _deps()
    std = ["point_id"] + list(param_names) + (["seed"] if seeded else []) + ["status"]
    if not tables:
        return pd.DataFrame(columns=std + ["reason"])
    t = pa.concat_tables(tables, promote_options="permissive")
    t = t.filter(pc.is_in(t["point_id"], value_set=pa.array(ids, pa.string())))
    # columns only other sweeps in the same store filled (all null here) are not part of this table
    t = t.select([c for c in t.column_names if c in std or c == "reason" or t[c].null_count < t.num_rows])
    # integer columns with missing values (parameters that only some designs use) stay integers
    nullable_ints = {f.name for f in t.schema if pa.types.is_integer(f.type) and t[f.name].null_count}
    df = t.to_pandas()
    for c in nullable_ints:
        df[c] = t[c].to_pandas(types_mapper={t[c].type: pd.Int64Dtype()}.get).astype("Int64")
    order = pd.Series(np.arange(len(ids)), index=pd.Index(ids))
    df = df.assign(_order=df["point_id"].map(order).to_numpy())
    df = df.sort_values("_order", kind="stable").drop(columns="_order").reset_index(drop=True)
    outputs = [c for c in df.columns if c not in std and c != "reason"]
    return df[[c for c in std if c in df.columns] + outputs + ["reason"]]


# =============================================================================================
# Spec files (python -m quadsgd sweep SPEC.toml)
# =============================================================================================
_TOP_KEYS = ("sweep", "params", "grid", "points", "random", "design", "figures")
_SWEEP_KEYS = ("name", "description", "seed", "kernels", "quantities", "on_unstable", "batch_size")
_DESIGN_KEYS = ("name", "kernels", "quantities", "params", "grid", "points", "random")
_FIGURE_KEYS = ("file", "kind", "size", "dpi")
_TABLE_COLUMNS = ("quantity", "kernel", "kappa", "time", "value", "stderr", "status", "seed", "point_id")


@dataclass
class Spec:
    """A validated sweep spec (see :func:`load_spec`)."""

    text: str
    data: dict
    path: str | None
    name: str
    seed: int
    on_unstable: str
    batch_size: int | None
    designs: dict               # design name (None without [[design]]) -> {"kernels", "quantities"}
    points: list                # complete, type-normalized points
    varying: list               # parameters that differ between points
    figures: list = field(default_factory=list)

    def fingerprint(self, point) -> str:
        """Identity of the computation of a point: seed, kernels and quantities of its design."""
        s = self.designs[point.get("design")]
        return json.dumps({"spec": "quadsgd-spec-v1", "seed": self.seed, "kernels": list(s["kernels"]),
                           "quantities": list(s["quantities"])}, sort_keys=True)

    def function(self):
        from .quantities import SpecFunction

        return SpecFunction(self.designs)

    def label(self, i: int) -> str:
        return _point_label(i, self.points[i], self.varying)


def _err(msg):
    return SpecError(msg)


def _check_keys(section: str, table, allowed, kind="key") -> None:
    from .quantities import unknown_name_message

    if not isinstance(table, dict):
        raise _err(f"{section} must be a table, got {table!r}")
    for k in table:
        if k not in allowed:
            raise _err(f"{section}: " + unknown_name_message(kind, k, allowed))


def _names(section, value, allowed, kind, canon=None) -> tuple:
    from .quantities import unknown_name_message

    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise _err(f"{section} must be a non-empty list of names, got {value!r}")
    out = []
    for v in value:
        c = v
        if canon is not None:
            try:
                c = canon(v)
            except ValueError:
                c = None
        if c not in allowed:
            raise _err(f"{section}: " + unknown_name_message(kind, v, allowed))
        if c in out:
            raise _err(f"{section}: {v!r} is listed twice")
        out.append(c)
    return tuple(out)


def load_spec(source) -> Spec:
    """Read and validate a sweep spec (a TOML file path or an already parsed dict).

    Layout (every section optional except what the quantities need)::

        [sweep]     name, description, seed (int >= 0, default 0), kernels (list of names:
                    Last, TwoPoint, NPoint, SWA, EMA, Kernel), quantities (quadsgd.quantities.QUANTITIES),
                    on_unstable ("error" | "skip"), batch_size (points per task)
        [params]    fixed parameters of every point (quadsgd.quantities.PARAMS)
        [grid]      swept parameters: lists, combined as a Cartesian product
        [[points]]  explicit points (tables), combined with [grid] as a product
        [random]    n, seed and {param = {uniform|loguniform|int_uniform|int_loguniform|choice = ...}}
        [[design]]  instead of the three above: several designs (name, kernels, quantities, params,
                    grid, points, random) whose points are joined; the table gets a ``design`` column
        [[figures]] file, kind (quadsgd.quantities.FIGURES), size = [w, h] inches, dpi, and the
                    plotting function's keyword arguments

    Every key, type and range is checked here; a SpecError names the section, the key and the point.
    """
    import tomllib

    from . import quantities as Q

    path = None
    if isinstance(source, dict):
        data = source
        import tomli_w

        text = tomli_w.dumps(data)
    elif isinstance(source, (str, os.PathLike)):
        path = str(source)
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise _err(f"cannot read spec {path}: {e}") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise _err(f"{path} is not valid TOML: {e}") from None
    else:
        raise _err(f"spec must be a path or a dict, got {type(source).__name__}")
    _check_keys("spec", data, _TOP_KEYS, "section")
    sw = data.get("sweep", {})
    _check_keys("[sweep]", sw, _SWEEP_KEYS)
    name = sw.get("name", Path(path).stem if path else "sweep")
    if not isinstance(name, str):
        raise _err(f"[sweep] name must be a string, got {name!r}")
    seed = sw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise _err(f"[sweep] seed must be an integer >= 0, got {seed!r}")
    on_unstable = sw.get("on_unstable", "error")
    if on_unstable not in ("error", "skip"):
        raise _err(f"[sweep] on_unstable must be 'error' or 'skip', got {on_unstable!r}")
    batch_size = sw.get("batch_size")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise _err(f"[sweep] batch_size must be an integer >= 1, got {batch_size!r}")
    default_kernels = sw.get("kernels")
    default_quantities = sw.get("quantities")

    shared = data.get("params", {})
    _check_keys("[params]", shared, [k for k in Q.PARAMS if k != "design"], "parameter")
    if "design" in data:
        for k in ("grid", "points", "random"):
            if k in data:
                raise _err(f"[{k}] cannot be combined with [[design]] blocks: put it inside each [[design]]")
        blocks = data["design"]
        if not isinstance(blocks, list) or not blocks:
            raise _err("[[design]] must be a non-empty array of tables")
    else:
        blocks = [{"grid": data.get("grid", {}), "points": data.get("points", []), "random": data.get("random")}]
    designs = {}
    raw = []  # (point, origin {key: section})
    for bi, blk in enumerate(blocks):
        multi = "design" in data
        where = f"[[design]] #{bi}" if multi else ""
        _check_keys(where or "spec", blk, _DESIGN_KEYS if multi else ("grid", "points", "random"))
        dname = None
        if multi:
            dname = blk.get("name")
            if not isinstance(dname, str) or not dname:
                raise _err(f"{where} needs a name (a non-empty string)")
            if dname in designs:
                raise _err(f"{where}: design name {dname!r} is used twice")
            where = f"[[design]] {dname!r}"
        kn = blk.get("kernels", default_kernels)
        qn = blk.get("quantities", default_quantities)
        if kn is None:
            raise _err(f"{where or '[sweep]'}: kernels is missing (e.g. kernels = [\"Last\", \"EMA\"])")
        if qn is None:
            raise _err(f"{where or '[sweep]'}: quantities is missing (e.g. quantities = [\"stationary_loss\"])")
        kernels = _names(f"{where or '[sweep]'} kernels", kn, list(Q.KERNELS), "kernel", Q.canonical_kernel)
        quantities = _names(f"{where or '[sweep]'} quantities", qn, list(Q.QUANTITIES), "quantity")
        designs[dname] = {"kernels": kernels, "quantities": quantities}
        sec = (lambda s: f"{where} {s}") if multi else (lambda s: f"[{s}]")
        fixed = dict(shared)
        origin = {k: "[params]" for k in shared}
        if multi:
            dp = blk.get("params", {})
            _check_keys(sec("params"), dp, [k for k in Q.PARAMS if k != "design"], "parameter")
            fixed.update(dp)
            origin.update({k: sec("params") for k in dp})
        grid = blk.get("grid", {}) or {}
        _check_keys(sec("grid"), grid, [k for k in Q.PARAMS if k != "design"], "parameter")
        own = set(blk.get("params", {}) if multi else shared)  # fixed at the same level as the design

        def conflict(k, section):
            if k in own:
                raise _err(f"{section}: {k!r} is both fixed in {origin[k]} and varied in {section}")

        for k, v in grid.items():
            conflict(k, sec("grid"))
            if not isinstance(v, list) or not v:
                raise _err(f"{sec('grid')} {k} must be a non-empty list of values, got {v!r}"
                           + (" (a list of lists for a list parameter)" if Q.PARAMS[k].kind == "floats" else ""))
        try:
            gpts = expand_grid(grid) if grid else [{}]
        except ValueError as e:
            raise _err(f"{sec('grid')}: {e}") from None
        pts = blk.get("points", []) or []
        if not isinstance(pts, list) or not all(isinstance(p, dict) for p in pts):
            raise _err(f"{sec('points')} must be an array of tables ([[points]])")
        for j, p in enumerate(pts):
            _check_keys(f"{sec('points')} #{j}", p, [k for k in Q.PARAMS if k != "design"], "parameter")
            for k in p:
                conflict(k, f"{sec('points')} #{j}")
                if k in grid:
                    raise _err(f"{sec('points')} #{j}: {k!r} is also swept in {sec('grid')}")
        rnd = blk.get("random")
        rpts = [{}]
        if rnd is not None:
            if not isinstance(rnd, dict):
                raise _err(f"{sec('random')} must be a table")
            rnd = dict(rnd)
            rn = rnd.pop("n", None)
            rseed = rnd.pop("seed", seed)
            _check_keys(sec("random"), rnd, [k for k in Q.PARAMS if k != "design"], "parameter")
            for k in rnd:
                conflict(k, sec("random"))
                if k in grid or any(k in p for p in pts):
                    raise _err(f"{sec('random')}: {k!r} is also set by the grid or the points")
            try:
                rpts = random_design(rnd, rn, rseed)
            except ValueError as e:
                raise _err(f"{sec('random')}: {e}") from None
        combined = product_design(gpts, pts or [{}], rpts)
        if len(raw) + len(combined) > _MAX_POINTS:
            raise _err(f"the spec has more than {_MAX_POINTS} points")
        point_keys = {k for p in pts for k in p}
        for p in combined:
            o = dict(origin)
            o.update({k: sec("grid") for k in grid})
            o.update({k: sec("points") for k in point_keys})
            o.update({k: sec("random") for k in (rnd or {})})
            full = {**fixed, **p}
            if multi:
                full = {"design": dname, **full}
            raw.append((full, o, kernels, quantities))

    varying = _varying_keys([r[0] for r in raw])
    cache = {}
    points = []
    for i, (p, origin, kernels, quantities) in enumerate(raw):
        label = _point_label(i, p, varying)
        norm = {}
        for k, v in p.items():
            if k == "design":
                norm[k] = v
                continue
            key = (k, json.dumps(_canon(v), sort_keys=True) if not isinstance(v, float) else repr(v),
                   type(v).__name__)
            if key not in cache:
                try:
                    cache[key] = (Q.PARAMS[k].coerce(v), None)
                except ValueError as e:
                    cache[key] = (None, str(e))
            val, msg = cache[key]
            if msg is not None:
                raise _err(f"{label}: {msg} (set in {origin.get(k, '[params]')})")
            norm[k] = val
        try:
            full = Q.complete_point(norm, kernels, quantities)
            Q.check_point(full, kernels, quantities)
        except ValueError as e:
            raise _err(f"{label}: {e}") from None
        points.append(full)
    seen = {}
    for i, p in enumerate(points):
        key = _canonical_json(p)
        if key in seen:
            raise _err(f"points #{seen[key]} and #{i} are identical ({_point_label(i, p, varying)})")
        seen[key] = i
    varying = _varying_keys(points)
    figures = _check_figures(data.get("figures", []), designs, points)
    return Spec(text=text, data=data, path=path, name=name, seed=seed, on_unstable=on_unstable,
                batch_size=batch_size, designs=designs, points=points, varying=varying, figures=figures)


def _check_figures(figs, designs, points) -> list:
    from . import quantities as Q

    if not isinstance(figs, list) or not all(isinstance(f, dict) for f in figs):
        raise _err("[[figures]] must be an array of tables")
    computed = {q for d in designs.values() for q in d["quantities"]}
    columns = set(Q.PARAMS) | set(_TABLE_COLUMNS) | {k for p in points for k in p}
    out, files = [], set()
    for j, f in enumerate(figs):
        where = f"[[figures]] #{j}"
        file = f.get("file")
        if not isinstance(file, str) or not file or os.path.isabs(file) or ".." in Path(file).parts:
            raise _err(f"{where}: file must be a relative file name like 'loss.png', got {file!r}")
        if Path(file).suffix.lower() not in (".png", ".pdf", ".svg"):
            raise _err(f"{where}: file {file!r} must end in .png, .pdf or .svg")
        if file in files:
            raise _err(f"{where}: file {file!r} is used twice")
        files.add(file)
        where = f"[[figures]] {file!r}"
        kind = f.get("kind")
        if kind not in Q.FIGURES:
            raise _err(f"{where}: " + Q.unknown_name_message("figure kind", kind, list(Q.FIGURES)))
        fig = Q.FIGURES[kind]
        sig = inspect.signature(fig.func)
        kwargs = [p for p in sig.parameters if p not in ("ax", "table")]
        _check_keys(where, f, list(_FIGURE_KEYS) + kwargs, "figure option")
        for p, prm in sig.parameters.items():
            if p in ("ax", "table"):
                continue
            if prm.default is inspect.Parameter.empty and p not in f:
                raise _err(f"{where}: option {p!r} is required for kind {kind!r}")
        size = f.get("size", [6.4, 4.4])
        if (not isinstance(size, list) or len(size) != 2
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x <= 50 for x in size)):
            raise _err(f"{where}: size must be [width, height] in inches (0, 50], got {size!r}")
        dpi = f.get("dpi", 150)
        if isinstance(dpi, bool) or not isinstance(dpi, int) or not 20 <= dpi <= 1200:
            raise _err(f"{where}: dpi must be an integer in [20, 1200], got {dpi!r}")
        needs = [f[k] for k in ("quantity", "reference") if isinstance(f.get(k), str)]
        for q in needs:
            if q not in computed:
                raise _err(f"{where}: quantity {q!r} is not computed (quantities: {', '.join(sorted(computed))})")
        if fig.needs_any and not computed & set(fig.needs_any):
            raise _err(f"{where}: kind {kind!r} needs one of the quantities {', '.join(fig.needs_any)}")
        for k in ("x", "y"):
            if k in f and f[k] not in columns:
                raise _err(f"{where}: {k} = {f[k]!r} is not a column; columns: {', '.join(sorted(columns))}")
        sel = f.get("select")
        if sel is not None:
            conds = [sel] if isinstance(sel, dict) else sel
            if not isinstance(conds, list) or not all(isinstance(c, dict) for c in conds):
                raise _err(f"{where}: select must be a table or an array of tables")
            for c in conds:
                for k in c:
                    if k not in columns:
                        raise _err(f"{where}: select " + Q.unknown_name_message("column", k, sorted(columns)))
        for k in ("series", "hue"):
            for c in ([f[k]] if isinstance(f.get(k), str) else f.get(k, [])):
                if c not in columns:
                    raise _err(f"{where}: {k} " + Q.unknown_name_message("column", c, sorted(columns)))
        out.append(dict(f))
    return out


def draw_figures(table, figures, out_dir) -> list[Path]:
    """Draw each figure spec (``file``, ``kind``, ``size``, ``dpi``, plot options) from ``table`` into
    ``out_dir`` (each file written to a temporary name and moved into place). Returns the paths."""
    from matplotlib.figure import Figure

    from . import quantities as Q

    paths = []
    for f in figures:
        opts = {k: v for k, v in f.items() if k not in _FIGURE_KEYS}
        fig = Figure(figsize=tuple(f.get("size", [6.4, 4.4])), layout="constrained")
        ax = fig.add_subplot()
        Q.FIGURES[f["kind"]].func(ax, table, **opts)
        path = Path(out_dir) / f["file"]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        fig.savefig(tmp, dpi=f.get("dpi", 150), format=path.suffix.lstrip(".").lower())
        os.replace(tmp, path)
        paths.append(path)
    return paths


def run_spec(spec, out, *, scheduler="local", executor=None, workers=None, threads_per_worker=None,
             skip_unstable=None, batch_size=None, progress=True, figures=True):
    """Run a spec (path, dict or :class:`Spec`) into ``out``; draw its figures; return the table.

    scheduler: "local" (process pool of ``workers``), "serial" (this process) or a Dask scheduler
    address ``tcp://HOST:PORT`` (a ``distributed.Client`` is opened and closed); ``executor`` overrides it.
    skip_unstable: record points with an unstable lr as skipped (default: the spec's ``on_unstable``);
    otherwise such a point is a SpecError before any work. Writes ``out/spec.toml``, ``out/run.json``,
    ``out/results.parquet`` and the figures (see :func:`sweep` for resume and the store).
    """
    from . import quantities as Q

    spec = spec if isinstance(spec, Spec) else load_spec(spec)
    skip = spec.on_unstable == "skip" if skip_unstable is None else bool(skip_unstable)
    if not skip:
        for i, p in enumerate(spec.points):
            try:
                Q.check_stable(p)
            except ValueError as e:
                raise _err(f"{spec.label(i)}: {e}. To record unstable points as skipped instead, set "
                           f"on_unstable = \"skip\" in [sweep] or pass --skip-unstable") from None
    client = None
    if executor is None:
        if scheduler == "local":
            executor = None
        elif scheduler == "serial":
            executor = "serial"
        elif isinstance(scheduler, str) and "://" in scheduler:
            try:
                from distributed import Client
            except ImportError as e:  # pragma: no cover - depends on the install
                raise ImportError("--scheduler ADDRESS needs dask[distributed]") from e
            try:
                client = Client(scheduler, timeout="20s")
            except OSError as e:
                raise _err(f"cannot connect to the Dask scheduler at {scheduler}: {e}") from None
            executor = client
        else:
            raise _err(f"scheduler must be 'local', 'serial' or a Dask address like tcp://HOST:PORT, got {scheduler!r}")
    try:
        df = sweep(spec.function(), spec.points, executor, out=out, seed=spec.seed,
                   validate=Q.check_stable if skip else None, on_invalid="skip",
                   batch_size=batch_size or spec.batch_size, max_workers=workers,
                   threads_per_worker=threads_per_worker, progress=progress, fingerprint=spec.fingerprint,
                   metadata={"spec": spec.name, "spec_path": spec.path, "scheduler": str(scheduler),
                             "on_unstable": "skip" if skip else "error"},
                   config_files={"spec.toml": spec.text}, desc=spec.name)
    finally:
        if client is not None:
            client.close()
    if figures and spec.figures:
        draw_figures(df, spec.figures, out)
    return df
