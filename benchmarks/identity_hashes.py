"""Fingerprints of results that a refactor must leave bit-identical.

    python benchmarks/identity_hashes.py [--part simulate|train|averaging|verdicts|all] [--verdicts OUT/verdicts.json]

* ``simulate``: SHA-256 of every array of ``qs.simulate`` results (loss, loss_std, final, chain_loss,
  states) for diagonal / small dense / BLAS dense / non-normal models, SGD and momentum, every kernel
  type, both methods, two seeds -- each computed under ``NUMBA_NUM_THREADS=1`` and ``=2`` (subprocesses);
  also ``qs.expected_loss`` curves and ``qs.stationary_covariance`` matrices.
* ``train``: a 40-step ``realnet train`` run on digits (CPU, one thread): ``metrics.csv`` without its
  timing column, ``evals.csv`` and the final checkpoint's model and optimizer tensors.
* ``averaging``: every tensor of ``KernelAveragedModel``'s state (module, rings, running sums) after 12 updates of
  a small conv net with BatchNorm, for every kernel type, with ``at_step`` and without, buffers averaged or
  copied, float32 and float64; and ``EquivalentScheduleLR``'s learning rates.
* ``verdicts``: the ``value`` and every sub-check value of each verdict in a ``verdicts.json``.

Prints one JSON object; compare two runs with ``diff``. Before/after a change, run it on both trees.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# import the packages of the checkout this script lives in (not whatever `pip install -e` points at)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _h(*arrays) -> str:
    import numpy as np

    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"None")
            continue
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:20]


def _cases():
    import numpy as np

    import quadsgd as qs

    rng = np.random.default_rng(123)
    A = rng.normal(size=(3, 3))
    A = A @ A.T + 0.5 * np.eye(3)
    C = rng.normal(size=(3, 3))
    C = C @ C.T + 0.3 * np.eye(3)
    Ab = rng.normal(size=(40, 40)) / 8
    Ab = Ab @ Ab.T + 0.2 * np.eye(40)
    ks = (qs.Last(), qs.EMA(0.05), qs.TwoPoint(7), qs.NPoint(3, 4), qs.SWA(9), qs.Kernel([0.5, 0.0, 0.3, 0.2]))
    return {
        "diag-sgd": (qs.LinearModel(np.array([1.0, 0.3, 0.015]), lr=0.05), ks),
        "diag-mom": (qs.LinearModel(np.array([1.0, 0.3, 0.015]), lr=0.05, momentum=0.9), ks),
        "diag-2ema": (qs.LinearModel(np.array([1.0, 0.015]), lr=0.1), (qs.EMA(0.1), qs.EMA(0.01), qs.Last())),
        "dense": (qs.LinearModel(A, lr=0.1), ks),
        "dense-mom": (qs.LinearModel(A, lr=0.05, momentum=0.5), ks),
        "nonnormal": (qs.LinearModel.from_quadratic(A, C, lr=0.1), ks),
        "blas": (qs.LinearModel(Ab, lr=0.1), (qs.Last(), qs.EMA(0.1), qs.TwoPoint(5))),
    }


def simulate_hashes() -> dict:
    import numpy as np

    import quadsgd as qs

    out = {}
    for name, (m, ks) in _cases().items():
        for method in ("step", "exact"):
            if method == "exact" and name == "blas":
                continue
            for seed in (0, 7):
                r = qs.simulate(m, 120, 37, ks, record_every=10, seed=seed, method=method, per_chain_loss=True,
                                record_states=3, u0=np.linspace(0.5, 1.5, m.dim))
                out[f"sim/{name}/{method}/{seed}"] = _h(r.loss, r.loss_std, r.final, r.chain_loss, r.states)
        lrs = np.concatenate([np.full(30, m.lr), np.full(30, m.lr / 2)])
        for k in ks:
            if name == "blas":
                break
            out[f"theory/{name}/{k!r}/expected_loss"] = _h(qs.expected_loss(m, k, steps=60, lr=lrs))
            out[f"theory/{name}/{k!r}/cov"] = _h(qs.stationary_covariance(m, k))
    f32 = qs.simulate(_cases()["diag-sgd"][0], 50, 16, (qs.Last(), qs.SWA(5)), seed=3, dtype=np.float32)
    out["sim/float32"] = _h(f32.loss, f32.final)
    return out


def train_hashes() -> dict:
    import numpy as np
    import torch

    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, "-m", "realnet", "train", "--dataset", "digits", "--out", d, "--steps", "40",
               "--checkpoint-every", "20", "--eval-every", "20", "--threads", "1", "--progress", "false"]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=os.getcwd())
        rows = Path(d, "metrics.csv").read_text().splitlines()
        head = rows[0].split(",")
        keep = [i for i, c in enumerate(head) if c != "time_s"]
        metrics = "\n".join(",".join(r.split(",")[i] for i in keep) for r in rows)
        ck = sorted(Path(d).glob("checkpoints/step_*.pt")) or sorted(Path(d).rglob("step_*.pt"))
        from realnet.checkpoint import load_checkpoint

        payload = load_checkpoint(ck[-1])
        tens = []

        def walk(x):
            if isinstance(x, torch.Tensor):
                tens.append(x.detach().cpu().numpy())
            elif isinstance(x, dict):
                for k in sorted(x, key=str):
                    walk(x[k])
            elif isinstance(x, (list, tuple)):
                for v in x:
                    walk(v)

        walk(payload.get("model"))
        walk(payload.get("optimizer"))
        evals = Path(d, "evals.csv").read_text() if Path(d, "evals.csv").exists() else ""
        return {"train/metrics": hashlib.sha256(metrics.encode()).hexdigest()[:20],
                "train/evals": hashlib.sha256(evals.encode()).hexdigest()[:20],
                "train/final_state": _h(*[np.asarray(t) for t in tens]),
                "train/checkpoint": ck[-1].name}


def averaging_hashes() -> dict:
    import numpy as np
    import torch
    from torch import nn

    from realnet.averaging import EquivalentScheduleLR, KernelAveragedModel

    torch.manual_seed(0)
    torch.set_num_threads(1)
    kernels = ["last", "ema:0.1", "twopoint:3", "npoint:3:2", "swa:4", "kernel:0.5,0.2,0.3"]
    out = {}
    for dtype in (torch.float32, torch.float64):
        for use_buffers in (False, True):
            for at_step in (12, None):
                for spec in kernels:
                    torch.manual_seed(1)
                    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                                        nn.Linear(4 * 4 * 4, 3)).to(dtype)
                    avg = KernelAveragedModel(net, spec, at_step=at_step, use_buffers=use_buffers)
                    g = torch.Generator().manual_seed(2)
                    for _ in range(12):
                        with torch.no_grad():
                            for p in net.parameters():
                                p.add_(torch.randn(p.shape, generator=g, dtype=dtype))
                            net(torch.randn(5, 2, 6, 6, generator=g, dtype=dtype))  # BN running statistics move
                        avg.update_parameters(net)
                    sd = avg.state_dict()
                    key = f"avg/{spec}/{str(dtype)[6:]}/buffers={use_buffers}/at={at_step}"
                    out[key] = _h(*[sd[k].detach().numpy() for k in sorted(sd) if isinstance(sd[k], torch.Tensor)])
    for spec in kernels:
        net = nn.Linear(2, 2)
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        sched = EquivalentScheduleLR(opt, spec, at_step=12)
        lrs = []
        for _ in range(12):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        out[f"schedule/{spec}"] = _h(np.array(lrs))
    return out


def verdict_values(path) -> dict:
    vs = json.loads(Path(path).read_text())
    vs = vs["verdicts"] if isinstance(vs, dict) and "verdicts" in vs else vs
    out = {}
    for v in vs:
        out[f"verdict/{v['id']}"] = v.get("value")
        for name, c in sorted((v.get("checks") or {}).items()):
            out[f"verdict/{v['id']}/{name}"] = c.get("value")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", default="all",
                    choices=("simulate", "train", "averaging", "verdicts", "all", "_simulate_here"))
    ap.add_argument("--verdicts", help="a verdicts.json (for --part verdicts/all)")
    a = ap.parse_args(argv)
    if a.part == "_simulate_here":
        print(json.dumps(simulate_hashes()))
        return
    res = {}
    if a.part in ("simulate", "all"):
        per = {}
        for threads in ("1", "2"):
            env = dict(os.environ, NUMBA_NUM_THREADS=threads)
            p = subprocess.run([sys.executable, __file__, "--part", "_simulate_here"], env=env, check=True,
                               capture_output=True, text=True)
            per[threads] = json.loads(p.stdout.strip().splitlines()[-1])
        diff = sorted(k for k in per["1"] if per["1"][k] != per["2"].get(k))
        res.update(per["1"])
        res["simulate/threads_1_vs_2_differ"] = diff
    if a.part in ("train", "all"):
        res.update(train_hashes())
    if a.part in ("averaging", "all"):
        res.update(averaging_hashes())
    if a.part in ("verdicts", "all") and a.verdicts:
        res.update(verdict_values(a.verdicts))
    print(json.dumps(res, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
