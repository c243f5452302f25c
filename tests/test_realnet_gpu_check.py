"""The prepared GPU check (benchmarks/gpu_check.py) in its CPU smoke mode."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_check_cpu_tiny_smoke(tmp_path, monkeypatch):
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    res = _load("gpu_check").main(["--device", "cpu", "--tiny"])
    (path,) = (tmp_path / "out").glob("gpu_check_*_tiny.json")
    saved = json.loads(path.read_text())
    assert saved["device"] == "cpu" and saved["git"] and "torch" in saved["versions"]
    modes = {r["mode"]: r for r in saved["throughput"]}
    assert set(modes) == {"fp32_eager", "bf16_channels_last"}
    assert all(r["images_per_s"] > 0 for r in modes.values()), modes
    assert set(saved["speedup_vs_fp32_eager"]) == set(modes)
    sweep = saved["trajectory"]["resnet20"]["lr_sweep"]
    assert sweep["train_min_loss"] <= sweep["train_start_loss"]
    assert res["wall_s"] > 0
