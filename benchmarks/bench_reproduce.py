"""Time of the main job, ``python -m validation reproduce --quick``, into a fresh directory, split into its parts.

    python benchmarks/bench_reproduce.py [--out DIR] [--part synthetic|real|all]
    python benchmarks/bench_reproduce.py --from OUT       (only print the split of a finished OUT/timings.json)

Runs the synthetic claims, then the real-network claims (as two processes, each timed from outside), then the
whole job again on the finished directory (resume: nothing is redone). Prints the total and the split that the
job records itself in ``OUT/timings.json`` (:mod:`validation.timings`): training, each side-trip (lr-sweep,
fixed-batch, averaging, alignment, divergence, the eq. 13 pairs inside it, linear-fit), the premises'
measurement, the rest of the real-network claims (figures, statistics) and the synthetic part -- each as wall
time AND process CPU time. The machine may be shared: wall time is then inflated while CPU time is not (torch
runs one thread in the quick job, so on a quiet machine wall ~ CPU for the real-network parts; numba may use
more than one thread in the synthetic part). The budget is <= 12 minutes on a 2-core CPU (issue 11).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUDGET_S = 720.0


def run(args, out):
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "validation", "reproduce", "--quick", "--out", out, "--no-progress"]
                   + args, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def split(parts: dict) -> list[tuple[str, float, float]]:
    """(name, wall s, cpu s) per part of a reproduce run, from ``OUT/timings.json``'s ``parts``."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from validation.synthetic import SYNTHETIC_CLAIMS

    def get(name):
        p = parts.get(name)
        return (p["wall_s"], p["cpu_s"]) if p else (0.0, 0.0)

    def total(names):
        vals = [get(n) for n in names]
        return sum(v[0] for v in vals), sum(v[1] for v in vals)

    sweeps = [k for k in parts if k == "sidetrip:lr-sweep" or k.startswith("sidetrip:lr-sweep-b")]
    rows = [("training (main trajectory)", *get("training"))]
    rows.append((f"side-trip lr-sweep ({len(sweeps)} runs: fig2, fig13)", *total(sweeps)))
    for key, label in (("fixed-batch", "fixed-batch (fig3)"), ("averaging", "averaging (fig5)"),
                       ("alignment", "alignment (fig7)")):
        rows.append((f"side-trip {label}", *get(f"sidetrip:{key}")))
    dw, dc = get("sidetrip:divergence")
    pw, pc = get("sidetrip:divergence:pairs")
    fw, fc = get("sidetrip:divergence:fixed_batch")
    rows.append(("side-trip divergence A, B, H (fig6, fig8)", dw - pw, dc - pc))
    rows.append(("  of which Lemma 2's fixed-batch records", fw, fc))
    rows.append(("side-trip divergence: eq13 pairs (3 extra trajectories)", pw, pc))
    rows.append(("side-trip linear-fit", *get("sidetrip:linear-fit")))
    rows.append(("premises (a), (b) at the branch point", *get("regime")))
    real_claims = [k for k in parts if k.startswith("claim:") and k[6:] not in SYNTHETIC_CLAIMS]
    rw, rc = total(real_claims)
    inner = [r for r in rows if not r[0].startswith("  ")]
    rows.append(("real-network claims: figures, statistics (rest)", rw - sum(r[1] for r in inner),
                 rc - sum(r[2] for r in inner)))
    rows.append(("synthetic claims", *total([f"claim:{c}" for c in SYNTHETIC_CLAIMS])))
    return rows


def print_split(out) -> None:
    data = json.loads((Path(out) / "timings.json").read_text())
    rows = split(data["parts"])
    print(f"{'part':58s} {'wall s':>8s} {'cpu s':>8s}")
    for name, w, c in rows:
        print(f"  {name:56s} {w:8.1f} {c:8.1f}")
    top = [r for r in rows if not r[0].startswith("  ")]
    print(f"  {'sum of the parts':56s} {sum(r[1] for r in top):8.1f} {sum(r[2] for r in top):8.1f}"
          f"   (budget {BUDGET_S:.0f} s)")
    print(f"load average when the timings were written: {data.get('load_average_at_write')}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="output directory (default: a temporary one, removed afterwards)")
    ap.add_argument("--part", default="all", choices=("synthetic", "real", "all"))
    ap.add_argument("--from", dest="from_dir", help="print the split of an existing OUT (runs nothing)")
    a = ap.parse_args(argv)
    if a.from_dir:
        print_split(a.from_dir)
        return
    out = a.out or tempfile.mkdtemp(prefix="bench-reproduce-")
    try:
        times = {}
        if a.part in ("synthetic", "all"):
            times["synthetic claims"] = run(["--synthetic-only"], out)
        if a.part in ("real", "all"):
            times["real-network claims (training + side-trips)"] = run(["--real-only"], out)
        t_resume = run([], out) if a.part == "all" else None
        print(f"cores: {os.cpu_count()}")
        for k, v in times.items():
            print(f"  {k:45s} {v:8.1f} s")
        print(f"  {'total (--quick)':45s} {sum(times.values()):8.1f} s   (budget {BUDGET_S:.0f} s)")
        if t_resume is not None:
            print(f"  {'re-run on the finished directory (resume)':45s} {t_resume:8.1f} s")
        print_split(out)
    finally:
        if not a.out:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
