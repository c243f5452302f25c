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
"""
from __future__ import annotations

import hashlib
import json
import traceback
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

from . import timings
from .report import environment, write_json_atomic, write_report
from .synthetic import SYNTHETIC_CLAIMS, SyntheticConfig
from .verdict import Verdict

__all__ = ["reproduce", "CLAIM_IDS"]


def _real_claims():
    from .realclaims import REAL_CLAIMS

    return REAL_CLAIMS


CLAIM_IDS = list(SYNTHETIC_CLAIMS) + [
    "fig2-single-step", "fig3-same-basin", "fig5-averaging-equals-schedule", "fig6-two-point-half-lr",
    "fig7-gradient-alignment", "fig8-distance-saturates", "fig13-batch-size", "linear-model-fit", "eq13-real-sqrt-lr",
]


def _fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def reproduce(out, mode: str = "quick", run=None, data_dir=None, dataset=None, only=None,
              synthetic: bool = True, real: bool = True, progress: bool = True, force: bool = False,
              synthetic_config=None, real_config=None):
    """Verify the paper's claims and write the report into ``out``; returns the list of verdicts.

    mode: "quick" (embedded digits data set, 2-core CPU, about 10 minutes) or "full".
    run: an existing realnet run directory to validate instead of training one.
    data_dir, dataset: train the realnet run on a local data set instead of the embedded default.
    only: optional list of claim ids. synthetic / real: select the claim families.
    A claim whose part file exists with the same configuration fingerprint is not redone
    (``force=True`` redoes everything). ``synthetic_config`` / ``real_config`` override the sizes
    of ``mode`` (e.g. tiny sizes for tests).
    """
    if mode not in ("quick", "full"):
        raise ValueError(f"mode must be 'quick' or 'full', got {mode!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "parts").mkdir(exist_ok=True)
    if only:
        unknown = sorted(set(only) - set(CLAIM_IDS))
        if unknown:
            raise ValueError(f"unknown claim id(s) {unknown}; known: {CLAIM_IDS}")
    syn_cfg = synthetic_config or (SyntheticConfig.quick() if mode == "quick" else SyntheticConfig.full())
    real_cfg = None
    if real:
        from .realclaims import RealConfig

        real_cfg = real_config or RealConfig.for_mode(mode, run=run, data_dir=data_dir, dataset=dataset)
    config = dict(mode=mode, run=str(run) if run else None, data_dir=str(data_dir) if data_dir else None,
                  dataset=dataset, synthetic=asdict(syn_cfg), real=real_cfg.to_dict() if real_cfg else None)
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
    for cid, fn, cfg in bar:
        bar.set_postfix_str(cid)
        fp = _fingerprint(dict(id=cid, cfg=asdict(cfg) if hasattr(cfg, "__dataclass_fields__") else str(cfg)))
        part = out / "parts" / f"{cid}.json"
        if part.exists() and not force:
            try:
                saved = json.loads(part.read_text())
                if saved.get("fingerprint") == fp and (out / (saved["verdict"].get("figure") or "")).exists():
                    verdicts.append(Verdict.from_dict(saved["verdict"]))
                    continue
            except (json.JSONDecodeError, KeyError, TypeError):
                pass  # a damaged part is simply redone
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
        verdicts.append(v)
    order = {cid: i for i, cid in enumerate(CLAIM_IDS)}
    verdicts.sort(key=lambda v: order.get(v.id, len(order)))
    timings.write(out)
    write_report(out, verdicts, config)
    return verdicts
