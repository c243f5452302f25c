"""``reproduce``: run every claim, write the report; resumable (finished claims are not redone).

Layout of ``OUT``::

    OUT/config.json          mode, arguments, seeds, versions, git hash
    OUT/parts/<id>.json      one finished verdict per claim (the resume state)
    OUT/<id>.png             figures
    OUT/run/                 the realnet trajectory trained for --quick/--full (unless --run is given)
    OUT/sidetrips/<name>-r<i>/  realnet side-trip outputs of replicate i
    OUT/r<i>/                replicate i's figures, regime premises (a), (b) at its branch point
                             (premises.json), noise_scale.json, the post-hoc merge's cache (resume state)
    OUT/timings.json         wall and process-CPU seconds per claim, training and side-trip (validation.timings)
    OUT/controls/            the real-network claims' positive and negative controls (validation.real.controls)
    OUT/report.md, OUT/verdicts.json
    OUT/.sgd-trajectories.json, OUT/.lock   ownership marker (kind "report") and lock

Before any work, :func:`reproduce` checks the real-network arguments (``--run`` must be a realnet run with
one checkpoint more than the replicates (4) and may not contain ``--out``; ``--dataset`` must be known and,
unless it is ``digits``, come with an existing ``--data-dir``) and claims ``OUT`` (:func:`sgdtraj.outputs.claim_output`,
identity = mode, run, data_dir, dataset): a file, a path under a file, an unwritable path, a directory
another process writes, a realnet run, a side-trip, a sweep or a report of other arguments is refused
before anything is written. The report always covers every claim evaluated in ``OUT`` so far: a run with
``--only ID`` (or ``--synthetic-only``) replaces those claims' verdicts and keeps the others'.
"""
from __future__ import annotations

import hashlib
import json
import sys
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from sgdtraj.files import read_json
from sgdtraj.outputs import claim_output, register_kind
from sgdtraj.provenance import environment

from . import timings
from .report import write_json_atomic, write_report
from .synthetic import SYNTHETIC_CLAIMS, SyntheticConfig
from .verdict import Verdict

__all__ = ["reproduce", "CLAIM_IDS"]

#: the output-directory kind of a report (``validation reproduce --out``)
REPORT_KIND = register_kind("report", "a validation report")


CLAIM_IDS = list(SYNTHETIC_CLAIMS) + [
    "fig2-single-step", "fig3-same-basin", "fig5-averaging-equals-schedule", "fig6-two-point-half-lr",
    "fig7-gradient-alignment", "fig8-distance-saturates", "fig13-batch-size", "linear-model-fit", "eq13-real-sqrt-lr",
    "posthoc-merge-equals-cooldown",
]


#: data set names of realnet (``realnet.config.DATASETS``; listed here so that argument checks need no torch)
DATASETS = ("digits", "cifar10", "cifar100", "imagenet")


def _fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_real_arguments(out, run=None, data_dir=None, dataset=None, replicates: int = 3) -> None:
    """The real-network arguments, checked before any work: ValueError / FileNotFoundError naming the option
    (``--run`` needs ``replicates + 1`` checkpoints: a branch point per replicate and a later one)."""
    if dataset is not None and dataset not in DATASETS:
        raise ValueError(f"--dataset must be one of {', '.join(DATASETS)}; got {dataset!r}")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise FileNotFoundError(f"--data-dir {str(data_dir)!r}: directory not found")
    if dataset not in (None, "digits") and data_dir is None and run is None:
        raise ValueError(f"--dataset {dataset} needs --data-dir (the local data set; nothing is downloaded)")
    if run is None:
        return
    r = Path(run)
    if not r.is_dir():
        raise FileNotFoundError(f"--run {str(run)!r}: directory not found")
    if not (r / "config.json").is_file():
        raise ValueError(f"--run {str(run)!r} is not a realnet run directory (no config.json)")
    ck = r / "checkpoints"
    steps = sorted(int(p.stem[5:]) for p in ck.glob("step_*.pt")) if ck.is_dir() else []
    need = max(3, int(replicates) + 1)
    if len(steps) < need:
        raise ValueError(f"--run {str(run)!r} needs at least {need} checkpoints ({replicates} replicates), has "
                         f"{steps}")
    o, rr = Path(out).resolve(), r.resolve()
    if o == rr or rr in o.parents:
        raise ValueError(f"--out {str(out)!r} lies inside --run {str(run)!r}: the run is never modified; choose an "
                         f"--out outside it")


