r"""Benchmark and measurements of realnet.hessian (HVP cost, Lanczos wall time, BatchNorm treatment).

    python benchmarks/bench_hessian.py [--part cost|lanczos|bn|sidetrip|all] [--width 16] [--sample 512]
                                       [--rounds 7] [--threads 1] [--device cpu] [--out benchmarks/results]
                                       [--lf-steps 0] [--lf-k 0]

* ``cost``: ResNet-20 (``create_model("resnet20", 10, small_stem=True, width=W)``) on digits-sized inputs
  (3x16x16), one fixed sample: the time of one HVP divided by the time of one gradient on the same
  sample ("gradient-costs"; goal <= 3), for both HVP methods (double backward, torch.func jvp(grad)) and
  both BatchNorm modes (batch: chunks of 32 = the quick run's batch; eval: one chunk = the sample).
  Rounds interleave gradient / HVP(double backward) / HVP(func) and the ratios are medians of per-round
  ratios, so a slowdown of the shared machine hits numerator and denominator alike.
* ``lanczos``: wall time and HVP count of ``lanczos(k=10)`` at the quick-job size: the quick validation
  run (digits, ResNet-20 width 16, batch 32, lr 0.05, momentum 0.9, wd 1e-4, 150 steps) trained here,
  its step-100 checkpoint, a sample of ``--sample`` training examples, batch-mode BN (chunks of 32).
* ``bn``: on that checkpoint, the top-5 eigenpairs with eval-mode and batch-mode BatchNorm, the cross
  Rayleigh quotients (each mode's eigenvectors in the other mode's Hessian), and the curvature the
  optimizer feels along each vector -- :math:`v^\top(\bar g(\theta+hv) - \bar g(\theta-hv))/2h` with
  :math:`\bar g` the mean over 200 fresh training batches of 32 of the train-mode-BN gradient (the
  gradient SGD uses), common batches at both points, with its standard error.
* ``sidetrip``: the ``linear-fit`` side-trip (``realnet.fit_linear_model``) end to end on that checkpoint with
  the quick validation sizes (``validation.real.RealConfig.for_mode("quick")``: k = 8, sample 8 x 32,
  16 curvature batches, 100 noise batches, kernels ema:0.1 / twopoint:20 / swa:20, lags 10, 20 blocks,
  N = 2,065 continuation steps; ``--lf-steps`` / ``--lf-k`` override N and k): total wall time and the
  side-trip's own per-phase timing (``timing`` in its summary: seconds per Lanczos iteration and per 1000
  continuation steps, for budgeting other sizes). Not part of ``all`` (it takes minutes).

The machine is shared (2 cores, other engineers' jobs): timings are medians of interleaved rounds and
the thread count is fixed (default 1: on this machine one torch thread is much faster for these small
ops under load). Writes ``bench_hessian_<date>.json`` into ``--out`` and prints a summary.

Results: ``benchmarks/results/bench_hessian_2026-12-01.json`` (``cost``, ``lanczos``, ``bn``),
``benchmarks/results/bench_hessian_sidetrip_2026-12-01.json`` (``sidetrip``), and the summary written at the time
with a run of the side-trip inside ``python -m validation reproduce``:
``benchmarks/results/2026-12-07-numbers-from-docstrings.md``. Budget other sizes of the side-trip with: Lanczos
iterations x seconds per iteration (proportional to the sample size), curvature ~ k x curvature_batches batch HVPs
(~4 gradients each), continuation ~ N x (seconds per 1000 steps) / 1000.
"""
from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from realnet.hessian import FlatModel, SampleLoss, lanczos  # noqa: E402
from realnet.models import count_parameters, create_model  # noqa: E402
from sgdtraj.files import write_json  # noqa: E402
from sgdtraj.provenance import package_versions  # noqa: E402


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device):
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def bench_cost(width: int, sample: int, rounds: int, device: str) -> dict:
    torch.manual_seed(0)
    model = create_model("resnet20", 10, small_stem=True, width=width).to(device)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(sample, 3, 16, 16, generator=g)
    y = torch.randint(0, 10, (sample,), generator=g)
    model.train()
    with torch.no_grad():
        model(x[:64].to(device))  # non-trivial running statistics for eval mode
    out = {"model": "resnet20", "width": width, "params": count_parameters(model), "sample": sample, "modes": {}}
    for mode, chunk in (("batch", 32), ("eval", sample)):
        L = SampleLoss(model, x, y, chunk_size=chunk, bn_mode=mode, device=device)
        v = torch.randn(L.size, generator=torch.Generator().manual_seed(2)).to(device)
        for _ in range(2):  # warm-up (and torch.func's one-time decomposition loading)
            L.gradient(), L.hvp(v, method="double_backward"), L.hvp(v, method="func")
        tg, tdb, tfn = [], [], []
        for _ in range(rounds):
            tg.append(_timed(L.gradient, device))
            tdb.append(_timed(lambda: L.hvp(v, method="double_backward"), device))
            tfn.append(_timed(lambda: L.hvp(v, method="func"), device))
        out["modes"][mode] = {
            "chunk_size": chunk,
            "gradient_s_median": statistics.median(tg),
            "hvp_double_backward_s_median": statistics.median(tdb),
            "hvp_func_s_median": statistics.median(tfn),
            "ratio_double_backward": statistics.median(b / a for a, b in zip(tg, tdb)),
            "ratio_func": statistics.median(b / a for a, b in zip(tg, tfn)),
            "rounds": rounds,
        }
    return out


