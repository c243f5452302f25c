"""GPU check for realnet (runs unattended on a CUDA machine in <= 8 minutes; prepared for the device tool).

    python benchmarks/gpu_check.py                       # on the GPU machine
    python benchmarks/gpu_check.py --device cpu --tiny   # CPU smoke mode (what the test suite runs)

1. Throughput: torchvision ResNet-34 at 224x224 on synthetic tensors (batch 256), one SGD training
   step (forward, backward, momentum update) in images/s for
   * ``fp32_eager``: fp32, NCHW, eager -- the torchvision reference default (PyTorch's default TF32
     setting for cuDNN convolutions is recorded alongside);
   * ``bf16_channels_last``: bf16 autocast + channels_last, eager;
   * ``bf16_channels_last_compile``: the same through ``torch.compile`` (skipped if the time budget is short).
2. A short real trajectory with realnet on GPU (digits, ResNet-20 and ResNet-34 with the small stem)
   followed by an lr-sweep side-trip on its last checkpoint.

Writes ``gpu_check_<date>.json`` into ``$OUT`` when that variable is set (the device tool's output
folder), else into ``--out`` (default ``benchmarks/results``). Every stage is guarded: a failure is
recorded in the JSON (``error``) and the script goes on.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runs from a bare checkout, no install needed
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(device: torch.device, mode: str, batch: int, size: int, warmup: int, iters: int) -> dict:
    """Images/s of ResNet-34 SGD training steps on synthetic data in ``mode``."""
    import torchvision
    torch.manual_seed(0)
    model = torchvision.models.resnet34(weights=None, num_classes=1000).to(device)
    bf16 = mode.startswith("bf16")
    cl = "channels_last" in mode
    if cl:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch, 3, size, size, device=device)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=device)
    step_model = torch.compile(model) if mode.endswith("compile") else model

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(step_model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    _sync(device)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(iters):
        loss = step()
    _sync(device)
    dt_ = time.perf_counter() - t0
    out = {"mode": mode, "batch": batch, "image": size, "iters": iters, "images_per_s": batch * iters / dt_,
           "ms_per_step": 1e3 * dt_ / iters, "warmup_s": warm_s, "final_loss": float(loss.detach())}
    if device.type == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    del model, opt, step_model, x, y
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def trajectory(device: str, tiny: bool, tmp: Path) -> dict:
    """A short realnet trajectory per model, then an lr-sweep on its last checkpoint."""
    import realnet
    from realnet.config import TrainConfig
    res = {}
    runs = [("resnet20", dict(width=16, batch_size=128, steps=300)),
            ("resnet34", dict(batch_size=128, steps=100))]
    if tiny:
        runs = [("resnet20", dict(width=4, batch_size=16, steps=6))]
    for name, kw in runs:
        cfg = TrainConfig(dataset="digits", model=name, device=device, progress=False, eval_every=0,
                          checkpoint_every=kw["steps"], eval_samples=300, **kw)
        run = tmp / f"run-{name}"
        t0 = time.perf_counter()
        s = realnet.train(cfg, run)
        r = {"config": {k: v for k, v in kw.items()}, "train_wall_s": time.perf_counter() - t0,
             "steps_per_s": s["steps_per_s"], "val_acc": s["val_acc"], "final_train_loss": s["final_train_loss"]}
        t0 = time.perf_counter()
        sw = realnet.lr_sweep(run, kw["steps"], tmp / f"sweep-{name}", device=device, progress=False,
                              num_lrs=5 if tiny else 49, heldout_batches=10)
        r["lr_sweep"] = {k: sw[k] for k in ("train_start_loss", "train_min_loss", "best_lr_train", "heldout_start_loss",
                                            "heldout_min_loss", "best_lr_heldout", "batched", "n_forward_passes")}
        r["lr_sweep"]["wall_s"] = time.perf_counter() - t0
        res[name] = r
    return res


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--tiny", action="store_true", help="smoke mode: tiny sizes, no torch.compile")
    ap.add_argument("--batch", type=int, default=256, help="ResNet-34 throughput batch size")
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip later stages past this many seconds")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="output folder ($OUT wins)")
    a = ap.parse_args(argv)
    t_start = time.perf_counter()
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available here; use --device cpu --tiny for the smoke mode", file=sys.stderr)
        return {"error": "cuda unavailable"}
    from sgdtraj.provenance import git_info, package_versions
    git, dirty = git_info(REPO)
    res: dict = {"date": dt.date.today().isoformat(), "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                 "device": str(device), "tiny": a.tiny, "versions": package_versions(), "git": git,
                 "git_dirty": dirty, "command": [sys.executable, *sys.argv]}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        res["gpu"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "memory_gib": p.total_memory / 2**30,
                      "count": torch.cuda.device_count()}
        res["tf32"] = {"cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                       "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}
        torch.backends.cudnn.benchmark = True
    size, batch, warm, iters = (16, 2, 1, 1) if a.tiny else (224, a.batch, 10, 30)
    modes = ["fp32_eager", "bf16_channels_last"] + ([] if a.tiny else ["bf16_channels_last_compile"])
    res["throughput"] = []
    for mode in modes:
        elapsed = time.perf_counter() - t_start
        if mode.endswith("compile") and elapsed > a.budget_s * 0.4:
            res["throughput"].append({"mode": mode, "skipped": f"time budget ({elapsed:.0f} s used)"})
            continue
        try:
            r = throughput(device, mode, batch, size, warm if not mode.endswith("compile") else 3, iters)
        except Exception as e:  # record and go on
            r = {"mode": mode, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
        res["throughput"].append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "traceback"}), flush=True)
    ok = {r["mode"]: r["images_per_s"] for r in res["throughput"] if "images_per_s" in r}
    if "fp32_eager" in ok:
        res["speedup_vs_fp32_eager"] = {m: v / ok["fp32_eager"] for m, v in ok.items()}
    elapsed = time.perf_counter() - t_start
    if elapsed < a.budget_s:
        with tempfile.TemporaryDirectory() as d:
            try:
                res["trajectory"] = trajectory(a.device, a.tiny, Path(d))
            except Exception as e:
                res["trajectory"] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
    else:
        res["trajectory"] = {"skipped": f"time budget ({elapsed:.0f} s used)"}
    print(json.dumps(res.get("trajectory", {}), default=str)[:2000], flush=True)
    res["wall_s"] = time.perf_counter() - t_start
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"gpu_check_{res['date']}{'_tiny' if a.tiny else ''}.json"
    from sgdtraj.files import write_json
    write_json(path, res)
    print(f"wrote {path} ({res['wall_s']:.0f} s)")
    return res


if __name__ == "__main__":
    main()