def _identity(mode, run, data_dir, dataset, seed=None) -> dict:
    """What makes two reports the same job (the command's arguments; sizes are fingerprinted per claim). A job of
    another ``--seed`` is another job (the default seed adds nothing, so earlier reports stay the same job)."""
    ident = {"mode": mode, "run": str(Path(run).resolve()) if run else None,
             "data_dir": str(Path(data_dir).resolve()) if data_dir else None, "dataset": dataset or "digits"}
    if seed is not None:
        ident["seed"] = int(seed)
    return ident


def _previous(out: Path):
    """(verdicts, config) of an earlier reproduce into ``out`` (empty when there is none or it is damaged)."""
    try:
        verdicts = [Verdict.from_dict(d) for d in read_json(out / "verdicts.json")]
    except (OSError, ValueError, TypeError, KeyError):
        verdicts = []
    try:
        config = read_json(out / "config.json")
    except (OSError, ValueError):
        config = {}
    return verdicts, config if isinstance(config, dict) else {}


def reproduce(out, mode: str = "quick", run=None, data_dir=None, dataset=None, only=None,
              synthetic: bool = True, real: bool = True, progress: bool = True, force: bool = False,
              synthetic_config=None, real_config=None, workers: int | None = None, seed: int | None = None):
    """Verify the paper's claims and write the report into ``out``; returns the list of verdicts.

    mode: "quick" (embedded digits data set, 2-core CPU, about 10 minutes) or "full".
    run: an existing realnet run directory to validate instead of training one.
    data_dir, dataset: train the realnet run on a local data set instead of the embedded default.
    only: optional list of claim ids. synthetic / real: select the claim families.
    A claim whose part file exists with the same configuration fingerprint is not redone
    (``force=True`` redoes everything). ``synthetic_config`` / ``real_config`` override the sizes
    of ``mode`` (e.g. tiny sizes for tests). ``workers``: side-trips computed at once in worker processes
    (:func:`validation.real.prefetch`; None: up to 2 on a CPU with 2 cores, 1 on a GPU; 1: in this process,
    one after the other). The verdicts do not depend on it. ``seed``: replaces the seed of the synthetic claims
    and of the real-network job: the trajectory's (initialisation and batch order, and with it the side-trips' other
    batch order) and every replicate's side-trip seed (:func:`validation.real.context.replicate_seed`); None keeps
    the configs' own.
    """
    if mode not in ("quick", "full"):
        raise ValueError(f"mode must be 'quick' or 'full', got {mode!r}")
    if only:
        unknown = sorted(set(only) - set(CLAIM_IDS))
        if unknown:
            raise ValueError(f"unknown claim id(s) {unknown}; known: {CLAIM_IDS}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be an integer >= 1 (or None: automatic), got {workers!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed must be an integer >= 0 (or None: the configs' own), got {seed!r}")
    run = run if run is not None else (real_config.run if real_config is not None else None)
    from .real.config import RealConfig

    reps = real_config.replicates if real_config is not None else RealConfig().replicates
    check_real_arguments(out, run=run, data_dir=data_dir, dataset=dataset, replicates=reps)
    syn_cfg = synthetic_config or (SyntheticConfig.quick() if mode == "quick" else SyntheticConfig.full())
    real_cfg = None
    if real:
        real_cfg = real_config or RealConfig.for_mode(mode, run=run, data_dir=data_dir, dataset=dataset)
    if seed is not None:
        from dataclasses import replace

        syn_cfg = replace(syn_cfg, seed=seed)
        real_cfg = replace(real_cfg, seed=seed) if real_cfg is not None else None
    job = Job(out=Path(out), mode=mode, run=str(run) if run else None, data_dir=str(data_dir) if data_dir else None,
              dataset=dataset, only=tuple(only) if only else None, synthetic=synthetic, real=real,
              progress=progress, force=force, synthetic_config=syn_cfg, real_config=real_cfg, workers=workers)
    # ---- everything above is checked before anything is written
    with claim_output(out, REPORT_KIND, _identity(mode, run, data_dir, dataset, seed),
                      holder="validation reproduce") as claim:
        return _reproduce(job, claim)