def quick_checkpoint(workdir: Path, threads: int):
    """Train the quick validation run (100 + 50 steps) and return (cfg, data, model at step 100, run directory)."""
    from realnet.checkpoint import checkpoint_path, load_checkpoint
    from realnet.config import TrainConfig
    from realnet.data import build_data
    from realnet.trainer import build_model, restore_checkpoint, train

    run = workdir / "run"
    cfg = TrainConfig(dataset="digits", model="resnet20", width=16, steps=150, batch_size=32, lr=0.05, seed=0,
                      checkpoint_every=25, checkpoint_steps=[100], eval_every=50, threads=threads, progress=False)
    train(cfg, run)
    from realnet.trainer import load_config
    cfg = load_config(run)
    data = build_data(cfg)
    model = build_model(cfg, data.num_classes)
    restore_checkpoint(load_checkpoint(checkpoint_path(run, 100)), model, rng=False)
    return cfg, data, model, run


def bench_sidetrip(run: Path, step: int, threads: int, device: str, steps: int = 0, k: int = 0) -> dict:
    """The linear-fit side-trip with the quick validation sizes from ``step`` of ``run``."""
    from dataclasses import asdict

    from realnet.sidetrips.linear_fit import fit_linear_model
    from validation.real import RealConfig

    c = RealConfig.for_mode("quick")
    opts = dict(k=k or c.linear_fit_k, sample_size=c.linear_fit_sample_batches * c.batch_size,
                steps=steps or c.linear_fit_steps, lags=c.linear_fit_lags, kernels=list(c.linear_fit_kernels),
                n_blocks=c.linear_fit_blocks, noise_batches=c.linear_fit_noise_batches,
                curvature_batches=c.linear_fit_curvature_batches)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        r = fit_linear_model(run, step, Path(tmp) / "lf", threads=threads, device=device, progress=False, **opts)
        wall = time.perf_counter() - t
    return {"options": opts, "wall_s": wall, "sidetrip_wall_s": r.wall_s, "timing": r.timing,
            "lanczos": asdict(r.lanczos), "steps": r.steps, "parameters": r.parameters,
            "statistic": r.statistic.value, "variance_statistic": r.variance_statistic.value}


def _train_sample(data, n: int, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.train), generator=g)[:n]
    return data.train.x[idx], data.train.y[idx]


def bench_lanczos(model, data, sample: int, device: str, k: int = 10) -> dict:
    x, y = _train_sample(data, sample)
    L = SampleLoss(model, x, y, chunk_size=32, bn_mode="batch", device=device)
    t = time.perf_counter()
    r = lanczos(L.operator(), L.size, k=k, tol=1e-4, seed=0, device=device)
    wall = time.perf_counter() - t
    tg = statistics.median(_timed(L.gradient, device) for _ in range(3))
    return {"k": k, "sample": sample, "chunk_size": 32, "bn_mode": "batch", "tol": 1e-4, "wall_s": wall,
            "matvecs": r.matvecs, "restarts": r.restarts, "krylov_dim": r.krylov_dim, "gradient_s": tg,
            "eigenvalues": r.eigenvalues.tolist(), "relative_residuals": (r.residuals / abs(r.eigenvalues[0])).tolist(),
            "converged": r.converged.tolist()}


