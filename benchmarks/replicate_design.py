"""Which replicates: side-trips at several branch points of one trajectory, or independent trajectories?

    python benchmarks/replicate_design.py --out DIR [--seeds 0 1 2] [--claims fig2-single-step fig13-batch-size]
        [--reuse SEED=REPORT_DIR ...]

For every trajectory seed s it runs ``validation reproduce --quick --seed s --only CLAIMS`` into ``DIR/seed-s``
(in this process, without the controls, which do not depend on the seed; resumable; ``--reuse 0=OUT`` takes seed
0's finished report from an earlier quick job) and reads
each claim's per-replicate values (one trajectory, R branch points with their own side-trip seeds). With the
values y[s, r] (trajectory s, branch point r) it prints a one-way analysis of variance per claim: the mean square
between trajectories, MS_b = R var_s(mean_r y), and within a trajectory, MS_w = mean_s var_r(y) (each with its
degrees of freedom), the F ratio MS_b / MS_w with its p-value, and the intraclass correlation
(MS_b - MS_w) / (MS_b + (R - 1) MS_w). An F ratio near 1 (a large p-value) says trajectories differ no more than
branch points of one trajectory do: the interval across branch points then includes the seed-to-seed variation.
A large F says it does not: independent trajectories are needed. Writes ``DIR/replicate_design.json`` (with
provenance).
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _values(report: Path, claim: str) -> list[float]:
    for d in json.loads((report / "verdicts.json").read_text()):
        if d["id"] == claim:
            return [math.nan if r["value"] is None else float(r["value"]) for r in d["details"]["replicates"]]
    raise KeyError(f"{claim} not in {report}/verdicts.json")


def anova(y: np.ndarray, log: bool = False) -> dict:
    """One-way ANOVA of y[s, r] (rows: trajectories, columns: branch points)."""
    from scipy import stats

    y = np.log(y) if log else np.asarray(y, float)
    S, R = y.shape
    ms_b = R * y.mean(axis=1).var(ddof=1)
    ms_w = y.var(axis=1, ddof=1).mean()
    F = ms_b / ms_w if ms_w > 0 else math.inf
    p = float(stats.f.sf(F, S - 1, S * (R - 1))) if math.isfinite(F) else 0.0
    icc = (ms_b - ms_w) / (ms_b + (R - 1) * ms_w) if ms_b + (R - 1) * ms_w > 0 else math.nan
    return dict(scale="log" if log else "linear", trajectories=S, branch_points=R, ms_between=float(ms_b),
                dof_between=S - 1, ms_within=float(ms_w), dof_within=S * (R - 1), F=float(F), p_value=p,
                icc=float(icc), values=y.tolist())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--claims", nargs="+", default=["fig2-single-step", "fig13-batch-size"])
    ap.add_argument("--reuse", nargs="*", default=[], help="SEED=REPORT_DIR: a finished quick report of that seed")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    reuse = dict(x.split("=", 1) for x in a.reuse)
    reports = {}
    import validation.reproduction as reproduction

    # the controls do not depend on the trajectory seed: not rerun for every seed here
    reproduction._run_controls = lambda job: None
    reproduction._ControlsProcess.start = classmethod(lambda cls, job: None)
    for s in a.seeds:
        if str(s) in reuse:
            reports[s] = Path(reuse[str(s)])
            continue
        d = out / f"seed-{s}"
        print(f"validation reproduce --quick --seed {s} --only {' '.join(a.claims)} --out {d}", flush=True)
        reproduction.reproduce(d, mode="quick", only=list(a.claims), synthetic=False, progress=False, seed=s)
        reports[s] = d
    from validation.real import REAL_CLAIMS

    rows = {}
    for c in a.claims:
        y = np.array([_values(reports[s], c) for s in a.seeds])
        rows[c] = anova(y, log=REAL_CLAIMS[c].scale == "log")
        r = rows[c]
        print(f"{c}: values {np.round(y, 4).tolist()} ({r['scale']}); MS between {r['ms_between']:.3g} "
              f"(dof {r['dof_between']}), within {r['ms_within']:.3g} (dof {r['dof_within']}); F = {r['F']:.3g}, "
              f"p = {r['p_value']:.3g}; ICC = {r['icc']:.3g}")
    from sgdtraj.files import write_json
    from sgdtraj.provenance import environment

    write_json(out / "replicate_design.json", dict(seeds=a.seeds, claims=rows, environment=environment(),
                                                   reports={str(k): str(v) for k, v in reports.items()}),
               nonfinite="string")
    shutil.copy(out / "replicate_design.json", out / "replicate_design.last.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