@dataclass(frozen=True)
class Job:
    """One ``reproduce`` command, its arguments checked: what every phase of :func:`_reproduce` reads."""

    out: Path
    mode: str  # "quick" | "full"
    run: str | None  # existing realnet run validated instead of training one
    data_dir: str | None
    dataset: str | None
    only: tuple[str, ...] | None  # claim ids (None: all)
    synthetic: bool  # evaluate the synthetic claims
    real: bool  # evaluate the real-network claims
    progress: bool
    force: bool  # redo finished claims
    synthetic_config: SyntheticConfig
    real_config: object | None  # validation.real.RealConfig (None when ``real`` is False)
    workers: int | None  # prefetch worker processes (None: automatic)


@dataclass(frozen=True)
class ClaimTask:
    """One claim of the job: ``family`` "synthetic" or "real", the fingerprint of its sizes, and its verdict read
    back from ``OUT/parts`` when it is already finished (``saved``; None: to compute)."""

    id: str
    family: str
    fingerprint: str
    saved: Verdict | None


@dataclass(frozen=True)
class Evaluated:
    """The verdicts of this run's claims (report order) and how many of them could not be evaluated."""

    verdicts: list
    errors: int


def _saved_verdict(out: Path, cid: str, fp: str, force: bool):
    """The verdict of claim ``cid`` saved in ``OUT/parts`` with fingerprint ``fp`` (None: redo it)."""
    part = out / "parts" / f"{cid}.json"
    if force or not part.exists():
        return None
    try:
        saved = json.loads(part.read_text())
        if saved.get("fingerprint") == fp and (out / (saved["verdict"].get("figure") or "")).exists():
            return Verdict.from_dict(saved["verdict"])
    except (json.JSONDecodeError, KeyError, TypeError):
        pass  # a damaged part is simply redone
    return None


#: the form of a saved verdict; a part of another form is redone (its claim's statistic or premises changed)
VERDICT_FORM = 2


def _claim_fingerprint(cid, cfg) -> str:
    return _fingerprint(dict(id=cid, form=VERDICT_FORM,
                             cfg=asdict(cfg) if hasattr(cfg, "__dataclass_fields__") else str(cfg)))


def _reproduce(job: Job, claim) -> list[Verdict]:
    """The phases of a reproduce run in ``job.out`` (held as ``claim``): configuration, plan, real-network
    context and prefetch, claims, report."""
    previous, config = _write_config(job, claim.resumed)
    timings.reset()
    tasks = _plan(job)
    controls = None
    if job.real and any(t.family == "real" for t in tasks):
        controls = _ControlsProcess.start(job)  # on the core training leaves free
    try:
        evaluated = _evaluate(job, tasks, claim)
    except BaseException:
        if controls is not None:
            controls.stop()  # interrupted: the controls resume with the next run
        raise
    if controls is not None:
        controls.finish()
    if controls is not None:
        _run_controls(job)  # read back (or computed here when the background process failed)
    order = {cid: i for i, cid in enumerate(CLAIM_IDS)}
    mine = {v.id for v in evaluated.verdicts}  # this run's verdicts replace earlier ones of the same id
    kept = [v for v in previous if v.id not in mine]
    report = sorted(evaluated.verdicts + kept, key=lambda v: order.get(v.id, len(order)))
    timings.write(job.out)
    write_report(job.out, report, config, kept=[v.id for v in kept])
    return evaluated.verdicts


