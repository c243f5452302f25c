"""``reproduce``: run every claim, write the report; resumable (finished claims are not redone).

Layout of ``OUT``::

    OUT/config.json          mode, arguments, seeds, versions, git hash
    OUT/parts/<id>.json      one finished verdict per claim (the resume state)
    OUT/<id>.png             figures
    OUT/run/                 the realnet trajectory trained for --quick/--full (unless --run is given)
    OUT/sidetrips/<name>/    realnet side-trip outputs
    OUT/premises.json        the regime premises (a), (b) measured at the branch point (resume state)
    OUT/timings.json         wall and process-CPU seconds per claim, training and side-trip (validation.timings)
    OUT/report.md, OUT/verdicts.json
    OUT/.sgd-trajectories.json, OUT/.lock   ownership marker (kind "report") and lock

Before any work, :func:`reproduce` checks the real-network arguments (``--run`` must be a realnet run with
at least 3 checkpoints and may not contain ``--out``; ``--dataset`` must be known and, unless it is
``digits``, come with an existing ``--data-dir``) and claims ``OUT`` (:func:`sgdtraj.outputs.claim_output`,
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
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

from sgdtraj.outputs import claim_output, register_kind
from sgdtraj.provenance import environment
from sgdtraj.files import read_json

from . import timings
from .report import write_json_atomic, write_report
from .synthetic import SYNTHETIC_CLAIMS, SyntheticConfig
from .verdict import Verdict

__all__ = ["reproduce", "CLAIM_IDS"]

#: the output-directory kind of a report (``validation reproduce --out``)
REPORT_KIND = register_kind("report", "a validation report")


def _real_claims():
    from .realclaims import REAL_CLAIMS

    return REAL_CLAIMS


CLAIM_IDS = list(SYNTHETIC_CLAIMS) + [
    "fig2-single-step", "fig3-same-basin", "fig5-averaging-equals-schedule", "fig6-two-point-half-lr",
    "fig7-gradient-alignment", "fig8-distance-saturates", "fig13-batch-size", "linear-model-fit", "eq13-real-sqrt-lr",
    "posthoc-merge-equals-cooldown",
]


#: data set names of realnet (``realnet.config.DATASETS``; listed here so that argument checks need no torch)
DATASETS = ("digits", "cifar10", "cifar100", "imagenet")


def _fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_real_arguments(out, run=None, data_dir=None, dataset=None) -> None:
    """The real-network arguments, checked before any work: ValueError / FileNotFoundError naming the option."""
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
    if len(steps) < 3:
        raise ValueError(f"--run {str(run)!r} needs at least 3 checkpoints, has {steps}")
    o, rr = Path(out).resolve(), r.resolve()
    if o == rr or rr in o.parents:
        raise ValueError(f"--out {str(out)!r} lies inside --run {str(run)!r}: the run is never modified; choose an "
                         f"--out outside it")


def _identity(mode, run, data_dir, dataset) -> dict:
    """What makes two reports the same job (the command's arguments; sizes are fingerprinted per claim)."""
    return {"mode": mode, "run": str(Path(run).resolve()) if run else None,
            "data_dir": str(Path(data_dir).resolve()) if data_dir else None, "dataset": dataset or "digits"}


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
              synthetic_config=None, real_config=None, workers: int | None = None):
    """Verify the paper's claims and write the report into ``out``; returns the list of verdicts.

    mode: "quick" (embedded digits data set, 2-core CPU, about 10 minutes) or "full".
    run: an existing realnet run directory to validate instead of training one.
    data_dir, dataset: train the realnet run on a local data set instead of the embedded default.
    only: optional list of claim ids. synthetic / real: select the claim families.
    A claim whose part file exists with the same configuration fingerprint is not redone
    (``force=True`` redoes everything). ``synthetic_config`` / ``real_config`` override the sizes
    of ``mode`` (e.g. tiny sizes for tests). ``workers``: side-trips computed at once in worker processes
    (:func:`validation.realclaims.prefetch`; None: up to 2 on a CPU with 2 cores, 1 on a GPU; 1: in this process,
    one after the other). The verdicts do not depend on it.
    """
    if mode not in ("quick", "full"):
        raise ValueError(f"mode must be 'quick' or 'full', got {mode!r}")
    if only:
        unknown = sorted(set(only) - set(CLAIM_IDS))
        if unknown:
            raise ValueError(f"unknown claim id(s) {unknown}; known: {CLAIM_IDS}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be an integer >= 1 (or None: automatic), got {workers!r}")
    run = run if run is not None else (real_config.run if real_config is not None else None)
    check_real_arguments(out, run=run, data_dir=data_dir, dataset=dataset)
    syn_cfg = synthetic_config or (SyntheticConfig.quick() if mode == "quick" else SyntheticConfig.full())
    real_cfg = None
    if real:
        from .realclaims import RealConfig

        real_cfg = real_config or RealConfig.for_mode(mode, run=run, data_dir=data_dir, dataset=dataset)
    # ---- everything above is checked before anything is written
    with claim_output(out, REPORT_KIND, _identity(mode, run, data_dir, dataset),
                      holder="validation reproduce") as claim:
        return _reproduce(Path(out), claim, mode, run, data_dir, dataset, only, synthetic, real, progress, force,
                          syn_cfg, real_cfg, workers)


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


