"""The prepared GPU check (benchmarks/gpu_check.py) in its CPU smoke mode: every stage runs and records."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_gpu_check_cpu_tiny_smoke(tmp_path, monkeypatch):
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    res = _load("gpu_check").main(["--device", "cpu", "--tiny", "--budget-s", "100000"])
    (path,) = (tmp_path / "out").glob("gpu_check_*_tiny.json")
    saved = json.loads(path.read_text())
    assert saved["device"] == "cpu" and saved["git"] and "torch" in saved["versions"]
    stages = ["loader", "throughput", "train_resume", "torchrun", "sidetrips", "lr_sweep_memory", "checkpoint_save"]
    for s in stages:
        assert "error" not in saved[s] and "skipped" not in saved[s], (s, saved[s])
    row = saved["loader"]["rows"][0]
    assert row["reference"] > 0 and row["realnet"] > 0 and saved["loader"]["cmyk"] + saved["loader"]["gray"] > 0
    modes = {r["mode"]: r for r in saved["throughput"]["rows"]}
    assert set(modes) == {"fp32_eager", "bf16_channels_last"} and all(r["images_per_s"] > 0 for r in modes.values())
    tr = saved["train_resume"]
    assert tr["bit_identical"] and tr["max_param_diff"] == 0.0  # resumed = uninterrupted on the CPU
    assert saved["torchrun"]["world_size"] == 1 and saved["torchrun"]["backend"] == "gloo"
    trips = saved["sidetrips"]
    assert {"lr-sweep", "fixed-batch", "averaging", "alignment", "divergence", "linear-fit"} <= set(trips)
    assert all("error" not in v for v in trips.values() if isinstance(v, dict)), trips
    mem = {(r["batch"], r["path"]): r["mean_loss"] for r in saved["lr_sweep_memory"]["rows"]}
    for b in (4, 8):  # the memory-bounded losses are the one-shot ones
        assert mem[(b, "micro_batch")] == pytest.approx(mem[(b, "one_shot_batches")], rel=1e-5)
    ck = saved["checkpoint_save"]
    assert ck["written"] == [1] and ck["bytes"] > 40_000_000 and ck["held_s"] <= ck["total_s"]
    assert res["wall_s"] > 0
