"""Time of the main job, ``python -m validation reproduce --quick``, into a fresh directory, split into its parts.

    python benchmarks/bench_reproduce.py [--out DIR] [--part synthetic|real|all] [--workers N]
    python benchmarks/bench_reproduce.py --from OUT       (only print the split of a finished OUT/timings.json)

Runs the synthetic claims, then the real-network claims (as two processes, each timed from outside), then the
whole job again on the finished directory (resume: nothing is redone). Prints the total and the split that the
job records itself in ``OUT/timings.json`` (:mod:`validation.timings`): training, each side-trip (lr-sweep,
fixed-batch, averaging, alignment, divergence, the eq. 13 pairs inside it, linear-fit), the premises'
measurement, the rest of the real-network claims (figures, statistics) and the synthetic part -- each as wall
time AND process CPU time. The side-trips run in 2 worker processes at once on a 2-core CPU (``--workers``, the
job's default; ``--workers 1``: one after the other, the baseline of that speed-up). The machine may be shared: wall
time is then inflated while CPU time is not (torch
runs one thread in the quick job, so on a quiet machine wall ~ CPU for the real-network parts; numba may use
more than one thread in the synthetic part). The budget is <= 12 minutes on a 2-core CPU.
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


def run(args, out, workers=None):
    t0 = time.perf_counter()
    extra = ["--workers", str(workers)] if workers else []
    subprocess.run([sys.executable, "-m", "validation", "reproduce", "--quick", "--out", out, "--no-progress"]
                   + args + extra, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def split(parts: dict) -> list[tuple[str, float, float, bool]]:
    """(name, wall s, cpu s, counted) per part of a reproduce run, from ``OUT/timings.json``'s ``parts``.

    ``counted``: the part adds to the job's wall time. Side-trips computed by the prefetch's worker processes
    (records with a ``worker`` pid) run concurrently: they are listed with their own wall time, and the wall
    time they cost the job is the prefetch's (minus the training it starts with)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from validation.synthetic import SYNTHETIC_CLAIMS

    def get(name):
        p = parts.get(name)
        return (p["wall_s"], p["cpu_s"]) if p else (0.0, 0.0)

    def total(names):
        vals = [get(n) for n in names]
        return sum(v[0] for v in vals), sum(v[1] for v in vals)

    def in_worker(name):
        return parts.get(name, {}).get("worker") is not None

    prefetched = "prefetch" in parts
    workers = {p["worker"] for k, p in parts.items() if p.get("worker") is not None}
    rows = [("training (main trajectory)", *get("training"), True)]
    trips = []
    sweeps = [k for k in parts if k == "sidetrip:lr-sweep" or k.startswith("sidetrip:lr-sweep-b")]
    trips.append((f"side-trip lr-sweep ({len(sweeps)} runs: fig2, fig13)", *total(sweeps), sweeps))
    for key, label in (("fixed-batch", "fixed-batch (fig3)"), ("averaging", "averaging (fig5)"),
                       ("alignment", "alignment (fig7)")):
        trips.append((f"side-trip {label}", *get(f"sidetrip:{key}"), [f"sidetrip:{key}"]))
    dw, dc = get("sidetrip:divergence")
    pw, pc = get("sidetrip:divergence:pairs")
    fw, fc = get("sidetrip:divergence:fixed_batch")
    trips.append(("side-trip divergence A, B, H (fig6, fig8)", dw - pw, dc - pc, ["sidetrip:divergence"]))
    trips.append(("  of which Lemma 2's fixed-batch records", fw, fc, []))
    trips.append(("side-trip divergence: eq13 pairs (extra trajectories)", pw, pc, ["sidetrip:divergence"]))
    trips.append(("side-trip linear-fit", *get("sidetrip:linear-fit"), ["sidetrip:linear-fit"]))
    for name, w, c, keys in trips:
        conc = bool(keys) and all(in_worker(k) for k in keys)
        rows.append((name + (" [worker]" if conc else ""), w, c, not conc and not name.startswith("  ")))
    if prefetched:
        tw, tc = get("training")
        pw_, pc_ = get("prefetch")
        rows.append((f"side-trips in {len(workers)} worker processes at once (prefetch wall - training)",
                     pw_ - tw, pc_ - tc, True))
    rows.append(("premises (a), (b) at the branch point", *get("regime"), True))
    rows.append(("gradient noise scale at the branch point (fig13)", *get("noise-scale"), True))
    rows.append(("controls (linear model, positive and negative, replicated)", *get("controls"), True))
    real_claims = [k for k in parts if k.startswith("claim:") and k[6:] not in SYNTHETIC_CLAIMS]
    rw, rc = total(real_claims)
    inside = [r for r in rows if r[3] and not r[0].startswith(("side-trips in", "controls"))]
    if prefetched:
        inside = [r for r in inside if not r[0].startswith("training")]  # trained by the prefetch, not a claim
    rows.append(("real-network claims: figures, statistics (rest)", rw - sum(r[1] for r in inside),
                 rc - sum(r[2] for r in inside), True))
    rows.append(("synthetic claims", *total([f"claim:{c}" for c in SYNTHETIC_CLAIMS]), True))
    return rows


def print_split(out) -> None:
    data = json.loads((Path(out) / "timings.json").read_text())
    rows = split(data["parts"])
    print(f"{'part':74s} {'wall s':>8s} {'cpu s':>8s}")
    for name, w, c, _ in rows:
        print(f"  {name:72s} {w:8.1f} {c:8.1f}")
    top = [r for r in rows if r[3]]
    print(f"  {'sum of the parts that add to the wall time ([worker] rows run concurrently)':72s} "
          f"{sum(r[1] for r in top):8.1f} {sum(r[2] for r in top):8.1f}   (budget {BUDGET_S:.0f} s)")
    print(f"load average when the timings were written: {data.get('load_average_at_write')}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="output directory (default: a temporary one, removed afterwards)")
    ap.add_argument("--part", default="all", choices=("synthetic", "real", "all"))
    ap.add_argument("--from", dest="from_dir", help="print the split of an existing OUT (runs nothing)")
    ap.add_argument("--workers", type=int, default=None, help="side-trips at once (default: the job's own choice)")
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
            times["real-network claims (training + side-trips)"] = run(["--real-only"], out, a.workers)
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