def _control_sizes(job: Job):
    from .real.controls import ControlSizes

    return ControlSizes.tiny() if job.real_config.controls == "tiny" else ControlSizes()


class _ControlsProcess:
    """The controls (:func:`validation.real.controls.run_controls` into ``OUT/controls``) computed by a child
    process while this one trains and evaluates the claims (one torch / BLAS thread, nice 10: training and the
    side-trip workers come first); :meth:`finish` waits for it and records its wall and CPU seconds. Its result
    is read back by :func:`_run_controls`, which computes the controls itself if the child failed."""

    _CODE = ("import json, os, sys, time\n"
             "from sgdtraj.workers import exit_with_parent\n"
             "exit_with_parent(int(sys.argv[3]))\n"  # never outlives the job (even a SIGKILLed one)
             "os.nice(10)\n"  # background work: training and the side-trip workers come first
             "from validation.real.controls import ControlSizes, run_controls\n"
             "t, c = time.perf_counter(), time.process_time()\n"
             "run_controls(sys.argv[1], ControlSizes(**json.loads(sys.argv[2])))\n"
             "print(json.dumps(dict(wall_s=time.perf_counter() - t, cpu_s=time.process_time() - c)))\n")

    def __init__(self, proc):
        self.proc = proc

    @classmethod
    def start(cls, job: Job) -> "_ControlsProcess | None":
        import os
        import subprocess

        from .real.controls import read_controls

        sizes = _control_sizes(job)
        if read_controls(job.out / "controls", sizes) is not None:
            return None  # finished earlier
        root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
               "NUMBA_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([root] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
        cmd = [sys.executable, "-c", cls._CODE, str(job.out / "controls"), json.dumps(asdict(sizes)), str(os.getpid())]
        return cls(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))

    def stop(self) -> None:
        """Terminate the child (it leaves nothing half-written: its files are written atomically)."""
        import subprocess

        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()

    def finish(self) -> None:
        import subprocess

        try:
            out, err = self.proc.communicate(timeout=3600)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        if self.proc.returncode == 0 and out.strip():
            try:
                t = json.loads(out.strip().splitlines()[-1])
                timings.record("controls", t["wall_s"], t["cpu_s"], process="child")
                return
            except (ValueError, KeyError):
                pass
        print(f"warning: the controls' process exited with {self.proc.returncode}; they run here\n"
              f"{(err or '')[-800:]}", file=sys.stderr)


def _run_controls(job: Job) -> None:
    """The real-network claims' positive and negative controls into ``OUT/controls`` (read back when done)."""
    from .real.controls import read_controls, run_controls

    sizes = _control_sizes(job)
    if read_controls(job.out / "controls", sizes) is not None:
        return
    with timings.timed("controls"):
        run_controls(job.out / "controls", sizes)


def _write_config(job: Job, resumed: bool) -> tuple[list[Verdict], dict]:
    """Write ``OUT/config.json``; returns the verdicts of an earlier run into ``OUT`` (when resumed) and the
    config written."""
    previous, old_config = _previous(job.out) if resumed else ([], {})
    (job.out / "parts").mkdir(exist_ok=True)
    config = dict(mode=job.mode, run=job.run, data_dir=job.data_dir, dataset=job.dataset,
                  synthetic=asdict(job.synthetic_config),
                  real=job.real_config.to_dict() if job.real_config else None)
    if config["real"] is None and old_config.get("real") is not None:
        config["real"] = old_config["real"]  # the real claims of an earlier run stay in the report
    config["environment"] = environment()
    write_json_atomic(job.out / "config.json", config)
    return previous, config


