"""Cost of merging stored checkpoints (realnet.posthoc.average_checkpoints), disk to disk, against the I/O floor.

    python benchmarks/bench_posthoc.py [--model resnet34] [--n 2 8] [--formats pt safetensors realnet]
        [--rounds 5] [--threads 0] [--out DIR | --out FILE.json]

For each file format (``pt``: ``torch.save`` state_dicts; ``safetensors``; ``realnet``: realnet checkpoints, which
also hold the optimizer's momentum buffers) and each number of checkpoints N, it writes N checkpoints of the model
(ImageNet ResNet-34: 21.8 M parameters, 87 MB in float32), then times, in alternating order over ``--rounds``:

* ``floor`` -- reading the same N files once (``readinto`` a 16 MiB buffer, nothing decoded): the I/O floor;
* ``merge`` -- ``average_checkpoints(paths, weights)`` (streaming, float64 accumulator) and ``save_state_dict`` of
  the result to a file: disk to disk;
* ``save`` -- ``save_state_dict`` alone of a model-sized state_dict (written and fsynced: the part of ``merge``
  that no reading can overlap, since ``average_checkpoints`` returns before it starts). Diagnostic only:
  ``ratio_floor_plus_save`` = merge / (floor + save) per round shows how much of the ratio is the write.

Two cache states: ``cold`` (every input file evicted from the page cache with ``posix_fadvise(DONTNEED)`` before
each timed pass: the files come from the disk, the I/O floor the goal is about) and ``warm`` (the files in the page
cache: the floor is then a memory copy, and the ratio shows the arithmetic's own cost). Reported: medians,
``ratio = merge / floor`` per round (median and quartiles; alternating order), the CPU seconds of each (all threads:
on a machine shared with other work the wall-clock ratio also measures how much CPU the merge was given; the
1-minute load average is recorded with each row), and the peak resident memory of a
fresh process doing one merge (RSS sampled every ms), above its RSS before it, in model sizes (float32 state_dict
bytes; memory-mapped pages that are touched count) -- with glibc's default allocator and with
``MALLOC_MMAP_THRESHOLD_=65536`` (every large block returned to the system when freed: the algorithm's own peak,
without the allocator's retention). Goals: cold ratio <= 1.5, peak <= 3 model sizes whatever N. Writes
``bench_posthoc_<date>.json`` (with provenance) into ``--out`` (or to ``--out`` when it names a .json file).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing it
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from realnet.checkpoint import save_checkpoint  # noqa: E402
from realnet.models import create_model  # noqa: E402
from realnet.posthoc import average_checkpoints, read_state_dict, save_state_dict  # noqa: E402
from sgdtraj.files import write_json  # noqa: E402
from sgdtraj.provenance import provenance  # noqa: E402

CHUNK = 16 << 20
#: CPU seconds (all threads of this process) of each timed floor / merge, in call order
_CPU: list[float] = []


def _write_checkpoints(model_name: str, n: int, fmt: str, d: Path) -> tuple[list[Path], int]:
    """n checkpoints of ``model_name`` (perturbed copies) in format ``fmt``; (paths, model bytes in float32)."""
    torch.manual_seed(0)
    model = create_model(model_name, 1000)
    sd = model.state_dict()
    size = sum(t.numel() * 4 for t in sd.values() if t.is_floating_point())
    paths = []
    for i in range(n):
        sdi = {k: (v + 0.01 * i if v.is_floating_point() else v) for k, v in sd.items()}
        if fmt == "realnet":
            mom = {j: {"momentum_buffer": p.detach().clone()} for j, p in enumerate(model.parameters())}
            p = save_checkpoint(d / f"step_{i:09d}.pt", {"step": i, "model": sdi,
                                                         "optimizer": {"state": mom, "param_groups": []}})
        else:
            p = save_state_dict(sdi, d / f"ck_{i}.{'safetensors' if fmt == 'safetensors' else 'pt'}")
        paths.append(Path(p))
    return paths, size


def _evict(paths) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _floor(paths) -> float:
    buf = bytearray(CHUNK)
    t0 = time.perf_counter()
    _CPU.append(-time.process_time())
    for p in paths:
        with open(p, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass
    _CPU[-1] += time.process_time()
    return time.perf_counter() - t0


def _merge(paths, out: Path) -> float:
    w = np.full(len(paths), 1.0 / len(paths))
    t0 = time.perf_counter()
    _CPU.append(-time.process_time())
    save_state_dict(average_checkpoints(paths, w), out)
    _CPU[-1] += time.process_time()
    return time.perf_counter() - t0


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def _child(paths: list[str], out: str) -> None:
    """One merge in a fresh process: prints {"before": RSS, "peak": max RSS sampled every ms} in bytes."""
    import threading

    before = _rss_bytes()
    peak, done = [before], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    _merge([Path(p) for p in paths], Path(out))
    done.set()
    th.join()
    print(json.dumps({"before": before, "peak": max(peak[0], _rss_bytes())}))


def bench(model_name: str, n: int, fmt: str, rounds: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_posthoc_") as tmp:
        d = Path(tmp)
        paths, size = _write_checkpoints(model_name, n, fmt, d)
        _floor(paths)
        _merge(paths, d / "warm.pt")
        one = read_state_dict(paths[-1])
        out = {}
        for cache in ("cold", "warm"):
            floors, merges, saves, ratios, with_save, cpu = [], [], [], [], [], {"floor": [], "merge": []}
            for r in range(rounds):
                order = ("floor", "merge") if r % 2 == 0 else ("merge", "floor")
                got = {}
                for what in order:
                    if cache == "cold":
                        _evict(paths)
                    got[what] = _floor(paths) if what == "floor" else _merge(paths, d / "merged.pt")
                    cpu[what].append(_CPU[-1])
                t0 = time.perf_counter()
                save_state_dict(one, d / "saved.pt")
                saves.append(time.perf_counter() - t0)
                floors.append(got["floor"])
                merges.append(got["merge"])
                ratios.append(got["merge"] / got["floor"])
                with_save.append(got["merge"] / (got["floor"] + saves[-1]))
            out[cache] = {"floor_s_median": float(np.median(floors)), "merge_s_median": float(np.median(merges)),
                          "ratio_median": float(np.median(ratios)),
                          "ratio_quartiles": [float(q) for q in np.percentile(ratios, [25, 75])],
                          "save_s_median": float(np.median(saves)),
                          "ratio_floor_plus_save_median": float(np.median(with_save)),
                          "floor_cpu_s_median": float(np.median(cpu["floor"])),
                          "merge_cpu_s_median": float(np.median(cpu["merge"])),
                          "load_average_1min": os.getloadavg()[0]}
        file_bytes = sum(p.stat().st_size for p in paths)
        mem = {}
        for alloc, extra in (("default", {}), ("mmap_threshold", {"MALLOC_MMAP_THRESHOLD_": "65536"})):
            env = {"OMP_NUM_THREADS": str(threads or os.cpu_count()), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
                   **extra}
            res = subprocess.run([sys.executable, __file__, "--child", str(d / "child.pt"), *map(str, paths)],
                                 capture_output=True, text=True, env=env, check=True)
            m = json.loads(res.stdout.strip().splitlines()[-1])
            mem[alloc] = (m["peak"] - m["before"]) / size
    return {"model": model_name, "format": fmt, "n": n, "model_bytes": size, "file_bytes_total": file_bytes, **out,
            "cold_floor_MBps": file_bytes / out["cold"]["floor_s_median"] / 1e6,
            "peak_extra_model_sizes": mem}


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[3:], sys.argv[2])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet34")
    ap.add_argument("--n", type=int, nargs="+", default=[2, 8])
    ap.add_argument("--formats", nargs="+", default=["pt", "safetensors", "realnet"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"),
                    help="a directory (bench_posthoc_<date>.json is written into it) or a .json file")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = []
    for fmt in a.formats:
        for n in a.n:
            r = bench(a.model, n, fmt, a.rounds, a.threads)
            rows.append(r)
            c, w, pk = r["cold"], r["warm"], r["peak_extra_model_sizes"]
            print(f"{fmt:12s} N={n:2d}  cold: floor {c['floor_s_median']:.2f} s "
                  f"({r['cold_floor_MBps']:.0f} MB/s) merge "
                  f"{c['merge_s_median']:.2f} s ratio {c['ratio_median']:.2f} [{c['ratio_quartiles'][0]:.2f}, "
                  f"{c['ratio_quartiles'][1]:.2f}] (save {c['save_s_median']:.2f} s; merge / (floor + save) "
                  f"{c['ratio_floor_plus_save_median']:.2f}; CPU s floor {c['floor_cpu_s_median']:.2f} merge "
                  f"{c['merge_cpu_s_median']:.2f}; load {c['load_average_1min']:.1f})  "
                  f"warm: ratio {w['ratio_median']:.2f}  peak +{pk['default']:.2f} "
                  f"(allocator retention off: +{pk['mmap_threshold']:.2f}) model sizes", flush=True)
    out = Path(a.out)
    if out.suffix != ".json":
        out = out / f"bench_posthoc_{dt.date.today().isoformat()}.json"
    write_json(out, {"rows": rows, "goals": {"cold_ratio_max": 1.5, "peak_model_sizes_max": 3.0},
                     "load_average_1_5_15min_at_end": list(os.getloadavg()), "cpus": os.cpu_count(),
                     "provenance": provenance(config=vars(a))})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
