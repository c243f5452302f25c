"""Wall time of the main job, ``python -m validation reproduce --quick``, into a fresh directory.

    python benchmarks/bench_reproduce.py [--out DIR] [--part synthetic|real|all]

Prints the total time and the time of each phase (synthetic claims; realnet training and side-trips),
measured in this run; the issue's budget is <= ~15 minutes on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time


def run(args, out):
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "validation", "reproduce", "--quick", "--out", out, "--no-progress"]
                   + args, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="output directory (default: a temporary one, removed afterwards)")
    ap.add_argument("--part", default="all", choices=("synthetic", "real", "all"))
    a = ap.parse_args(argv)
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
        print(f"  {'total (--quick)':45s} {sum(times.values()):8.1f} s   (budget ~900 s)")
        if t_resume is not None:
            print(f"  {'re-run on the finished directory (resume)':45s} {t_resume:8.1f} s")
    finally:
        if not a.out:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