def _plan(job: Job) -> list[ClaimTask]:
    """The claims this run covers, in report order, each with its saved verdict when it is finished."""
    ids = []
    if job.synthetic:
        ids += [(cid, "synthetic", job.synthetic_config) for cid in SYNTHETIC_CLAIMS]
    if job.real:
        from .real import REAL_CLAIMS

        ids += [(cid, "real", job.real_config) for cid in REAL_CLAIMS]
    if job.only:
        ids = [t for t in ids if t[0] in job.only]
    tasks = []
    for cid, family, cfg in ids:
        fp = _claim_fingerprint(cid, cfg)
        tasks.append(ClaimTask(cid, family, fp, _saved_verdict(job.out, cid, fp, job.force)))
    return tasks


def _open_real(job: Job, todo: list[ClaimTask]):
    """The real-network context of the claims to compute (trains or checks the run) with their side-trips
    prefetched in worker processes; None when no real claim is to be computed. An error opening it is raised
    when the first real claim is evaluated (each reports it in its verdict)."""
    if not todo:
        return None
    from .real import REAL_CLAIMS, RealContext, prefetch

    ctx = RealContext.open(job.real_config, job.out, progress=job.progress)
    try:  # the side-trips of the claims to compute, several at once; the claims read them back
        with timings.timed("prefetch"):
            requests = [r for t in todo for r in REAL_CLAIMS[t.id].requests(ctx)]
            failed = prefetch(ctx, requests, workers=job.workers, progress=job.progress)
        for key, err in failed.items():
            print(f"warning: side-trip {key} failed in a worker process ({err}); its claim computes it",
                  file=sys.stderr)
    except Exception:  # noqa: BLE001 - each claim meets the same error and reports it in its verdict
        pass
    return ctx


def _evaluate(job: Job, tasks: list[ClaimTask], claim) -> Evaluated:
    """Evaluate the tasks without a saved verdict (each written to ``OUT/parts`` when done)."""
    real_todo = [t for t in tasks if t.family == "real" and t.saved is None]
    try:
        ctx, ctx_error = _open_real(job, real_todo), None
    except Exception as exc:  # noqa: BLE001 - reported by every real claim to compute
        ctx, ctx_error = None, exc
    verdicts, errors = [], 0
    bar = tqdm(tasks, desc="claims", unit="claim", disable=not job.progress)
    for task in bar:
        bar.set_postfix_str(task.id)
        if task.saved is not None:
            verdicts.append(task.saved)
            continue
        try:
            with timings.timed(f"claim:{task.id}"):
                v = _evaluator(job, task, ctx, ctx_error)()
        except Exception as exc:  # noqa: BLE001 - reported in the verdict and the exit status
            errors += 1
            v = Verdict(id=task.id, claim="(not evaluated)", statistic="-", value=float("nan"), comparison="<",
                        threshold=float("nan"), error=f"{type(exc).__name__}: {exc}",
                        details=dict(traceback=traceback.format_exc()[-4000:]))
        else:
            claim.keep()  # before the part is written: an interrupt in between must not remove a finished part
            write_json_atomic(job.out / "parts" / f"{task.id}.json", dict(fingerprint=task.fingerprint,
                                                                        verdict=v.to_dict()))
        verdicts.append(v)
    return Evaluated(verdicts, errors)


def _evaluator(job: Job, task: ClaimTask, ctx, ctx_error) -> Callable[[], Verdict]:
    """The call that evaluates ``task``: a synthetic claim of (config, out), or a real one of the context."""
    if task.family == "synthetic":
        fn = SYNTHETIC_CLAIMS[task.id]
        return lambda: fn(job.synthetic_config, job.out)
    if ctx_error is not None:
        raise ctx_error
    from .real import REAL_CLAIMS

    return lambda: REAL_CLAIMS[task.id].evaluate(ctx)