def bench_bn(model, data, sample: int, device: str, k: int = 5, n_batches: int = 200, h: float = 1e-3) -> dict:
    x, y = _train_sample(data, sample)
    Le = SampleLoss(model, x, y, chunk_size=min(sample, 256), bn_mode="eval", device=device)
    Lb = SampleLoss(model, x, y, chunk_size=32, bn_mode="batch", device=device)
    re = lanczos(Le.operator(), Le.size, k=k, tol=1e-5, seed=0, device=device)
    rb = lanczos(Lb.operator(), Lb.size, k=k, tol=1e-5, seed=0, device=device)

    def rayleigh(L, V):
        return [float(v @ L.hvp(v)) for v in V]

    # curvature felt by SGD: finite difference of the mean train-mode-BN batch gradient over fresh batches
    fm = FlatModel(model, bn_mode="batch", device=device)
    g = torch.Generator().manual_seed(11)
    batches = [torch.randperm(len(data.train), generator=g)[:32] for _ in range(n_batches)]

    def felt(V):
        vals, ses = [], []
        for v in V:
            d = []
            for idx in batches:
                xb, yb = data.train.x[idx], data.train.y[idx]
                gp = fm.grad(xb, yb, fm.theta0 + h * v)
                gm = fm.grad(xb, yb, fm.theta0 - h * v)
                d.append(float(v @ (gp - gm)) / (2 * h))
            vals.append(float(np.mean(d)))
            ses.append(float(np.std(d, ddof=1) / np.sqrt(len(d))))
        return vals, ses

    fe, fe_se = felt(re.eigenvectors)
    fb, fb_se = felt(rb.eigenvectors)
    overlap = (re.eigenvectors @ rb.eigenvectors.T).abs().cpu().numpy()
    return {
        "sample": sample, "k": k, "fresh_batches": n_batches, "fd_step": h,
        "eval": {"eigenvalues": re.eigenvalues.tolist(), "rayleigh_in_batch_hessian": rayleigh(Lb, re.eigenvectors),
                 "sgd_felt_curvature": fe, "sgd_felt_curvature_se": fe_se},
        "batch": {"eigenvalues": rb.eigenvalues.tolist(), "rayleigh_in_eval_hessian": rayleigh(Le, rb.eigenvectors),
                  "sgd_felt_curvature": fb, "sgd_felt_curvature_se": fb_se},
        "abs_cos_eval_vs_batch": overlap.tolist(),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=["cost", "lanczos", "bn", "sidetrip", "all"], default="all")
    ap.add_argument("--lf-steps", type=int, default=0, help="sidetrip: continuation steps N (0 = quick default)")
    ap.add_argument("--lf-k", type=int, default=0, help="sidetrip: Hessian directions k (0 = quick default)")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--sample", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0 = leave the default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    a = ap.parse_args(argv)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    res = {"date": dt.date.today().isoformat(), "machine": platform.machine(), "threads": torch.get_num_threads(),
           "device": a.device, "versions": package_versions(), "note": "shared machine: medians of interleaved rounds"}
    try:
        import os
        res["load_average"] = os.getloadavg()
    except OSError:  # pragma: no cover
        pass
    t0 = time.perf_counter()
    if a.part in ("cost", "all"):
        res["cost"] = bench_cost(a.width, a.sample, a.rounds, a.device)
        for mode, r in res["cost"]["modes"].items():
            print(f"cost [{mode:5s}] grad {r['gradient_s_median']:.3f}s  HVP/grad: double_backward "
                  f"{r['ratio_double_backward']:.2f}  func {r['ratio_func']:.2f}", flush=True)
    if a.part in ("lanczos", "bn", "sidetrip", "all"):
        with tempfile.TemporaryDirectory() as tmp:
            cfg, data, model, run = quick_checkpoint(Path(tmp), a.threads)
            model = model.to(a.device)
            if a.part == "sidetrip":
                res["sidetrip"] = r = bench_sidetrip(run, 100, a.threads, a.device, a.lf_steps,
                                                     a.lf_k)
                tm = {k: v["wall_s"] for k, v in r["timing"].items()}
                print(f"linear-fit side-trip (k={r['options']['k']}, N={r['steps']}): {r['wall_s']:.1f}s total; "
                      f"Lanczos {tm['lanczos']:.1f}s ({r['lanczos']['matvecs']} HVPs, "
                      f"{tm['lanczos'] / max(r['lanczos']['matvecs'], 1):.2f}s/iteration), curvature "
                      f"{tm['curvature']:.1f}s, noise {tm['noise']:.1f}s, continuation {tm['continuation']:.1f}s "
                      f"({1000 * tm['continuation'] / max(r['steps'], 1):.1f}s per 1000 steps)", flush=True)
            if a.part in ("lanczos", "all"):
                res["lanczos"] = bench_lanczos(model, data, a.sample, a.device)
                r = res["lanczos"]
                print(f"lanczos k=10 sample {r['sample']}: {r['wall_s']:.1f}s, {r['matvecs']} HVPs, "
                      f"{r['restarts']} restarts; top eigenvalues {np.round(r['eigenvalues'][:3], 3)}", flush=True)
            if a.part in ("bn", "all"):
                res["bn"] = bench_bn(model, data, a.sample, a.device)
                for mode in ("eval", "batch"):
                    r = res["bn"][mode]
                    other = "rayleigh_in_batch_hessian" if mode == "eval" else "rayleigh_in_eval_hessian"
                    print(f"bn [{mode}] eig {np.round(r['eigenvalues'], 3)}  other-mode Rayleigh "
                          f"{np.round(r[other], 3)}  SGD-felt {np.round(r['sgd_felt_curvature'], 3)} "
                          f"+- {np.round(r['sgd_felt_curvature_se'], 3)}", flush=True)
    res["wall_s"] = time.perf_counter() - t0
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "_sidetrip" if a.part == "sidetrip" else ""  # its own file: never overwrites the other parts' results
    path = out / f"bench_hessian{suffix}_{res['date']}.json"
    write_json(path, res)
    print(f"wrote {path}")
    return res


if __name__ == "__main__":
    main()
