"""Cost of realnet.averaging's update per training step, against torch.optim.swa_utils.AveragedModel (CPU).

    python benchmarks/bench_averaging.py [--quick] [--rounds N] [--threads N] [--clock wall|cpu] [--out DIR]

For ResNet-20 and ResNet-34 (``realnet.models.create_model``, small stem, synthetic 3x16x16 images)
each round times, in a shuffled order, one SGD step (forward + backward + momentum step) and one
``update_parameters`` call of every averaging variant:

* ``kam_ema`` -- ``KernelAveragedModel(model, "ema:0.001")`` (foreach lerp); ``avgmodel_ema`` --
  ``AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.999))``: the goal is ratio <= 1;
* ``kam_mean`` -- a point of an at_step average (``swa:W`` at ``at_step=W``: every call adds a point to
  the running mean); ``avgmodel_swa`` -- AveragedModel's default average (the same arithmetic on CPU);
* ``kam_swa_window`` -- sliding ``swa:8`` (ring of 8 copies + float64 running sum);
* ``kam_twopoint_sliding`` -- sliding ``twopoint:4`` (ring of 4 copies, a fresh two-point mean).

Reported: per variant the median time over rounds, its ratio to the median SGD step, and the
per-round ratio ``kam_ema / avgmodel_ema`` (median and quartiles: paired in each round, so machine
noise largely cancels); the spread of the SGD step over rounds (IQR / median) states the noise.
``--clock cpu`` times with ``time.process_time`` (CPU seconds of this process; with ``--threads 1`` the
robust choice on a shared, oversubscribed machine, where wall-clock samples mostly measure the neighbours).
Writes ``bench_averaging_<date>.json`` (with provenance) into ``--out``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing it
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn  # noqa: E402

from realnet.averaging import KernelAveragedModel  # noqa: E402
from realnet.models import count_parameters, create_model  # noqa: E402
from sgdtraj.files import write_json  # noqa: E402
from sgdtraj.provenance import provenance  # noqa: E402

BIG = 10 ** 5  # swa:BIG at at_step=BIG: every call of the benchmark is a point of the running mean


def _variants(model):
    return {
        "kam_ema": KernelAveragedModel(model, "ema:0.001"),
        "avgmodel_ema": AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.999)),
        "kam_mean": KernelAveragedModel(model, f"swa:{BIG}", at_step=BIG),
        "avgmodel_swa": AveragedModel(model),
        "kam_swa_window": KernelAveragedModel(model, "swa:8"),
        "kam_twopoint_sliding": KernelAveragedModel(model, "twopoint:4"),
    }


def bench_model(name: str, batch: int, size: int, rounds: int, inner: int, seed: int = 0,
                clock=time.perf_counter) -> dict:
    torch.manual_seed(seed)
    model = create_model(name, 10, small_stem=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def sgd_step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    variants = _variants(model)
    for v in variants.values():  # AveragedModel's first call is a copy: start both in steady state
        v.update_parameters(model)
    jobs = {"sgd_step": sgd_step, **{k: (lambda v=v: v.update_parameters(model)) for k, v in variants.items()}}
    for fn in jobs.values():  # warm-up
        for _ in range(2):
            fn()
    times: dict[str, list[float]] = {k: [] for k in jobs}
    rng = random.Random(seed)
    for _ in range(rounds):
        order = list(jobs)
        rng.shuffle(order)
        for k in order:
            n = 1 if k == "sgd_step" else inner
            t = clock()
            for _ in range(n):
                jobs[k]()
            times[k].append((clock() - t) / n)
    med = {k: float(np.median(v)) for k, v in times.items()}
    step = med["sgd_step"]
    q = np.percentile(times["sgd_step"], [25, 75])
    paired = np.asarray(times["kam_ema"]) / np.asarray(times["avgmodel_ema"])
    paired_mean = np.asarray(times["kam_mean"]) / np.asarray(times["avgmodel_swa"])
    return {
        "model": name, "params": count_parameters(model), "batch": batch, "image": size, "rounds": rounds,
        "updates_per_round": inner, "median_s": med,
        "ratio_to_sgd_step": {k: med[k] / step for k in med if k != "sgd_step"},
        "kam_ema_over_avgmodel_ema": {"median": float(np.median(paired)),
                                      "q25": float(np.percentile(paired, 25)),
                                      "q75": float(np.percentile(paired, 75))},
        "kam_mean_over_avgmodel_swa": {"median": float(np.median(paired_mean)),
                                       "q25": float(np.percentile(paired_mean, 25)),
                                       "q75": float(np.percentile(paired_mean, 75))},
        "sgd_step_iqr_over_median": float((q[1] - q[0]) / step),
        "samples_s": times,
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer rounds (smoke run)")
    ap.add_argument("--rounds", type=int, default=0, help="rounds per model (default 25; --quick 7)")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = default)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: time.perf_counter; cpu: time.process_time (this process's CPU time)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    rounds = a.rounds or (7 if a.quick else 25)
    clock = time.perf_counter if a.clock == "wall" else time.process_time
    config = {"rounds": rounds, "threads": torch.get_num_threads(), "clock": a.clock,
              "models": [("resnet20", 32, 16, 10), ("resnet34", 16, 16, 3)]}
    res = {"date": dt.date.today().isoformat(), **provenance(0, config), "results": []}
    for name, batch, size, inner in config["models"]:
        r = bench_model(name, batch, size, rounds, inner, clock=clock)
        res["results"].append(r)
        print(f"\n{name} ({r['params'] / 1e6:.2f}M parameters, batch {batch}, {size}x{size}): SGD step "
              f"{r['median_s']['sgd_step'] * 1e3:.1f} ms (IQR/median {r['sgd_step_iqr_over_median']:.2f}, "
              f"{rounds} rounds, {a.clock} clock, {torch.get_num_threads()} threads)")
        for k, v in r["ratio_to_sgd_step"].items():
            print(f"  {k:22s} {r['median_s'][k] * 1e3:8.3f} ms  = {v:6.4f} x SGD step")
        e, m = r["kam_ema_over_avgmodel_ema"], r["kam_mean_over_avgmodel_swa"]
        print(f"  paired per round: kam_ema / avgmodel_ema = {e['median']:.3f} "
              f"(quartiles {e['q25']:.3f}..{e['q75']:.3f});"
              f" kam_mean / avgmodel_swa = {m['median']:.3f} ({m['q25']:.3f}..{m['q75']:.3f})")
    path = Path(a.out) / f"bench_averaging_{res['date']}.json"
    write_json(path, res)
    print(f"\nwrote {path}")
    return res


if __name__ == "__main__":
    main()
