"""Claims of the paper checked on a real network (realnet runs and side-trips).

``--quick`` trains a ResNet-20 trajectory on the embedded digits data with per-sample augmentation (2,400
constant-lr steps, about two minutes on one CPU core) and runs the side-trips from its checkpoint at 75 % of
the run (step 1,800: the paper's 75k of 100k), where the trajectory is on a plateau and the augmented stream is
not memorised (measured: ``benchmarks/results/2026-12-01-regime-measurements.md``); ``--run DIR`` validates an
existing realnet run (e.g. a GPU ImageNet run) instead, branching from its checkpoint nearest to 75 % of its
length. Every verdict carries the regime premises measured at the branch point (:mod:`validation.premises`:
plateau, not memorised, and Lemma 2's premise for fig. 6 and 7); a claim whose premise fails is still judged.
Side-trip outputs are kept in ``OUT/sidetrips/`` and
reused on a re-run (resume): a finished side-trip whose options are unchanged is read back with
``Result.load(dir)`` (the side-trip registry :data:`realnet.sidetrips.SIDETRIPS` says which result class;
an interrupted one resumes from its saved state; :func:`progress_bars` shows one bar per side-trip),
so the claims read typed fields and arrays of the results, never CSV strings. Thresholds are constants of
this module, fixed before measuring.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from sgdtraj.outputs import OutputError, delegate_env, held_output
from sgdtraj.files import atomic_write_text, read_json, write_json

from . import eq13real, linearfit, plots, posthoc_claim, premises, timings
from .verdict import Verdict

__all__ = ["RealConfig", "REAL_CLAIMS"]

# ---------------------------------------------------------------- thresholds (fixed before measuring)
FIG2_RATIO_MAX = 0.5  # best-step training-batch loss / best-step held-out loss
FIG2_R2_MIN = 0.9  # R^2 of a degree-4 polynomial fit of loss(step size) up to twice the best step
FIG3_TRAIN_BARRIER_MAX = 0.1  # barrier / start loss along the interpolations (training batch)
FIG3_HELDOUT_BARRIER_MAX = 0.25  # same on the held-out batches
FIG5_GAP_MAX = 0.5  # |loss(average) - loss(side-trip)| / |loss(side-trip) - loss(start)|, worst kernel
FIG6_DIST_RATIO_MAX = 0.5  # |two-point average - lr/2 trajectory| / |trajectory - other-batch-order trajectory|
FIG6_LOSS_GAP_MAX = 0.15  # |loss(two-point at lr) - loss(lr/2)| / loss(lr/2)
FIG7_MARGIN_MIN = 0.0  # min_t cos(fixed batch, start) - (mean + 2 std of different-batch cosines)
FIG8_TAIL_MAX = 0.2  # decline over the last third of the path / total decline
FIG8_DECREASE_MIN = 1.2  # first distance / last distance
FIG13_LOGDROP_GAP_MIN = math.log(2.0)  # log-drop(train batch) - log-drop(held-out) at every batch size


@dataclass
class RealConfig:
    """Sizes of the real-network checks and the trajectory trained when no ``--run`` is given.

    The quick defaults are phase 1's measured recommendation (issue 11; the regime measurements in
    ``benchmarks/results/2026-12-01-regime-measurements.md``): on plain digits the 1,197 training images are
    memorised within ~10 epochs and no premise holds; with per-sample augmentation (strength 1.5), a constant lr
    0.2 and weight decay 1e-3 the fresh-batch loss is quasi-stationary from ~2,000 steps on (last quarter /
    quarter before 0.945 at 2,400 steps), held-out / fresh loss is 1.09 at step 1,800, and a fixed batch is not
    fit along 150-300-step side-trips (loss end/start >= 0.59, gradient norm within x1.76).
    """

    run: str | None = None  # existing run directory (skips training)
    dataset: str = "digits"
    data_dir: str | None = None
    model: str = "resnet20"
    width: int = 16  # resnet20 base width
    steps: int = 2400  # main trajectory length (trained runs)
    batch_size: int = 32
    lr: float = 0.2  # constant lr of the main trajectory
    weight_decay: float = 1e-3  # coupled L2 weight decay (shortens the weight norm's relaxation to ~250 steps)
    augment_strength: float = 1.5  # digits: realnet.data.DigitsAugment strength (0 = plain digits; others: 0)
    seed: int = 0
    branch_fraction: float = 0.75  # side-trips start at this fraction of the run (paper: 75k of 100k)
    second_offset_fraction: float = 0.15  # fixed-batch's second checkpoint, later by this fraction
    premise_batches: int = 10  # (b): held-out and fresh training batches at the branch point
    sweep_batch_size: int = 128  # lr-sweep batch (paper: 512 on ImageNet)
    sweep_batch_sizes: list = field(default_factory=lambda: [16, 64, 256])  # Fig. 13
    sweep_num_lrs: int = 49  # step sizes of each lr-sweep's log grid (1e-4 .. 100)
    sweep_heldout_batches: int = 10  # held-out batches of each lr-sweep (paper: >= 10)
    fixed_batch_alphas: int = 11  # interpolation points of fixed-batch (Fig. 3)
    fixed_batch_gd_steps: int = 9  # GD steps on the fixed batch from each checkpoint (paper: 9)
    fixed_batch_heldout_batches: int = 10
    averaging_steps: int = 100  # K of the averaging side-trip
    averaging_kernels: list = field(default_factory=lambda: ["swa", "ema:0.02", "twopoint"])
    bn_batches: int = 10  # update_bn batches before each eval-mode evaluation (averaging, divergence)
    alignment_steps: int = 150  # Fig. 7 side-trips (Lemma 2's premise measured at 150 and 300)
    alignment_batch_pairs: int = 10  # different training batches of the reference cosines (+1)
    divergence_steps: int = 300  # Fig. 6 / 8 and the eq. 13 pairs (the lr/2 loss re-equilibrates in ~300)
    divergence_record_every: int = 10  # distances and Lemma 2's fixed batch recorded every N steps
    eq13_factors: list = field(default_factory=lambda: [0.5, 0.25])  # eq. 13 pairs at lr * f besides lr itself
    eq13_function_points: int = 6  # steps with the pairs' function-space distance (log-spaced, plus the end)
    eq13_function_samples: int = 256
    # linear-model-fit (realnet.sidetrips.linear_fit): top-k Hessian directions on a fixed sample, curvature and
    # noise on fresh batches, a constant-lr continuation of linear_fit_steps updates (>= the length rule's minimum
    # for lags / kernels / blocks: 2,065 for these; 0 = exactly that minimum)
    linear_fit_k: int = 8
    linear_fit_sample_batches: int = 8  # Hessian sample: this many batches of the run's batch size
    linear_fit_steps: int = 0
    linear_fit_lags: int = 10
    linear_fit_kernels: list = field(default_factory=lambda: ["ema:0.1", "twopoint:20", "swa:20"])
    linear_fit_blocks: int = 20  # jackknife blocks
    linear_fit_noise_batches: int = 100
    linear_fit_curvature_batches: int = 16
    eval_samples: int = 2048  # train / validation examples per evaluation
    threads: int = 1  # torch threads: one is faster for this small model on 2 shared cores (32 vs 1.5-40 it/s)
    device: str = "auto"

    @classmethod
    def for_mode(cls, mode, run=None, data_dir=None, dataset=None):
        """``quick``: the defaults. ``full``: the same trajectory (its premises are the measured ones) with longer
        side-trips and larger evaluations. ``dataset`` other than digits (with ``--data-dir``): ResNet-34, batch
        128, lr 0.1, weight decay 1e-4, 20,000 steps, no digits augmentation (the loader's crop + flip)."""
        base = cls() if mode == "quick" else cls(averaging_steps=500, alignment_steps=300, divergence_steps=600,
                                                 eval_samples=10000, fixed_batch_alphas=21, linear_fit_k=16,
                                                 linear_fit_sample_batches=16,
                                                 linear_fit_kernels=["ema:0.02", "twopoint:100", "swa:100"],
                                                 linear_fit_noise_batches=400, linear_fit_curvature_batches=64)
        if dataset and dataset != "digits":
            base = cls(**{**asdict(base), "dataset": dataset, "model": "resnet34", "batch_size": 128,
                          "steps": 20000, "lr": 0.1, "weight_decay": 1e-4, "augment_strength": 0.0, "threads": 0,
                          "sweep_batch_size": 512, "sweep_batch_sizes": [128, 512, 2048]})
        if run:
            base = cls(**{**asdict(base), **_run_sizes(run)})
        base.run = str(run) if run else None
        base.data_dir = str(data_dir) if data_dir else None
        return base

    def to_dict(self):
        return asdict(self)


def _run_sizes(run) -> dict:
    """RealConfig fields from an existing run's own config (realnet.config.sidetrip_sizes); digits runs keep the
    digits defaults."""
    from realnet.config import sidetrip_sizes
    from realnet.trainer import load_config

    z = sidetrip_sizes(load_config(run))
    if z.dataset == "digits":
        return {}
    return dict(dataset=z.dataset, model=z.model, batch_size=z.batch_size, lr=z.lr, sweep_batch_size=z.batch_size,
                sweep_batch_sizes=z.sweep_batch_sizes, eval_samples=z.eval_samples, threads=z.threads,
                augment_strength=0.0)


# ======================================================================================= context
_PROGRESS = contextvars.ContextVar("validation_realnet_progress", default=False)


@contextlib.contextmanager
def progress_bars(enabled: bool = True):
    """Show the progress bars of the realnet run and of every side-trip the claims run (``reproduce`` sets it)."""
    token = _PROGRESS.set(bool(enabled))
    try:
        yield
    finally:
        _PROGRESS.reset(token)


class _Context:
    """The run and the side-trips shared by the claims (created lazily, reused across claims and re-runs)."""

    def __init__(self, cfg: RealConfig, out: Path):
        self.cfg = cfg
        self.out = Path(out)
        self._run = None

    @property
    def run_dir(self) -> Path:
        if self._run is None:
            self._run = self._ensure_run()
        return self._run

    def _ensure_run(self) -> Path:
        from realnet.checkpoint import list_checkpoints

        c = self.cfg
        if c.run:
            run = Path(c.run)
            if not run.is_dir():
                raise FileNotFoundError(f"--run directory not found: {str(run)!r}")
            if len(list_checkpoints(run)) < 3:
                raise ValueError(f"run {str(run)!r} needs at least 3 checkpoints, has {list_checkpoints(run)}")
            return run
        from realnet.config import TrainConfig
        from realnet.trainer import train

        S, S2 = self._planned_steps(c.steps)
        run = self.out / "run"
        tc = TrainConfig(dataset=c.dataset, data_dir=c.data_dir, model=c.model, width=c.width, steps=c.steps,
                         batch_size=c.batch_size, lr=c.lr, weight_decay=c.weight_decay,
                         augment_strength=c.augment_strength, seed=c.seed, checkpoint_every=max(1, c.steps // 6),
                         checkpoint_steps=sorted({S, S2}), eval_every=max(1, c.steps // 10), threads=c.threads,
                         device=c.device, eval_samples=c.eval_samples, progress=_PROGRESS.get())
        done = (run / "summary.json").is_file()
        with timings.timed("training", resumed=done):
            train(tc, run)  # resumes if the run exists with the same config
        return run

    def _planned_steps(self, n):
        S = int(round(self.cfg.branch_fraction * n))
        S2 = min(n, S + max(1, int(round(self.cfg.second_offset_fraction * n))))
        return S, S2

    @property
    def steps(self):
        """(S, S2): the branching checkpoint and the second one for fixed-batch."""
        from realnet.checkpoint import list_checkpoints

        ck = list_checkpoints(self.run_dir)
        if not self.cfg.run:
            return self._planned_steps(self.cfg.steps)
        last = ck[-1]
        target = 0.75 * last
        S = min(ck, key=lambda s: abs(s - target))
        later = [s for s in ck if s > S]
        S2 = later[0] if later else [s for s in ck if s < S][-1]
        return S, S2

    def sidetrip(self, name: str, key: str, options: dict | None = None, **overrides):
        """Run (or reuse) side-trip ``name`` into OUT/sidetrips/<key> with ``options`` (and ``overrides``);
        returns its typed result."""
        from realnet.sidetrips import SIDETRIPS

        trip = SIDETRIPS[name]
        overrides = {**(options or {}), **overrides}
        step, ident = self._identity(overrides)
        overrides.pop("step", None)
        d = self.out / "sidetrips" / key
        marker = d / "validation_options.json"
        if self.finished(key, overrides | {"step": step}):
            try:
                return trip.result.load(d)
            except (ValueError, OSError, KeyError, TypeError):
                import shutil

                shutil.rmtree(d)  # unreadable: redo from scratch
        common = dict(device=self.cfg.device, threads=self.cfg.threads, progress=_PROGRESS.get(),
                      **({"data_dir": self.cfg.data_dir} if self.cfg.run and self.cfg.data_dir else {}))
        with timings.timed(f"sidetrip:{key}"):
            try:  # an unfinished side-trip of the same options resumes
                result = trip.function(self.run_dir, step, d, **common, **overrides)
            except OutputError as e:
                if e.reason not in ("identity", "foreign"):
                    raise
                import shutil

                shutil.rmtree(d)  # this report's own side-trip of other options: redo it from scratch
                result = trip.function(self.run_dir, step, d, **common, **overrides)
        # the phases a side-trip times itself (sgdtraj.timing.Stopwatch.as_dict(): {phase: {wall_s, cpu_s, calls}})
        for name, t in (getattr(result, "timing", None) or {}).items():
            timings.record(f"sidetrip:{key}:{name}", t["wall_s"], t["cpu_s"])
        atomic_write_text(marker, ident)
        return result

    def _identity(self, options: dict) -> tuple[int, str]:
        """(step, identity): the side-trip's options are part of its identity (changed sizes: redone)."""
        options = dict(options)
        step = options.pop("step", self.steps[0])
        return step, json.dumps(dict(run=str(self.run_dir.resolve()), step=step, **options), sort_keys=True)

    def finished(self, key: str, options: dict) -> bool:
        """Whether OUT/sidetrips/<key> holds a finished side-trip of these options (reused, not recomputed)."""
        d = self.out / "sidetrips" / key
        marker = d / "validation_options.json"
        return ((d / "summary.json").exists() and marker.exists()
                and marker.read_text() == self._identity(options)[1])

    def regime(self) -> list:
        """Premises (a) plateau and (b) not memorised at the branch point (:mod:`validation.premises`), measured
        once and kept in ``OUT/premises.json`` (reused on a re-run while the run and the step are unchanged)."""
        from realnet.regime import Memorisation, Plateau, memorisation, training_plateau

        S, _ = self.steps
        ident = dict(run=str(self.run_dir.resolve()), step=S, batches=self.cfg.premise_batches)
        path = self.out / "premises.json"
        saved = None
        if path.is_file():
            try:
                saved = read_json(path)
            except (OSError, ValueError):
                saved = None
        if saved and saved.get("identity") == ident:
            plat = Plateau(**saved["plateau"]) if saved.get("plateau") else None
            mem = Memorisation(**saved["memorisation"])
        else:
            with timings.timed("regime"):
                try:
                    plat = training_plateau(self.run_dir)
                except (OSError, ValueError, KeyError):  # no usable metrics.csv (e.g. a copied run without it)
                    plat = None
                mem = memorisation(self.run_dir, S, n_batches=self.cfg.premise_batches,
                                   clean_samples=self.cfg.eval_samples,
                                   device=self.cfg.device, threads=self.cfg.threads)
            write_json(path, dict(identity=ident, plateau=asdict(plat) if plat else None, memorisation=mem.to_dict()))
        if plat is None:
            plat = Plateau(steps=0, prev_quarter_loss=math.nan, last_quarter_loss=math.nan, ratio=math.nan)
        return [premises.plateau_premise(plat, S), premises.memorisation_premise(mem)]


_CTX: dict = {}


def _ctx(cfg, out) -> _Context:
    k = (json.dumps(asdict(cfg), sort_keys=True), str(out))
    if k not in _CTX:
        _CTX.clear()
        _CTX[k] = _Context(cfg, out)
    return _CTX[k]


# ======================================================================================= prefetch
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


def prefetch(cfg: RealConfig, out, claim_ids, workers: int | None = None, progress: bool = False) -> dict[str, str]:
    """Compute the side-trips that the claims ``claim_ids`` read, ``workers`` at once in worker processes.

    The realnet run is trained (or found) first, here; then every side-trip of the claims that is not already
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

    ctx = _ctx(cfg, out)
    ctx.run_dir  # noqa: B018 - train (or check) the run here, before any worker reads it
    pending: dict[str, tuple] = {}
    for cid in claim_ids:
        for name, key, opts in sidetrip_requests(cfg, ctx, cid):
            if key not in pending and not ctx.finished(key, opts):
                pending[key] = (name, key, opts)
    workers = default_workers(cfg) if workers is None else int(workers)
    if workers < 2 or len(pending) < 2:
        return {}
    queue = sorted(pending, key=lambda k: -_COST_HINT_S.get(k, math.inf))  # longest first (unknown: first)
    n = min(workers, len(pending))
    root = str(Path(__file__).resolve().parents[1])  # the workers import this very checkout of the packages
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, int(cfg.threads) or 1)),
           "PYTHONPATH": os.pathsep.join([root] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    if held_output(ctx.out) is not None:  # OUT is this report's: its side-trips may be written by the workers
        env.update(delegate_env(ctx.out))
    procs = [subprocess.Popen([sys.executable, "-m", "validation._prefetch_worker", str(os.getpid())],
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


# wall seconds of the quick job's side-trips on a 2-core CPU (2026-12-02, one after the other): only the order in
# which prefetch submits them depends on these (longest first keeps both workers busy until the end)
_COST_HINT_S = {"linear-fit": 150, "lr-sweep-b256": 144, "divergence": 95, "fixed-batch": 92, "lr-sweep": 61,
                "averaging": 31, "alignment": 20, "lr-sweep-b64": 19, "lr-sweep-b16": 5}


def _prefetch_one(cfg: dict, out: str, run_dir: str, request: tuple) -> dict[str, dict]:
    """Worker: one side-trip into OUT/sidetrips/<key> (no progress bar); returns its timing records."""
    timings.reset()
    ctx = _Context(RealConfig(**cfg), Path(out))
    ctx._run = Path(run_dir)
    name, key, opts = request
    ctx.sidetrip(name, key, opts)
    return {k: {kk: vv for kk, vv in v.items() if kk != "time"} | {"worker": os.getpid()}
            for k, v in timings.records().items()}


def _r2_poly(x, y, deg=4) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size <= deg + 1:
        return float("nan")
    xs = x / x.max()
    coef = np.polyfit(xs, y, deg)
    res = y - np.polyval(coef, xs)
    ss = np.sum((y - y.mean()) ** 2)
    return float(1.0 - np.sum(res ** 2) / ss) if ss > 0 else float("nan")


# ======================================================================================= side-trips
# The side-trips the claims read, as requests (name, key = directory under OUT/sidetrips, options): the claims
# and the prefetch (:func:`prefetch`) build them with the same functions, so both name the same side-trip.
def _lr_sweep(cfg, b, key=None):
    return "lr-sweep", key or f"lr-sweep-b{b}", dict(batch_size=b, heldout_batches=cfg.sweep_heldout_batches,
                                                     num_lrs=cfg.sweep_num_lrs)


def _fixed_batch(cfg, ctx):
    return "fixed-batch", "fixed-batch", dict(step2=ctx.steps[1], gd_steps=cfg.fixed_batch_gd_steps,
                                              heldout_batches=cfg.fixed_batch_heldout_batches,
                                              batch_size=cfg.sweep_batch_size, num_alphas=cfg.fixed_batch_alphas)


def _averaging(cfg):
    K = cfg.averaging_steps
    report = sorted({k for k in (1, 10, 100, 1000) if k < K} | {K})
    return "averaging", "averaging", dict(steps=K, report_steps=report, kernels=list(cfg.averaging_kernels),
                                          train_eval_samples=cfg.eval_samples, val_samples=cfg.eval_samples,
                                          bn_batches=cfg.bn_batches)


def _divergence_request(cfg):
    return "divergence", "divergence", dict(
        steps=cfg.divergence_steps, eval_steps=sorted({0, cfg.divergence_steps // 10, cfg.divergence_steps}),
        train_eval_samples=cfg.eval_samples, val_samples=cfg.eval_samples, record_every=cfg.divergence_record_every,
        fixed_batch_every=cfg.divergence_record_every, bn_batches=cfg.bn_batches,
        pair_factors=[float(f) for f in cfg.eq13_factors], function_points=cfg.eq13_function_points,
        function_samples=cfg.eq13_function_samples)


def _alignment(cfg):
    return "alignment", "alignment", dict(steps=cfg.alignment_steps, batch_pairs=cfg.alignment_batch_pairs)


def sidetrip_requests(cfg: RealConfig, ctx: "_Context", claim_id: str) -> list[tuple[str, str, dict]]:
    """The side-trips claim ``claim_id`` reads: ``[(name, key, options), ...]`` (``ctx.sidetrip(*request)``)."""
    make = {
        "fig2-single-step": lambda: [_lr_sweep(cfg, cfg.sweep_batch_size, "lr-sweep")],
        "fig3-same-basin": lambda: [_fixed_batch(cfg, ctx)],
        "fig5-averaging-equals-schedule": lambda: [_averaging(cfg)],
        "fig6-two-point-half-lr": lambda: [_divergence_request(cfg)],
        "fig7-gradient-alignment": lambda: [_alignment(cfg)],
        "fig8-distance-saturates": lambda: [_divergence_request(cfg)],
        "fig13-batch-size": lambda: [_lr_sweep(cfg, b) for b in cfg.sweep_batch_sizes],
        "linear-model-fit": lambda: [linearfit.linear_fit_request(cfg, ctx)],
        "eq13-real-sqrt-lr": lambda: [_divergence_request(cfg)],
    }
    return make[claim_id]() if claim_id in make else []


# ======================================================================================= claims
def claim_fig2(cfg: RealConfig, out: Path) -> Verdict:
    ctx = _ctx(cfg, out)
    S, S2 = ctx.steps
    s = ctx.sidetrip(*_lr_sweep(cfg, cfg.sweep_batch_size, "lr-sweep"))
    lr, tr, ho = s.curve.lr, s.curve.train_loss, s.curve.heldout_mean
    # relative to where each curve starts, so a generalization gap at the branch point (train batch
    # already below the held-out ones) does not count as the single-step effect
    ratio = (s.train_min_loss / s.train_start_loss) / (s.heldout_min_loss / s.heldout_start_loss)
    r2_train = _r2_poly(lr[lr <= 2 * s.best_lr_train], tr[lr <= 2 * s.best_lr_train])
    r2_held = _r2_poly(lr[lr <= 2 * max(s.best_lr_heldout, s.best_lr_train)],
                       ho[lr <= 2 * max(s.best_lr_heldout, s.best_lr_train)])
    fig = "fig2-single-step.png"
    plots.save(lambda axes: plots.draw_lr_sweep(axes, s), out / fig,
               title=f"Fig. 2: one SGD step of size lr from step {S} (batch {cfg.sweep_batch_size})", ncols=2)
    v = Verdict(
        id="fig2-single-step", source="realnet",
        claim="After its best single step the training batch's loss is far below the loss the held-out "
              "batches reach after their best step; both curves are smooth, low-degree-polynomial-like (Fig. 2)",
        statistic="(training-batch loss after its best step / before it) divided by (mean held-out loss after "
                  f"its best step / before it) ({cfg.sweep_heldout_batches} held-out batches, step {S})",
        value=ratio, comparison="<", threshold=FIG2_RATIO_MAX, figure=fig,
        details=dict(step=S, **{k: getattr(s, k) for k in ("train_start_loss", "train_min_loss", "best_lr_train",
                                                            "heldout_start_loss", "heldout_min_loss",
                                                            "best_lr_heldout")},
                     r2_train=r2_train, r2_heldout=r2_held,
                     absolute_ratio=s.train_min_loss / s.heldout_min_loss))
    v.check("poly_fit_train", r2_train, ">=", FIG2_R2_MIN, "R^2 of a degree-4 polynomial in lr, training batch, lr <= 2 best")
    v.check("poly_fit_heldout", r2_held, ">=", FIG2_R2_MIN, "same for the held-out mean")
    return v


def claim_fig3(cfg: RealConfig, out: Path) -> Verdict:
    ctx = _ctx(cfg, out)
    S, S2 = ctx.steps
    s = ctx.sidetrip(*_fixed_batch(cfg, ctx))
    scale_tr = max(s.train_loss_first[0], s.train_loss_second[0])
    scale_ho = max(s.heldout_loss_first[0], s.heldout_loss_second[0])
    tb = max(0.0, max(float(b) for b in s.train_barrier)) / scale_tr
    hb = max(0.0, max(float(b) for b in s.heldout_barrier)) / scale_ho
    fig = "fig3-same-basin.png"
    plots.save(lambda axes: plots.draw_fixed_batch(axes, s.interpolation), out / fig,
               title=f"Fig. 3: interpolation between fixed-batch descents from steps {S} and {S2}", ncols=2)
    v = Verdict(
        id="fig3-same-basin", source="realnet",
        claim="Gradient descent on a fixed batch from two points of the trajectory ends in the same basin: "
              "no loss barrier along the interpolation, for the training and the held-out batches (Fig. 3)",
        statistic="largest loss barrier along (1-a) P1_j + a P2_j over GD steps j = 0..9, divided by the start "
                  "loss (training batch)",
        value=tb, comparison="<", threshold=FIG3_TRAIN_BARRIER_MAX, figure=fig,
        details=dict(step=S, step2=S2, lr=s.lr, heldout_relative_barrier=hb,
                     train_loss_after_3_steps=s.train_loss_first[min(3, len(s.train_loss_first) - 1)]))
    v.check("heldout_barrier", hb, "<", FIG3_HELDOUT_BARRIER_MAX, "same on the held-out batches")
    return v


def claim_fig5(cfg: RealConfig, out: Path) -> Verdict:
    ctx = _ctx(cfg, out)
    S, _ = ctx.steps
    K = cfg.averaging_steps
    s = ctx.sidetrip(*_averaging(cfg))
    gaps, gaps_train, per_kernel = {}, {}, {}
    for spec, kres in s.kernels.items():
        results = sorted(kres.results, key=lambda r: r.k)
        first = results[0]  # the side-trip after its first reported step (k = 1): the change's baseline
        r = ([x for x in results if x.k == K] or results[-1:])[0]
        change_val = abs(r.sidetrip.val_loss - first.sidetrip.val_loss)
        change_tr = abs(r.sidetrip.train_loss - first.sidetrip.train_loss)
        gaps[spec] = abs(r.average.val_loss - r.sidetrip.val_loss) / change_val if change_val else math.inf
        gaps_train[spec] = (abs(r.average.train_loss - r.sidetrip.train_loss) / change_tr
                            if change_tr else math.inf)
        per_kernel[spec] = dict(k=r.k, average=asdict(r.average), sidetrip=asdict(r.sidetrip), baseline_k=first.k,
                                relative_l2=r.relative_l2, gap_val=gaps[spec], gap_train=gaps_train[spec])
    traj0 = asdict(s.trajectory[0]) if s.trajectory else None
    worst = max(gaps.values())
    fig = "fig5-averaging-equals-schedule.png"
    plots.save(lambda axes: plots.draw_averaging(axes, s), out / fig,
               title=f"Fig. 5: averages vs equivalent-schedule side-trips from step {S}", ncols=2)
    v = Verdict(
        id="fig5-averaging-equals-schedule", source="realnet",
        claim="Each average (SWA, EMA, two-point) matches a side-trip with its equivalent learning-rate "
              "schedule (Table 1) in loss and accuracy (Fig. 5, 14)",
        statistic=f"worst kernel's |val loss(average) - val loss(side-trip)| after K = {K} steps, divided by the "
                  f"side-trip's own change of val loss from its first reported step (k = 1) to K",
        value=worst, comparison="<", threshold=FIG5_GAP_MAX, figure=fig,
        details=dict(step=S, K=K, kernels=per_kernel, start=traj0))
    v.check("train_loss_gap", max(gaps_train.values()), "<", FIG5_GAP_MAX, "same statistic on the training loss")
    return v


def _divergence(ctx, cfg):
    """The divergence side-trip shared by fig. 6, fig. 8 and eq. 13 (A, B, H, the lr pairs, the fixed batch)."""
    return ctx.sidetrip(*_divergence_request(cfg))


def claim_fig6(cfg: RealConfig, out: Path) -> Verdict:
    ctx = _ctx(cfg, out)
    S, _ = ctx.steps
    s = _divergence(ctx, cfg)
    dd, ev = s.distances, s.evaluations
    last_t = int(ev.t.max())
    val = {str(m): float(v) for t, m, v in zip(ev.t, ev.model, ev.val_loss) if t == last_t}  # val loss per model
    gap = abs(val["twopoint"] - val["H"]) / val["H"]
    ratio = float(dd.dist_twopoint_H[-1]) / float(dd.dist_A_B[-1])
    fig = "fig6-two-point-half-lr.png"
    plots.save(lambda axes: plots.draw_divergence(axes, dd, ev), out / fig,
               title=f"Fig. 6: two-point average at lr vs the trajectory at lr/2, from step {S}", ncols=2)
    v = Verdict(
        id="fig6-two-point-half-lr", source="realnet",
        claim="The two-point average of the trajectory at lr tracks the trajectory at lr/2: close in loss, and "
              "much closer in weights than two trajectories with different batch orders (Fig. 6)",
        statistic=f"||(theta_S + theta_t)/2 - theta^(lr/2)_t|| / ||theta_t - theta'_t|| at t = {int(dd.t[-1])}",
        value=ratio, comparison="<", threshold=FIG6_DIST_RATIO_MAX, figure=fig,
        details=dict(step=S, val_loss_twopoint=val["twopoint"], val_loss_half=val["H"], val_loss_A=val["A"],
                     summary_ratio=s.twopoint_to_half_vs_A_B))
    v.check("loss_gap", gap, "<", FIG6_LOSS_GAP_MAX, "|val loss(two-point at lr) - val loss(lr/2)| / val loss(lr/2)")
    return premises.attach(v, [premises.lemma2_premise(
        "lemma2-fig6", v.id, premises.divergence_changes(s),
        f"a fixed held-out batch of {s.fixed_batch_size} (seed {s.fixed_batch_seed}) along the {s.steps}-step "
        f"side-trips A, B, H")])


def claim_fig7(cfg: RealConfig, out: Path) -> Verdict:
    ctx = _ctx(cfg, out)
    S, _ = ctx.steps
    s = ctx.sidetrip(*_alignment(cfg))
    rec = s.records
    cos_c = rec.cos_start_constant
    db = s.different_batches
    ref = abs(db.cos_mean) + 2 * db.cos_std
    margin = float(np.nanmin(cos_c)) - ref
    fig = "fig7-gradient-alignment.png"
    plots.save(lambda axes: plots.draw_alignment(axes, rec, db), out / fig,
               title=f"Fig. 7: gradient of a fixed batch along side-trips from step {S}", ncols=2)
    v = Verdict(
        id="fig7-gradient-alignment", source="realnet",
        claim="Along the trajectory the gradient of a fixed batch stays aligned with its start, while gradients "
              "of different batches are nearly orthogonal (Fig. 7; Lemma 2's assumption)",
        statistic=f"min over {cfg.alignment_steps} steps of cos(g_b(theta_t), g_b(theta_S)) minus "
                  "(|mean| + 2 std) of the cosines between different batches' gradients",
        value=margin, comparison=">", threshold=FIG7_MARGIN_MIN, figure=fig,
        details=dict(step=S, min_cos_fixed_constant=float(np.nanmin(cos_c)),
                     final_cos_fixed_linear=float(rec.cos_start_linear[-1]),
                     final_norm_ratio_constant=float(rec.norm_ratio_constant[-1]),
                     different_batches=asdict(db)))
    return premises.attach(v, [premises.lemma2_premise(
        "lemma2-fig7", v.id, premises.alignment_changes(s),
        f"the alignment side-trip's fixed {s.fixed_batch}-split batch of {s.batch_size} along its {s.steps}-step "
        f"side-trips")])


def claim_fig8(cfg: RealConfig, out: Path) -> Verdict:
    ctx = _ctx(cfg, out)
    S, _ = ctx.steps
    s = _divergence(ctx, cfg)
    ck, ep = s.checkpoint_distances, s.endpoint_distances
    pts = sorted([(int(a), float(b)) for a, b in zip(ck.step, ck.dist_to_B_end)] +
                 [(int(a), float(b)) for a, b in zip(ep.step, ep.dist_to_B_end)])
    steps = np.array([p[0] for p in pts], float)
    d = np.array([p[1] for p in pts])
    # drop the independent end point itself if it appears (distance 0 by construction)
    keep = np.isfinite(d)
    steps, d = steps[keep], d[keep]
    t23 = steps[0] + (steps[-1] - steps[0]) * 2 / 3
    d23 = float(np.interp(t23, steps, d))
    tail = (d23 - d[-1]) / (d[0] - d[-1]) if d[0] > d[-1] else float("nan")
    fig = "fig8-distance-saturates.png"
    plots.save(lambda ax: plots.draw_endpoint_distance(ax, steps, d, S), out / fig,
               title="Fig. 8: distance from trajectory points to an independently trained end point")
    v = Verdict(
        id="fig8-distance-saturates", source="realnet",
        claim="The distance from the points of a trajectory to the end point of an independent trajectory "
              "(different batch order after a shared burn-in) decreases and then levels off (Fig. 8)",
        statistic="decrease of the distance over the last third of the path / its total decrease",
        value=tail, comparison="<", threshold=FIG8_TAIL_MAX, figure=fig,
        details=dict(step=S, first=float(d[0]), at_two_thirds=d23, last=float(d[-1])))
    v.check("decreases", float(d[0] / d[-1]), ">", FIG8_DECREASE_MIN, "first distance / last distance")
    return v


def claim_fig13(cfg: RealConfig, out: Path) -> Verdict:
    ctx = _ctx(cfg, out)
    S, _ = ctx.steps
    rows = []
    for b in cfg.sweep_batch_sizes:
        s = ctx.sidetrip(*_lr_sweep(cfg, b))
        drop_tr = math.log(s.train_start_loss / s.train_min_loss)
        drop_ho = math.log(s.heldout_start_loss / s.heldout_min_loss)
        rows.append(dict(batch_size=b, train_drop=drop_tr, heldout_drop=drop_ho, gap=drop_tr - drop_ho))
    gaps = [r["gap"] for r in rows]
    fig = "fig13-batch-size.png"
    plots.save(lambda ax: plots.draw_batch_size(ax, rows), out / fig,
               title=f"Fig. 13: best single-step loss drop vs batch size, step {S}")
    v = Verdict(
        id="fig13-batch-size", source="realnet",
        claim="For typical batch sizes the training batch's single-step loss drop exceeds the held-out drop "
              "by orders of magnitude, the difference shrinking as the batch grows (Fig. 13)",
        statistic="smallest over batch sizes of log(train start/min loss) - log(held-out start/min loss)",
        value=min(gaps), comparison=">", threshold=FIG13_LOGDROP_GAP_MIN, figure=fig,
        details=dict(step=S, rows=rows))
    v.check("shrinks_with_batch", gaps[0] - gaps[-1], ">", 0.0,
            f"gap at batch {cfg.sweep_batch_sizes[0]} minus gap at batch {cfg.sweep_batch_sizes[-1]}")
    return v


def _with_regime(fn):
    """The claim ``fn`` with the regime premises (a), (b) at the branch point put before its own premises."""
    @functools.wraps(fn)
    def claim(cfg: RealConfig, out: Path) -> Verdict:
        v = fn(cfg, out)
        try:
            regime = _ctx(cfg, out).regime()
        except Exception as exc:  # noqa: BLE001 - the claim stays judged; the premise reads "not met" with the error
            regime = [premises.unmeasured("regime", "(a), (b) regime at the branch point could not be measured",
                                          f"{type(exc).__name__}: {exc}")]
        return premises.attach(v, regime + premises.of_verdict(v))

    return claim


REAL_CLAIMS = {cid: _with_regime(fn) for cid, fn in {
    "fig2-single-step": claim_fig2,
    "fig3-same-basin": claim_fig3,
    "fig5-averaging-equals-schedule": claim_fig5,
    "fig6-two-point-half-lr": claim_fig6,
    "fig7-gradient-alignment": claim_fig7,
    "fig8-distance-saturates": claim_fig8,
    "fig13-batch-size": claim_fig13,
    "linear-model-fit": linearfit.claim_linear_fit,
    "eq13-real-sqrt-lr": eq13real.claim_eq13_real,
    posthoc_claim.CLAIM_ID: posthoc_claim.claim,
}.items()}
