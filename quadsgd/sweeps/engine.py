"""The sweep engine: ``sweep(fn, grid, executor)`` -> one tidy table, computed in parallel, resumable.

``executor``: ``None`` (a local forkserver process pool), ``"serial"``, any ``concurrent.futures`` executor or a
Dask ``distributed.Client``. The arguments, the grid and every point's id, seed and validity are checked before
any file is touched; a failing point's traceback is reported.

Results directory (``out``)::

    DIR/results.parquet   the table of the current grid (written atomically at the end of a run,
                          with the run metadata in the Parquet key-value metadata "quadsgd.sweep")
    DIR/run.json          seed, fingerprint, provenance (sgdtraj.provenance.provenance: versions, git,
                          git_dirty, platform, host, command), counts, status, history
    DIR/spec.toml         (run_spec) a copy of the spec
    DIR/parts/*.parquet   the durable store (:mod:`quadsgd.sweeps.store`)

Point ids: ``point_id = sha256("quadsgd-sweep-v1", fingerprint, canonical JSON of the parameters)[:16]`` (the
fingerprint: the function and the sweep seed). A re-run computes only the points not in the store (resume); each
point appears once in the table. Seeds: with ``seed=s``, ``fn`` also receives ``seed=point_seed(s, point)``, 63
bits of ``sha256("quadsgd-seed-v1", s, canonical JSON of the parameters)`` -- independent of workers and order.
A directory is locked while written and marked (:func:`sgdtraj.outputs.claim_output`, kind ``"sweep"``):
``sweep(fn, grid, out=DIR)`` uses DIR as a shared store, :func:`quadsgd.sweeps.run_spec` claims it for one spec;
a directory holding anything else is refused before anything is written, and one this call created is removed
when it fails before any result was stored. Pool workers exit when the main process dies.
The module's layout and the run's steps: ``docs/sweeps.md``.
"""
from __future__ import annotations

import concurrent.futures as cf
import functools
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np

from sgdtraj.files import atomic_write_bytes, jsonable, write_json
from sgdtraj.provenance import provenance
from sgdtraj.workers import exit_with_parent as _exit_with_parent
from sgdtraj.workers import mp_context as _mp_context

from .designs import cell, expand_grid, point_id, point_label, point_seed, varying_keys
from .store import Store, deps, write_table

__all__ = ["sweep", "SweepError", "RESERVED"]

#: column names a sweep's parameters and outputs may not use (plus ``seed`` in seeded sweeps)
RESERVED = ("point_id", "status", "reason")


class SweepError(RuntimeError):
    """A point failed while the sweep was running (the message names the point and has the worker's traceback)."""


def _check_count(name: str, v) -> None:
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
        raise ValueError(f"{name} must be an integer >= 1, got {v!r}")


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


def init_worker(threads: int, parent: int | None = None) -> None:
    """Process-pool initializer: limit each worker's BLAS / Numba threads (no oversubscription of the cores);
    with ``parent`` (the pid of the sweep's main process), exit as soon as that process is gone."""
    if parent is not None:
        _exit_with_parent(parent)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    # GNU OpenMP (Numba's "omp" layer) busy-waits between parallel regions: on cores shared with other
    # processes that makes Numba's parallel code much slower (benchmarks/results/2026-12-07-numbers-from-docstrings.md);
    # passive waiting costs nothing here
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _set_threads(threads)


def _set_threads(threads) -> None:
    """Numba threads of the calling thread (thread-local). Numba's parallel code called from a worker
    thread of Dask or a thread pool with several threads can be much slower (GNU OpenMP layer; the measured
    slowdown: benchmarks/results/2026-12-07-numbers-from-docstrings.md)."""
    if not threads:
        return
    try:
        import numba

        numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
    except Exception:  # noqa: BLE001 - numba missing or refusing: keep its default
        pass


def _is_dask_client(obj) -> bool:
    mod = type(obj).__module__ or ""
    return mod.startswith("distributed") and hasattr(obj, "get_executor") and hasattr(obj, "nthreads")


def _is_executor(obj) -> bool:
    return obj is None or obj == "serial" or _is_dask_client(obj) or callable(getattr(obj, "submit", None))


_EXECUTOR_HELP = "executor must be None, 'serial', a concurrent.futures executor or a Dask Client"


class _Executor(NamedTuple):
    """An executor ready for :func:`sweep`; ``owned`` ones are shut down at the end of the run."""

    executor: Any
    workers: int          # tasks that run at the same time
    owned: bool
    threads: int | None   # Numba threads each task sets (None: unchanged)
    description: str      # for run.json