def _claim_fingerprint(cid, cfg) -> str:
    return _fingerprint(dict(id=cid, cfg=asdict(cfg) if hasattr(cfg, "__dataclass_fields__") else str(cfg)))


def _reproduce(out: Path, claim, mode, run, data_dir, dataset, only, synthetic, real, progress, force, syn_cfg,
               real_cfg, workers=None):
    previous, old_config = _previous(out) if claim.resumed else ([], {})
    (out / "parts").mkdir(exist_ok=True)
    config = dict(mode=mode, run=str(run) if run else None, data_dir=str(data_dir) if data_dir else None,
                  dataset=dataset, synthetic=asdict(syn_cfg), real=real_cfg.to_dict() if real_cfg else None)
    if config["real"] is None and old_config.get("real") is not None:
        config["real"] = old_config["real"]  # the real claims of an earlier run stay in the report
    config["environment"] = environment()
    write_json_atomic(out / "config.json", config)
    timings.reset()

    todo = []
    if synthetic:
        todo += [(cid, fn, syn_cfg) for cid, fn in SYNTHETIC_CLAIMS.items()]
    if real:
        todo += [(cid, fn, real_cfg) for cid, fn in _real_claims().items()]
    if only:
        todo = [t for t in todo if t[0] in only]

    verdicts, errors = [], 0
    bar = tqdm(todo, desc="claims", unit="claim", disable=not progress)
    with _sidetrip_progress(progress and real):
        real_todo = [cid for cid, fn, cfg in todo if cfg is real_cfg and _saved_verdict(
            out, cid, _claim_fingerprint(cid, cfg), force) is None]
        if real_todo:
            from .realclaims import prefetch

            try:  # the side-trips of the claims to compute, several at once; the claims read them back
                with timings.timed("prefetch"):
                    failed = prefetch(real_cfg, out, real_todo, workers=workers, progress=progress)
                for key, err in failed.items():
                    print(f"warning: side-trip {key} failed in a worker process ({err}); its claim computes it",
                          file=sys.stderr)
            except Exception:  # noqa: BLE001 - each claim meets the same error and reports it in its verdict
                pass
        for cid, fn, cfg in bar:
            bar.set_postfix_str(cid)
            fp = _claim_fingerprint(cid, cfg)
            part = out / "parts" / f"{cid}.json"
            saved = _saved_verdict(out, cid, fp, force)
            if saved is not None:
                verdicts.append(saved)
                continue
            try:
                with timings.timed(f"claim:{cid}"):
                    v = fn(cfg, out)
            except Exception as exc:  # noqa: BLE001 - reported in the verdict and the exit status
                errors += 1
                v = Verdict(id=cid, claim="(not evaluated)", statistic="-", value=float("nan"), comparison="<",
                            threshold=float("nan"), error=f"{type(exc).__name__}: {exc}",
                            details=dict(traceback=traceback.format_exc()[-4000:]))
            else:
                write_json_atomic(part, dict(fingerprint=fp, verdict=v.to_dict()))
                claim.keep()
            verdicts.append(v)
    order = {cid: i for i, cid in enumerate(CLAIM_IDS)}
    verdicts.sort(key=lambda v: order.get(v.id, len(order)))
    # the report covers every claim evaluated in OUT: this run's verdicts replace earlier ones of the same id
    mine = {v.id for v in verdicts}
    kept = [v for v in previous if v.id not in mine]
    report = sorted(verdicts + kept, key=lambda v: order.get(v.id, len(order)))
    timings.write(out)
    write_report(out, report, config, kept=[v.id for v in kept])
    return verdicts


def _sidetrip_progress(enabled: bool):
    """Progress bars of the realnet run and side-trips inside the claims (one bar per side-trip)."""
    if not enabled:
        import contextlib

        return contextlib.nullcontext()
    from .realclaims import progress_bars

    return progress_bars(True)
