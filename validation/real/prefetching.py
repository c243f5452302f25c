"""Side-trips computed at once in worker processes before the claims read them back: :func:`prefetch`.

Each worker is a separate interpreter (``python -m validation.real._prefetch_worker PARENT_PID``) that reads
one request per line and answers one line (:func:`prefetch_one` does the work); results are the same as
computed one after the other in this process, since every side-trip is a pure function of the run, its step
and its options.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from pathlib import Path

from sgdtraj.outputs import delegate_env, held_output

from .. import timings
from .config import RealConfig
from .context import RealContext

__all__ = ["prefetch", "default_workers", "prefetch_one"]


def default_workers(cfg: RealConfig) -> int:
    """Side-trips computed at once by :func:`prefetch`: on CPU as many as the cores hold at ``cfg.threads`` torch
    threads each, at most 2 (the quick job on 2 cores: 7.6 instead of 12.0 minutes); 1 with ``threads = 0``
    (torch uses every core) and on a GPU (the side-trips share one device)."""
    import torch

    if str(cfg.device).startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available()):
        return 1
    if int(cfg.threads) <= 0:  # torch's own default: every core for one side-trip already
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(2, cores // int(cfg.threads)))


def prefetch(ctx: RealContext, requests, workers: int | None = None, progress: bool = False) -> dict[str, str]:
    """Compute the side-trip ``requests`` (``[(name, key, options), ...]``), ``workers`` at once in worker
    processes.

    ``ctx`` is open (its run trained or checked): every side-trip of the claims that is not already
    finished in ``OUT/sidetrips`` runs in a pool of ``workers`` processes (:func:`default_workers` if None), the
    longest first. Results are the same as computed one after the other (each side-trip is a pure function of
    the run, its step and its options; the claims read them back). Nothing is done with fewer than two pending
    side-trips or one worker: the claims compute them themselves, with their progress bars. A side-trip that
    fails here is left to its claim, which reports the error in its verdict. Returns ``{key: error}`` of the
    side-trips that failed. Workers exit with this process (even on SIGKILL); Ctrl-C stops them.
    """
    import selectors
    import subprocess
    import sys

    from tqdm.auto import tqdm

    cfg = ctx.cfg
    pending: dict[str, tuple] = {}
    for name, key, opts in requests:
        if key not in pending and not ctx.finished(key, opts):
            pending[key] = (name, key, opts)
    workers = default_workers(cfg) if workers is None else int(workers)
    if workers < 2 or len(pending) < 2:
        return {}
    queue = sorted(pending, key=lambda k: -_cost_hint(k))  # longest first (unknown: first)
    n = min(workers, len(pending))
    root = str(Path(__file__).resolve().parents[2])  # the workers import this very checkout of the packages
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, int(cfg.threads) or 1)),
           "PYTHONPATH": os.pathsep.join([root] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    if held_output(ctx.out) is not None:  # OUT is this report's: its side-trips may be written by the workers
        env.update(delegate_env(ctx.out))
    procs = [subprocess.Popen([sys.executable, "-m", "validation.real._prefetch_worker", str(os.getpid())],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, env=env)
             for _ in range(n)]
    sel = selectors.DefaultSelector()
    failed: dict[str, str] = {}
    bar = tqdm(total=len(queue), desc=f"side-trips ({n} processes)", unit="trip", disable=not progress)

    def send(p):
        key = queue.pop(0)
        msg = dict(cfg=asdict(cfg), out=str(ctx.out), run=str(ctx.run_dir), request=list(pending[key]))
        p.stdin.write(json.dumps(msg) + "\n")
        p.stdin.flush()

    try:
        busy = 0
        for p in procs:
            sel.register(p.stdout, selectors.EVENT_READ, p)
            send(p)
            busy += 1
        while busy:
            for sk, _ in sel.select():
                p = sk.data
                line = p.stdout.readline()
                if not line:  # the worker died (its side-trip is left to the claim)
                    sel.unregister(p.stdout)
                    busy -= 1
                    failed[f"worker {p.pid}"] = f"exited with {p.wait()}"
                    continue
                reply = json.loads(line)
                if "error" in reply:
                    failed[reply["key"]] = reply["error"]
                for name, rec in reply.get("timings", {}).items():
                    timings.record(name, **rec)
                bar.set_postfix_str(reply["key"])
                bar.update(1)
                if queue:
                    send(p)
                else:
                    sel.unregister(p.stdout)
                    p.stdin.close()
                    busy -= 1
    finally:
        bar.close()
        for p in procs:
            if p.poll() is None and not p.stdin.closed:
                p.terminate()  # interrupted: stop the running side-trips (they resume on the next run)
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
            for f in (p.stdin, p.stdout):
                if f is not None and not f.closed:
                    f.close()
    return failed


# CPU seconds of one replicate's side-trips in the quick job (2-core CPU, 2026-12-07): only the order in which
# prefetch submits them depends on these (longest first keeps both workers busy until the end)
_COST_HINT_S = {"linear-fit": 154, "divergence": 153, "fixed-batch": 40, "lr-sweep-b256": 30, "averaging": 32,
                "alignment": 20, "lr-sweep-b32": 7, "lr-sweep-b8": 2}


def _cost_hint(key: str) -> float:
    """The cost hint of a side-trip key (a replicate's ``-r<i>`` suffix ignored; unknown: infinite)."""
    base, _, tail = key.rpartition("-r")
    return _COST_HINT_S.get(base if base and tail.isdigit() else key, math.inf)


def prefetch_one(cfg: dict, out: str, run_dir: str, request: tuple) -> dict[str, dict]:
    """Worker: one side-trip into OUT/sidetrips/<key> (no progress bar); returns its timing records."""
    timings.reset()
    ctx = RealContext.attach(RealConfig(**cfg), out, run_dir)
    name, key, opts = request
    ctx.sidetrip(name, key, opts)
    return {k: {kk: vv for kk, vv in v.items() if kk != "time"} | {"worker": os.getpid()}
            for k, v in timings.records().items()}