def _prepare_executor(executor, max_workers, threads_per_worker) -> _Executor:
    ncpu = os.cpu_count() or 1
    _check_count("threads_per_worker", threads_per_worker)
    if executor is None:
        _check_count("max_workers", max_workers)
        n = max_workers or ncpu
        threads = threads_per_worker or max(1, ncpu // n)
        ex = cf.ProcessPoolExecutor(n, mp_context=_mp_context(), initializer=init_worker,
                                    initargs=(threads, os.getpid()))
        return _Executor(ex, n, True, threads, f"local process pool ({n} workers x {threads} threads)")
    if isinstance(executor, str):
        if executor == "serial":
            return _Executor(_SerialExecutor(), 1, True, threads_per_worker, "serial (in process)")
        raise ValueError(f"{_EXECUTOR_HELP}; got {executor!r}")
    threads = threads_per_worker or 1  # parallelism comes from the points
    if _is_dask_client(executor):
        n = max(1, sum(executor.nthreads().values()))
        addr = getattr(getattr(executor, "scheduler", None), "address", "?")
        return _Executor(executor.get_executor(pure=False), n, True, threads, f"dask {addr} ({n} threads)")
    if callable(getattr(executor, "submit", None)):
        n = getattr(executor, "_max_workers", None) or ncpu
        return _Executor(executor, int(n), False, threads, type(executor).__name__)
    raise ValueError(f"{_EXECUTOR_HELP}; got {type(executor).__name__}")


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
    elif isinstance(ex, cf.ProcessPoolExecutor):
        ex.shutdown(wait=True, cancel_futures=True)
    else:
        ex.shutdown(wait=not interrupted)


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
# The plan: everything decided before any file is touched or any work starts
# =============================================================================================
class _Plan(NamedTuple):
    points: list          # the points, in grid order
    ids: list             # point_id of each point
    seeds: list           # point_seed of each point (None when the sweep is not seeded)
    param_names: list     # parameter columns, first-appearance order
    reserved: frozenset   # columns outputs may not use besides the parameters
    seed: int | None      # the sweep seed
    varying: list         # parameters that differ between points (for labels)
    skipped: dict         # index -> reason of the points ``validate`` refused (on_invalid="skip")

    def label(self, i: int) -> str:
        return point_label(i, self.points[i], self.varying)


def _fn_identity(fn) -> str:
    if isinstance(fn, functools.partial):
        return f"partial({_fn_identity(fn.func)}, {fn.args!r}, {sorted(fn.keywords.items())!r})"
    name = getattr(fn, "__qualname__", None)
    if name is not None:
        return f"{getattr(fn, '__module__', '')}.{name}"
    r = repr(fn)
    return r if " at 0x" not in r else f"{type(fn).__module__}.{type(fn).__qualname__}"


def _check_arguments(fn, executor, on_invalid, batch_size, max_workers, threads_per_worker) -> None:
    if not callable(fn):
        raise ValueError(f"fn must be callable, got {fn!r}")
    if on_invalid not in ("raise", "skip"):
        raise ValueError(f"on_invalid must be 'raise' or 'skip', got {on_invalid!r}")
    _check_count("batch_size", batch_size)
    _check_count("max_workers", max_workers)
    _check_count("threads_per_worker", threads_per_worker)
    if not _is_executor(executor):
        raise ValueError(f"{_EXECUTOR_HELP}; got {executor!r}")


def _plan(fn, grid, seed, fingerprint, validate, on_invalid) -> _Plan:
    """Points, ids, seeds and skipped points; ValueError for a bad grid, duplicate or invalid points."""
    points = expand_grid(grid)
    if not points:
        raise ValueError("the grid has no points")
    param_names = list(dict.fromkeys(k for p in points for k in p))
    reserved = frozenset(RESERVED) | ({"seed"} if seed is not None else frozenset())
    for k in param_names:
        if not isinstance(k, str):
            raise ValueError(f"parameter names must be strings, got {k!r}")
        if k in reserved:
            raise ValueError(f"parameter name {k!r} is reserved (columns {', '.join(sorted(reserved))})")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    default = f"{_fn_identity(fn)}|seed={seed}" if fingerprint is None else fingerprint
    fp_of = fingerprint if callable(fingerprint) else (lambda p: default)
    varying = varying_keys(points)
    ids, where = [], {}
    for i, p in enumerate(points):
        try:
            pid = point_id(p, fp_of(p))
        except TypeError as e:
            raise ValueError(f"{point_label(i, p, varying)}: {e}") from None
        if pid in where:
            raise ValueError(f"points #{where[pid]} and #{i} are identical: {point_label(i, p)}")
        where[pid] = i
        ids.append(pid)
    seeds = [point_seed(seed, p) for p in points] if seed is not None else [None] * len(points)
    skipped = {}
    for i, p in enumerate(points if validate is not None else ()):
        try:
            validate(p)
        except ValueError as e:
            if on_invalid == "raise":
                raise ValueError(f"{point_label(i, p, varying)}: {e} (pass on_invalid='skip' to record "
                                 f"such points as skipped)") from None
            skipped[i] = str(e)
    return _Plan(points, ids, seeds, param_names, reserved, seed, varying, skipped)


def _points_table(plan: _Plan, entries):
    """One pyarrow table of ``entries = [(index, status, columns, reason)]``: ``point_id``, the parameters,
    ``seed``, ``status``, the outputs, ``reason``. SweepError when outputs collide or do not form a table."""
    _, pa, _, _ = deps()
    tabs = []
    for i, status, cols, reason in entries:
        clash = set(cols) & (set(plan.param_names) | plan.reserved)
        if clash:
            raise SweepError(f"{plan.label(i)}: output column {sorted(clash)[0]!r} collides with a parameter "
                             f"or reserved column")
        rows = len(next(iter(cols.values()))) if cols else 1
        data = {"point_id": pa.array([plan.ids[i]] * rows, pa.string())}
        for k in plan.param_names:
            data[k] = [cell(plan.points[i].get(k))] * rows
        if plan.seed is not None:
            data["seed"] = pa.array([plan.seeds[i]] * rows, pa.int64())
        data["status"] = pa.array([status] * rows, pa.string())
        data.update(cols)
        data["reason"] = pa.array([reason] * rows, pa.string())
        try:
            tabs.append(pa.table(data))
        except (pa.ArrowException, TypeError, ValueError) as e:
            raise SweepError(f"{plan.label(i)}: its outputs do not form a table (each column needs one type): "
                             f"{e}") from None
    return pa.concat_tables(tabs, promote_options="permissive")


# =============================================================================================
# The run
# =============================================================================================
@dataclass
class _Run:
    """The state of one call of :func:`sweep` once work may start."""

    plan: _Plan
    fn: Callable
    store: Store | None
    record: dict                                      # run.json
    tables: list = field(default_factory=list)        # tables computed in this run
    start_files: list = field(default_factory=list)   # the store's parts when the run started
    t0: float = field(default_factory=time.perf_counter)

    def persist(self, table) -> None:
        if self.store is not None:
            self.store.write_part(table)
        self.tables.append(table)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _write_run(root, record: dict) -> None:
    """``run.json``: this run's record, with the records of earlier runs of the directory in ``history``."""
    path = root / "run.json"
    hist = []
    if path.exists():
        try:
            old = json.loads(path.read_text())
            hist = old.pop("history", [])
            if old.get("run_id") != record.get("run_id"):
                hist.append(old)
        except (OSError, ValueError):
            pass
    write_json(path, {**record, "history": hist})


def _open(plan: _Plan, fn, out, metadata) -> _Run:
    """The run's record (provenance included) and its store (claimed -- created, locked, marked -- by
    :func:`sgdtraj.outputs.claim_output`; OutputError, a ValueError, when it holds anything but a sweep or
    another process writes to it)."""
    record = {"run_id": f"{time.time_ns()}-{os.getpid()}", "status": "running", "function": _fn_identity(fn),
              "seed": plan.seed, "n_points": len(plan.points), "n_skipped_invalid": len(plan.skipped),
              "argv": list(sys.argv), "started": _now(), **provenance(seed=plan.seed), **(metadata or {})}
    return _Run(plan, fn, Store(out) if out is not None else None, record)


def _begin(run: _Run, config_files) -> list:
    """Write the config files and the first run.json; return the indices of the points still to compute."""
    store = run.store
    if store is None:
        return list(range(len(run.plan.points)))
    for name, text in (config_files or {}).items():
        atomic_write_bytes(store.root / name, text.encode() if isinstance(text, str) else text)
    _write_run(store.root, run.record)
    run.start_files = store.files()
    done = store.done_ids(run.start_files)
    return [i for i, pid in enumerate(run.plan.ids) if pid not in done]


def _completed(ex, fn, batches, plan: _Plan, threads, window: int) -> Iterator[list]:
    """Submit ``batches`` (at most ``window`` in flight) and yield each finished batch's
    ``[(index, columns)]`` as it comes. After a point fails, queued tasks are dropped, running ones
    still yield; then the first failure is raised as SweepError."""
    pending = {}
    queue = iter(batches)
    error = None
    while True:
        while error is None and len(pending) < window:
            b = next(queue, None)
            if b is None:
                break
            pending[ex.submit(_run_batch, fn, [(i, plan.points[i], plan.seeds[i]) for i in b], threads)] = b
        if not pending:
            break
        finished, _ = cf.wait(list(pending), return_when=cf.FIRST_COMPLETED)
        for fut in finished:
            b = pending.pop(fut)
            if fut.cancelled():
                continue
            try:
                results = fut.result()
            except Exception as e:  # noqa: BLE001 - the worker itself failed (died, unpicklable fn, ...)
                if error is None:
                    error = SweepError(f"the task computing {', '.join(plan.label(i) for i in b)} failed: "
                                       f"{type(e).__name__}: {e}")
                continue
            ok = [(i, cols) for i, status, cols in results if status == "ok"]
            if ok:
                yield ok
            bad = [(i, msg) for i, status, msg in results if status == "error"]
            if bad and error is None:
                i, msg = bad[0]
                error = SweepError(f"{plan.label(i)} failed: {msg.splitlines()[0]}\n--- worker traceback ---\n{msg}")
        if error is not None:
            for f in pending:
                f.cancel()  # running tasks finish and are persisted; queued ones are dropped
    if error is not None:
        raise error


def _compute(run: _Run, todo: list, executor, batch_size, max_workers, threads_per_worker, bar) -> None:
    """Record the skipped points of ``todo``, compute the others in batches, persist each batch."""
    plan = run.plan
    skipped = [i for i in todo if i in plan.skipped]
    if skipped:
        run.persist(_points_table(plan, [(i, "skipped", {}, plan.skipped[i]) for i in skipped]))
        bar.update(len(skipped))
    work = [i for i in todo if i not in plan.skipped]
    run.record["n_computed"] = 0
    if not work:
        return
    ex = _prepare_executor(executor, max_workers, threads_per_worker)
    run.record["executor"] = ex.description
    bs = batch_size or max(1, min(16, len(work) // (8 * ex.workers)))
    run.record["batch_size"] = bs
    batches = [work[j:j + bs] for j in range(0, len(work), bs)]
    interrupted = True
    try:
        for ok in _completed(ex.executor, run.fn, batches, plan, ex.threads, max(2, 2 * ex.workers)):
            run.persist(_points_table(plan, [(i, "ok", cols, None) for i, cols in ok]))
            run.record["n_computed"] += len(ok)
            bar.update(len(ok))
        interrupted = False
    except SweepError:
        interrupted = False
        raise
    finally:
        if ex.owned:
            _shutdown(ex.executor, interrupted)


def _assemble(tables, ids, param_names, seeded):
    """The table of the points ``ids`` (in that order) from ``tables`` (stored and new parts)."""
    pd, pa, pc, _ = deps()
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


def _finish(run: _Run):
    """Assemble the table; with a store: write results.parquet (with the run metadata), compact, run.json."""
    _, pa, _, _ = deps()
    plan, store, record = run.plan, run.store, run.record
    stored = store.read(run.start_files) if run.start_files else []  # resumed points (and other sweeps')
    tables = stored + run.tables
    df = _assemble(tables, plan.ids, plan.param_names, plan.seed is not None)
    record["elapsed_s"] = round(time.perf_counter() - run.t0, 3)
    record["finished"] = _now()
    record["status"] = "complete"
    if store is not None:
        table = pa.Table.from_pandas(df, preserve_index=False)
        meta = dict(table.schema.metadata or {})
        meta[b"quadsgd.sweep"] = json.dumps(jsonable({k: v for k, v in record.items() if k != "argv"})).encode()
        write_table(table.replace_schema_metadata(meta), store.root / "results.parquet", fsync=True)
        store.compact(tables, run.start_files + store.written)
        _write_run(store.root, record)
    return df


def _record_failure(run: _Run, e: BaseException) -> None:
    run.record["status"] = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
    run.record["error"] = f"{type(e).__name__}: {e}"
    run.record["elapsed_s"] = round(time.perf_counter() - run.t0, 3)
    try:
        _write_run(run.store.root, run.record)
    except OSError:
        pass


# =============================================================================================
# The engine
# =============================================================================================
def sweep(fn: Callable, grid, executor=None, *, out=None, seed=None, validate=None, on_invalid="raise",
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
    deps()
    _check_arguments(fn, executor, on_invalid, batch_size, max_workers, threads_per_worker)
    plan = _plan(fn, grid, seed, fingerprint, validate, on_invalid)
    # ---- everything above is checked before any file is touched or any work starts
    run = _open(plan, fn, out, metadata)
    try:
        todo = _begin(run, config_files)
        run.record["n_resumed"] = len(plan.points) - len(todo)
        from tqdm.auto import tqdm

        with tqdm(total=len(plan.points), initial=len(plan.points) - len(todo), unit="point", desc=desc,
                  disable=not progress, dynamic_ncols=True, file=sys.stderr) as bar:
            _compute(run, todo, executor, batch_size, max_workers, threads_per_worker, bar)
        return _finish(run)
    except BaseException as e:
        # a directory this call created and wrote no results into is removed again; otherwise the
        # failure is recorded in run.json (finished points stay for the resume)
        if run.store is not None and not run.store.claim.abandon():
            _record_failure(run, e)
        raise
    finally:
        if run.store is not None:
            run.store.close()
