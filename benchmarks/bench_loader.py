"""Image-folder loader throughput: realnet.pipeline against the torchvision reference pipeline, same run.

    python benchmarks/bench_loader.py [--images 640] [--batch 64] [--size 224] [--workers 1,2,all]
        [--repeats 3] [--data DIR] [--out benchmarks/results] [--device cpu|cuda]

* data: generated natural-looking JPEGs (:func:`realnet.synthetic_images.write_image_folder`: ~500x375, every
  fourth portrait, 10% grayscale, 5% CMYK, quality 90) in a temporary folder (or ``--data``), read from the
  page cache (one warm-up pass first);
* ``reference``: ``ImageFolder`` + PIL + ``RandomResizedCrop`` + ``RandomHorizontalFlip`` + ``ToTensor`` +
  ``Normalize`` in a ``DataLoader`` (the torchvision reference recipe), float32 batches;
* ``realnet_uint8``: :class:`realnet.pipeline.ImageFolderSplit`'s uint8 batches of training views (decode +
  views in persistent workers): what a GPU receives (it normalises on the device); ``realnet``: the same plus
  the float32 normalisation in the main process, as on a CPU-only machine;
* ``realnet_gpu_decode``: only with ``--device cuda`` (nvjpeg).

Each configuration: steady-state images/s of a pass over all images (the first batch of a pass, which
includes worker start-up, is not counted), the median of ``--repeats`` passes, passes of the two pipelines
interleaved. Prints a table and the ratios realnet_uint8 / reference and realnet / reference at each worker
count (the same cores, so a ratio is per CPU core), and writes ``bench_loader_<date>.json`` into ``--out``. A
per-image breakdown of the main costs (decode, crop + resize, float conversion) in one process explains the ratio.
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
if str(REPO) not in sys.path:  # run from a checkout without installing it
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from realnet.pipeline import ImageFolderSplit, available_cores, decode_rgb, eval_view, train_view  # noqa: E402
from realnet.synthetic_images import write_image_folder  # noqa: E402
from sgdtraj.files import write_json  # noqa: E402
from sgdtraj.provenance import git_info, package_versions  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _reference_loader(root: Path, size: int, batch: int, workers: int, seed: int):
    from torchvision import datasets
    from torchvision import transforms as T

    tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
    ds = datasets.ImageFolder(str(root / "train"), transform=tf)
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, generator=g,
                                       drop_last=True, prefetch_factor=4 if workers else None)


def _timed_pass(batches, device, skip: int) -> tuple[float, int]:
    """Steady-state images/s of one pass and the number of images counted: the clock starts when batch
    ``skip`` arrives (the first ``skip`` batches -- one per worker -- were made during the start-up)."""
    it = iter(batches)
    for _ in range(max(1, skip)):
        next(it)
    t0, n = time.perf_counter(), 0
    for x, *_ in it:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        n += len(x)
    dt_ = time.perf_counter() - t0
    return n / max(dt_, 1e-9), n


def _realnet_split(root: Path, size: int, decode):
    from torchvision import datasets

    samples = datasets.ImageFolder(str(root / "train")).samples
    return ImageFolderSplit(samples, np.arange(len(samples)), size, MEAN, STD, train_aug=True, decode=decode)


def _realnet_batches(split: ImageFolderSplit, batch: int, workers: int, device, rep: int, uint8: bool = False):
    """A pass of training views; ``uint8``: the batches the workers hand over (what crosses to a GPU, before
    the normalisation that runs there), else normalised float32 batches on ``device``."""
    n = len(split)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(rep))
    keys = [(perm[i:i + batch], [rep * 100003 + int(j) for j in perm[i:i + batch]])
            for i in range(0, n - batch + 1, batch)]
    if uint8:
        return split._host_batches(keys, True, workers, pin=False, raw=False)
    return split.iterate(keys, train=True, device=device, num_workers=workers)


def breakdown(root: Path, size: int, n: int = 40) -> dict:
    """Per-image milliseconds of each stage in this process (one thread)."""
    from PIL import Image
    from torchvision import transforms as T

    files = sorted((root / "train").rglob("*.jpg"))[:n]
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    rrc, tt, norm = T.RandomResizedCrop(size), T.ToTensor(), T.Normalize(MEAN, STD)
    out = {}
    try:
        t = time.perf_counter()
        pil = [Image.open(f).convert("RGB") for f in files]
        out["pil_decode_ms"] = (time.perf_counter() - t) / n * 1e3
        t = time.perf_counter()
        crops = [rrc(im) for im in pil]
        out["pil_random_resized_crop_ms"] = (time.perf_counter() - t) / n * 1e3
        t = time.perf_counter()
        for c in crops:
            norm(tt(c))
        out["totensor_normalize_ms"] = (time.perf_counter() - t) / n * 1e3
        t = time.perf_counter()
        imgs = [decode_rgb(str(f)) for f in files]
        out["decode_jpeg_ms"] = (time.perf_counter() - t) / n * 1e3
        t = time.perf_counter()
        views = [train_view(im, i, size) for i, im in enumerate(imgs)]
        out["uint8_train_view_ms"] = (time.perf_counter() - t) / n * 1e3
        t = time.perf_counter()
        for im in imgs:
            eval_view(im, size)
        out["uint8_eval_view_ms"] = (time.perf_counter() - t) / n * 1e3
        x = torch.stack(views)
        t = time.perf_counter()
        x.float().div_(255.0).sub_(torch.tensor(MEAN).view(1, 3, 1, 1)).div_(torch.tensor(STD).view(1, 3, 1, 1))
        out["normalize_ms"] = (time.perf_counter() - t) / n * 1e3
    finally:
        torch.set_num_threads(prev)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=640, help="training images to generate (8 classes)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--workers", default="1,2,all", help="comma-separated worker counts; 'all' = available cores")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", help="an existing generated folder (else a temporary one)")
    ap.add_argument("--device", default="cpu", help="where batches go (cpu, cuda)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    cores = available_cores()
    workers = []
    for w in a.workers.split(","):
        v = cores if w.strip() == "all" else int(w)
        if v not in workers:
            workers.append(v)
    with tempfile.TemporaryDirectory() as tmp:
        if a.data:
            root = Path(a.data)
            info = None
        else:
            root = Path(tmp)
            per = max(1, a.images // 8)
            info = write_image_folder(root, classes=8, train_per_class=per, val_per_class=1, seed=0)
        split = _realnet_split(root, a.size, None)
        gpu_split = _realnet_split(root, a.size, "cuda") if device.type == "cuda" else None
        list(_realnet_batches(split, a.batch, 0, "cpu", 0))  # warm the page cache
        parts = breakdown(root, a.size)
        rows = []
        for w in workers:
            runs: dict[str, list[float]] = {"reference": [], "realnet_uint8": [], "realnet": []}
            if gpu_split is not None:
                runs["realnet_gpu_decode"] = []
            for rep in range(a.repeats):
                ref = _reference_loader(root, a.size, a.batch, w, rep)

                def ref_batches(ref=ref):
                    for x, y in ref:
                        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

                runs["reference"].append(_timed_pass(ref_batches(), device, w)[0])
                runs["realnet_uint8"].append(
                    _timed_pass(_realnet_batches(split, a.batch, w, device, rep, uint8=True), device, w)[0])
                runs["realnet"].append(_timed_pass(_realnet_batches(split, a.batch, w, device, rep), device, w)[0])
                if gpu_split is not None:
                    runs["realnet_gpu_decode"].append(
                        _timed_pass(_realnet_batches(gpu_split, a.batch, w, device, rep), device, w)[0])
            med = {k: statistics.median(v) for k, v in runs.items()}
            row = {"workers": w, "images_per_s": med, "all_runs": runs,
                   "ratio_uint8_vs_reference": med["realnet_uint8"] / med["reference"],
                   "ratio_realnet_vs_reference": med["realnet"] / med["reference"]}
            if "realnet_gpu_decode" in med:
                row["ratio_gpu_decode_vs_reference"] = med["realnet_gpu_decode"] / med["reference"]
            rows.append(row)
    res = {
        "date": dt.date.today().isoformat(), "machine": {"platform": platform.platform(), "cores": cores,
                                                         "processor": platform.processor(), "device": str(device)},
        "versions": package_versions(), "git": git_info(),
        "settings": {"images": a.images, "batch": a.batch, "size": a.size, "repeats": a.repeats,
                     "data": info._asdict() if info else str(root)},
        "breakdown_ms_per_image": parts, "rows": rows,
    }
    if info:
        res["settings"]["data"]["root"] = "(temporary)"
    print(f"{'workers':>7} {'reference':>10} {'uint8':>8} {'ratio':>6} {'+normalise':>11} {'ratio':>6}  (img/s)")
    for r in rows:
        m = r["images_per_s"]
        print(f"{r['workers']:>7} {m['reference']:>10.1f} {m['realnet_uint8']:>8.1f} "
              f"{r['ratio_uint8_vs_reference']:>6.2f} {m['realnet']:>11.1f} {r['ratio_realnet_vs_reference']:>6.2f}"
              + (f"  gpu decode {m['realnet_gpu_decode']:.1f} img/s" if "realnet_gpu_decode" in m else ""))
    print("per image, one thread (ms): " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = write_json(out / f"bench_loader_{res['date']}.json", res)
    print(f"wrote {path}")
    return res


if __name__ == "__main__":
    main()
