"""GPU check for realnet's ImageNet path (runs unattended on one CUDA GPU in <= 8 minutes).

    python benchmarks/gpu_check.py                       # on the GPU machine
    python benchmarks/gpu_check.py --device cpu --tiny   # CPU smoke mode (what the test suite runs)

Stages (each guarded: a failure is recorded as ``error`` with the traceback's tail and the next stage runs;
the JSON is rewritten after every stage, so a check cut short keeps what it measured):

1. ``loader``: images/s of :mod:`realnet.pipeline` against the torchvision reference pipeline on generated
   JPEGs (``benchmarks/bench_loader.py``'s functions; 4, 8 and all workers; CPU decode, and nvjpeg decode on
   CUDA);
2. ``throughput``: ResNet-34 at 224 px SGD steps on synthetic tensors: fp32, bf16 + channels_last, + compile;
3. ``train_resume``: ``realnet train`` (the CLI's entry point, in this process) on a generated ImageFolder (ResNet-18,
   ImageNet stem, evaluation on, loader workers), stopped half way and resumed, against an uninterrupted run:
   the resumed run's final parameters and metrics (equal on CPU; the largest difference on CUDA);
4. ``torchrun``: the same CLI under ``torchrun --nproc_per_node=1`` (NCCL on CUDA, gloo on CPU);
5. ``sidetrips``: every side-trip at tiny sizes on the run of stage 3;
6. ``lr_sweep_memory``: peak memory of an lr-sweep's losses (ResNet-34, 224 px, 11 batches of 512 and 2048)
   one-shot and with ``micro_batch`` (the memory bound; an out-of-memory is recorded, not fatal);
7. ``checkpoint_save``: one ResNet-34 checkpoint: time the training thread is held (host snapshot) and the
   background write's total.

Writes ``gpu_check_<date>[_tiny].json`` into ``$OUT`` when that variable is set (the device tool's output
folder), else into ``--out`` (default ``benchmarks/results``).
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import subprocess
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


def _bench_loader():
    spec = importlib.util.spec_from_file_location("_bench_loader", REPO / "benchmarks" / "bench_loader.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------------------------- stages


def loader_stage(device: torch.device, tiny: bool, tmp: Path) -> dict:
    """Images/s per worker count: reference, realnet uint8 batches, realnet normalised on the device, nvjpeg."""
    from realnet.pipeline import available_cores
    from realnet.synthetic_images import write_image_folder

    bl = _bench_loader()
    root = tmp / "loader-jpegs"
    info = write_image_folder(root, classes=4, train_per_class=6 if tiny else 256, val_per_class=1,
                              size=(96, 72) if tiny else (500, 375), seed=0)
    size, batch = (32, 4) if tiny else (224, 128)
    cores = available_cores()
    counts = [1] if tiny else sorted({min(4, cores), min(8, cores), cores})
    split = bl._realnet_split(root, size, None)
    gpu = bl._realnet_split(root, size, "cuda") if device.type == "cuda" else None
    rows = []
    for w in counts:
        ref = bl._reference_loader(root, size, batch, w, 0)
        row = {"workers": w}

        def ref_batches(ref=ref):
            for x, y in ref:
                yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

        row["reference"] = bl._timed_pass(ref_batches(), device, w)[0]
        row["realnet_uint8"] = bl._timed_pass(bl._realnet_batches(split, batch, w, device, 0, uint8=True), device,
                                              w)[0]
        row["realnet"] = bl._timed_pass(bl._realnet_batches(split, batch, w, device, 0), device, w)[0]
        if gpu is not None:
            row["realnet_gpu_decode"] = bl._timed_pass(bl._realnet_batches(gpu, batch, w, device, 0), device, w)[0]
        row["ratio_realnet_vs_reference"] = row["realnet"] / row["reference"]
        rows.append(row)
    return {"images": info.images, "gray": info.gray, "cmyk": info.cmyk, "size": size, "batch": batch,
            "cores": cores, "rows": rows}


def throughput(device: torch.device, mode: str, batch: int, size: int, warmup: int, iters: int) -> dict:
    """Images/s of ResNet-34 SGD training steps on synthetic data in ``mode``."""
    import torchvision
    torch.manual_seed(0)
    net = torchvision.models.resnet18 if batch <= 4 else torchvision.models.resnet34  # smoke mode: the small one
    model = net(weights=None, num_classes=1000).to(device)
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
    model = opt = step_model = x = y = None  # free the memory (the closure step() holds these names)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def _train_cmd(device: str, folder: Path, out: Path, steps: int, tiny: bool) -> list[str]:
    """``-m realnet train`` arguments of the check's ImageFolder run (loader workers: 1 in the smoke mode, else
    the automatic count)."""
    size, batch = ("32", "4") if tiny else ("128", "64")
    cmd = ["-m", "realnet", "train", "--dataset", "imagenet", "--data-dir", str(folder), "--model", "resnet18",
           "--image-size", size, "--batch-size", batch, "--heldout-size", "8" if tiny else "64", "--lr", "0.02",
           "--steps", str(steps), "--schedule-steps", "4" if tiny else "40", "--lr-schedule", "cosine",
           "--checkpoint-every", "1" if tiny else "10", "--eval-every", "2" if tiny else "20",
           "--eval-samples", "8" if tiny else "128", "--device", device, "--progress", "false"]
    return cmd + (["--num-workers", "1"] if tiny else [])


def _run(cmd: list[str], timeout: float, env=None) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"exit {r.returncode}: {' '.join(cmd[:6])} ...\n{r.stderr[-1500:]}")
    return r


def train_resume_stage(device: torch.device, tiny: bool, tmp: Path) -> dict:
    """The CLI on a generated ImageFolder: an uninterrupted run and one stopped half way then resumed."""
    from realnet.checkpoint import checkpoint_path, load_checkpoint
    from realnet.synthetic_images import write_image_folder

    folder = tmp / "imagefolder"
    write_image_folder(folder, classes=4, train_per_class=8 if tiny else 64, val_per_class=2 if tiny else 32,
                       size=(96, 72) if tiny else (500, 375), seed=1)
    steps = 4 if tiny else 40
    dev = str(device)

    def train(n: int, name: str) -> tuple[float, str]:  # the CLI's entry point, in this process
        import contextlib
        import io

        from realnet.cli import main as cli

        buf = io.StringIO()
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(buf):
            rc = cli(_train_cmd(dev, folder, tmp / name, n, tiny)[2:] + ["--out", str(tmp / name)])
        if rc != 0:
            raise RuntimeError(f"realnet train exited with {rc} ({name}, {n} steps)")
        return time.perf_counter() - t0, buf.getvalue()

    full_s, _ = train(steps, "full")
    train(steps // 2, "resumed")
    resume_s, stdout = train(steps, "resumed")
    a = load_checkpoint(checkpoint_path(tmp / "full", steps))
    b = load_checkpoint(checkpoint_path(tmp / "resumed", steps))
    diff = max(float((a["model"][k].double() - b["model"][k].double()).abs().max()) for k in a["model"]
               if a["model"][k].is_floating_point())
    metrics = [(tmp / d / "metrics.csv").read_text().splitlines() for d in ("full", "resumed")]
    strip = [[",".join(row.split(",")[:-1]) for row in m] for m in metrics]
    return {"steps": steps, "full_wall_s": full_s, "resume_wall_s": resume_s, "max_param_diff": diff,
            "metrics_equal": strip[0] == strip[1], "bit_identical": diff == 0.0 and strip[0] == strip[1],
            "summary": json.loads(stdout.strip().splitlines()[-1]), "folder": str(folder),
            "run": str(tmp / "resumed")}


def torchrun_stage(device: torch.device, tiny: bool, tmp: Path, folder: Path) -> dict:
    """``torchrun --nproc_per_node=1 -m realnet train`` (NCCL on CUDA, gloo on CPU)."""
    steps = 2 if tiny else 20
    out = tmp / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
          *_train_cmd(str(device), folder, out, steps, tiny), "--out", str(out)], 600, env=env)
    info = json.loads((out / "run_info.json").read_text())["sessions"][-1]
    return {"steps": steps, "wall_s": time.perf_counter() - t0, "world_size": info["world_size"],
            "device": info["device"], "backend": "nccl" if device.type == "cuda" else "gloo"}


def sidetrips_stage(device: torch.device, tiny: bool, tmp: Path, run: Path) -> dict:
    """Every side-trip at tiny sizes from a middle checkpoint of ``run``."""
    from realnet.checkpoint import list_checkpoints
    from realnet.sidetrips import SIDETRIPS

    ck = list_checkpoints(run)
    S, S2 = ck[len(ck) // 2], ck[len(ck) // 2 + 1]
    common = dict(device=str(device), progress=False)
    n = 1 if tiny else 20  # side-trip length
    bound = 4 if tiny else 64  # micro_batch: every batch evaluation in passes of at most this many images
    tiny_opts = {
        "lr-sweep": dict(num_lrs=5, heldout_batches=2, batched="batches", micro_batch=bound),
        "fixed-batch": dict(step2=S2, gd_steps=1, num_alphas=3, heldout_batches=2, lr=0.02),
        "averaging": dict(steps=n, report_steps=[n], kernels=["swa"], bn_batches=1, train_eval_samples=8,
                          val_samples=8),
        "alignment": dict(steps=n, record_every=1, batch_pairs=1, micro_batch=bound),
        "divergence": dict(steps=n, record_every=1, eval_steps=[0, n], snapshots=2, max_checkpoints=2, bn_batches=1,
                           train_eval_samples=8, val_samples=8, fixed_batch_every=1, function_points=1,
                           function_samples=8, micro_batch=bound),
        "linear-fit": dict(k=2, curvature_batches=2, noise_batches=4, steps=0, lags=1, kernels=["swa:2"],
                           n_blocks=5, n_boot=50, micro_batch=bound),
    }
    res = {"step": S}
    for name, trip in SIDETRIPS.items():
        t0 = time.perf_counter()
        try:
            r = trip.function(run, S, tmp / f"trip-{name}", **common, **tiny_opts.get(name, {}))
            res[name] = {"wall_s": time.perf_counter() - t0, "headline": r.headline()}
        except Exception as e:  # record and go on
            res[name] = {"error": f"{type(e).__name__}: {e}"[:1500], "traceback": traceback.format_exc()[-1500:]}
    return res


def lr_sweep_memory_stage(device: torch.device, tiny: bool) -> dict:
    """Peak memory of lr-sweep losses (11 batches, 3 step sizes) one-shot vs micro-batched, batch 512 / 2048."""
    import torchvision

    from realnet.sidetrips._losses import BatchPlan, batch_losses, functional_model
    from realnet.trainer import Runtime

    size, batches, bound = (16, (4, 8), 6) if tiny else (224, (512, 2048), 256)
    rt = Runtime(device, torch.bfloat16 if device.type == "cuda" else None, device.type == "cuda")
    net = torchvision.models.resnet18 if tiny else torchvision.models.resnet34
    model = net(weights=None, num_classes=1000).to(device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    fm, buf = functional_model(model, "running")
    theta = {k: v.detach() for k, v in model.named_parameters()}
    d = {k: torch.randn_like(v) * 1e-3 for k, v in theta.items()}
    coeffs = torch.tensor([0.0, 0.1, 1.0])
    out = []
    for B in batches:
        data = [(torch.randn(B, 3, size, size, device=device), torch.randint(0, 1000, (B,), device=device))
                for _ in range(11)]
        for label, plan, mode in (("one_shot_batches", BatchPlan(), "batches"),
                                  ("micro_batch", BatchPlan(1, bound), "batches")):
            row = {"batch": B, "path": label, "micro_batch": plan.max_images}
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            try:
                L = batch_losses(fm, buf, theta, d, coeffs, data, rt, mode, chunk_size=3, plan=plan)
                _sync(device)
                row.update(wall_s=time.perf_counter() - t0, mean_loss=float(L.float().mean()))
            except torch.OutOfMemoryError as e:  # the one-shot path at ImageNet sizes: recorded
                row["out_of_memory"] = str(e).splitlines()[0][:300]
            if device.type == "cuda":
                row["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            out.append(row)
        del data
    return {"image": size, "heldout_batches": 10, "rows": out}


def checkpoint_save_stage(device: torch.device, tiny: bool, tmp: Path) -> dict:
    """One checkpoint of ResNet-34 + momentum: time the caller is held (snapshot) and the background write."""
    import torchvision

    from realnet.checkpoint import CheckpointWriter, capture_rng_state, list_checkpoints

    model = (torchvision.models.resnet18 if tiny else torchvision.models.resnet34)(weights=None, num_classes=1000)
    model = model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(2, 3, 32, 32, device=device)
    F.cross_entropy(model(x), torch.zeros(2, dtype=torch.long, device=device)).backward()
    opt.step()
    payload = {"step": 1, "model": model.state_dict(), "optimizer": opt.state_dict(), "rng": capture_rng_state()}
    w = CheckpointWriter(tmp / "ckpt")
    _sync(device)
    t0 = time.perf_counter()
    w.submit(1, payload)
    held = time.perf_counter() - t0
    w.close()
    total = time.perf_counter() - t0
    size = (tmp / "ckpt" / "checkpoints" / "step_000000001.pt").stat().st_size
    return {"held_s": held, "total_s": total, "bytes": size, "written": list_checkpoints(tmp / "ckpt")}


# --------------------------------------------------------------------------------------------- driver


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--tiny", action="store_true", help="smoke mode: tiny sizes, no torch.compile")
    ap.add_argument("--batch", type=int, default=256, help="ResNet-34 throughput batch size")
    ap.add_argument("--budget-s", type=float, default=440.0, help="skip later stages past this many seconds")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="output folder ($OUT wins)")
    a = ap.parse_args(argv)
    t_start = time.perf_counter()
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available here; use --device cpu --tiny for the smoke mode", file=sys.stderr)
        return {"error": "cuda unavailable"}
    from sgdtraj.files import write_json
    from sgdtraj.provenance import git_info, package_versions
    git, dirty = git_info(REPO)
    res: dict = {"date": dt.date.today().isoformat(),
                 "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                 "device": str(device), "tiny": a.tiny, "versions": package_versions(), "git": git,
                 "git_dirty": dirty, "command": [sys.executable, *sys.argv], "cpu_cores": os.cpu_count()}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        res["gpu"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "memory_gib": p.total_memory / 2**30,
                      "count": torch.cuda.device_count()}
        res["tf32"] = {"cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                       "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"gpu_check_{res['date']}{'_tiny' if a.tiny else ''}.json"

    def stage(name: str, fn, budget_share: float = 1.0):
        elapsed = time.perf_counter() - t_start
        if elapsed > a.budget_s * budget_share:
            res[name] = {"skipped": f"time budget ({elapsed:.0f} s used)"}
        else:
            t0 = time.perf_counter()
            try:
                res[name] = fn()
            except Exception as e:  # record and go on
                res[name] = {"error": f"{type(e).__name__}: {e}"[:3000], "traceback": traceback.format_exc()[-3000:]}
            if isinstance(res[name], dict):
                res[name]["stage_wall_s"] = time.perf_counter() - t0
        res["wall_s"] = time.perf_counter() - t_start
        write_json(path, res)  # after every stage
        print(f"{name}: {json.dumps(res[name], default=str)[:600]}", flush=True)

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        stage("loader", lambda: loader_stage(device, a.tiny, tmp), 0.9)

        def tp():
            if device.type == "cuda":
                torch.backends.cudnn.benchmark = True
            size, batch, warm, iters = (16, 2, 1, 1) if a.tiny else (224, a.batch, 10, 30)
            modes = ["fp32_eager", "bf16_channels_last"] + ([] if a.tiny else ["bf16_channels_last_compile"])
            rows = []
            for mode in modes:
                try:
                    rows.append(throughput(device, mode, batch, size, warm if not mode.endswith("compile") else 3,
                                           iters))
                except Exception as e:
                    rows.append({"mode": mode, "error": f"{type(e).__name__}: {e}"[:1500]})
            ok = {r["mode"]: r["images_per_s"] for r in rows if "images_per_s" in r}
            speed = {m: v / ok["fp32_eager"] for m, v in ok.items()} if "fp32_eager" in ok else {}
            return {"rows": rows, "speedup_vs_fp32_eager": speed}

        stage("throughput", tp, 0.5)
        stage("train_resume", lambda: train_resume_stage(device, a.tiny, tmp), 0.7)
        tr = res.get("train_resume", {})
        if "folder" in tr:
            stage("torchrun", lambda: torchrun_stage(device, a.tiny, tmp, Path(tr["folder"])), 0.8)
            stage("sidetrips", lambda: sidetrips_stage(device, a.tiny, tmp, Path(tr["run"])), 0.85)
        stage("lr_sweep_memory", lambda: lr_sweep_memory_stage(device, a.tiny), 0.95)
        stage("checkpoint_save", lambda: checkpoint_save_stage(device, a.tiny, tmp), 1.0)
    print(f"wrote {path} ({res['wall_s']:.0f} s)")
    return res


if __name__ == "__main__":
    main()
