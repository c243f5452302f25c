"""realnet side-trips end to end on a small trained digits run, and the paper's first effect (Fig. 2)."""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

import quadsgd as qs
import realnet
from realnet.config import ConfigError, TrainConfig

REPO = Path(__file__).resolve().parents[1]
QUICK = dict(progress=False, eval_batch_size=512)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """ResNet-20 (width 8) trained 200 steps on digits (batch 32, lr 0.1); checkpoints at 0, 100, 200."""
    run = tmp_path_factory.mktemp("realnet") / "run"
    realnet.train(TrainConfig(dataset="digits", model="resnet20", width=8, steps=200, batch_size=32, lr=0.1,
                              checkpoint_every=100, eval_every=100, progress=False), run)
    return run


def _fingerprint(run: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(run)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture
def untouched(trained_run):
    """Asserts that a side-trip leaves its parent run directory exactly as it was."""
    before = _fingerprint(trained_run)
    yield trained_run
    assert _fingerprint(trained_run) == before


def _csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _common_outputs(out: Path, name: str, step: int):
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["sidetrip"] == name and cfg["step"] == step and cfg["run_config"]["model"] == "resnet20"
    info = json.loads((out / "run_info.json").read_text())
    assert info["seed"] == 0 and info["git"] and "torch" in info["versions"]
    return json.loads((out / "summary.json").read_text())


def test_trained_run_learned(trained_run):
    rows = _csv(trained_run / "evals.csv")
    assert float(rows[-1]["val_acc"]) > 0.8
    assert realnet.list_checkpoints(trained_run) == [0, 100, 200]


def test_lr_sweep_and_the_papers_first_effect(untouched, tmp_path):
    """Fig. 2: one step on the training batch can reach a loss far below what any step size achieves
    on held-out batches, and held-out batches only improve for small step sizes."""
    out = tmp_path / "sweep"
    s = realnet.lr_sweep(untouched, 100, out, num_lrs=25, heldout_batches=10, **QUICK)
    saved = _common_outputs(out, "lr-sweep", 100)
    for key in ("train_start_loss", "train_min_loss", "heldout_start_loss", "heldout_min_loss", "best_lr_train",
                "best_lr_heldout"):
        assert saved[key] == pytest.approx(s[key])
    rows = _csv(out / "lr_sweep.csv")
    assert list(rows[0]) == ["lr", "train_loss", "heldout_mean", "heldout_std", "heldout_min", "heldout_max"]
    assert len(rows) == 26 and float(rows[0]["lr"]) == 0.0
    assert len(_csv(out / "lr_sweep_heldout.csv")) == 26 * 10 and s["n_heldout_batches"] == 10
    assert float(rows[0]["train_loss"]) == pytest.approx(s["train_start_loss"])
    # the effect
    assert s["train_min_loss"] < 0.5 * s["train_start_loss"]
    assert s["train_min_loss"] < 0.2 * s["heldout_min_loss"]
    assert s["heldout_loss_at_best_train_lr"] > 5 * s["train_min_loss"]
    drop_train = 1 - s["train_min_loss"] / s["train_start_loss"]
    drop_heldout = 1 - s["heldout_min_loss"] / s["heldout_start_loss"]
    assert drop_train > drop_heldout + 0.3
    assert s["best_lr_train"] >= s["best_lr_heldout"]


def test_lr_sweep_batching_modes_agree(trained_run, tmp_path):
    res = {}
    for mode in ("lr", "batches", "loop"):
        realnet.lr_sweep(trained_run, 200, tmp_path / mode, num_lrs=6, heldout_batches=2, batched=mode,
                         batch_size=16, direction="sgd", **QUICK)
        res[mode] = np.array([[float(r["train_loss"]), float(r["heldout_mean"])] for r in _csv(tmp_path / mode /
                                                                                                "lr_sweep.csv")])
    assert res["lr"].shape == (7, 2)
    np.testing.assert_allclose(res["lr"], res["loop"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(res["batches"], res["loop"], rtol=1e-4, atol=1e-6)
    s = realnet.lr_sweep(trained_run, 200, tmp_path / "run", num_lrs=3, heldout_batches=2, bn_mode="running", **QUICK)
    assert np.isfinite(s["heldout_start_loss"])


def test_fixed_batch(untouched, tmp_path):
    out = tmp_path / "fb"
    s = realnet.fixed_batch(untouched, 100, out, step2=200, gd_steps=3, num_alphas=5, heldout_batches=2, **QUICK)
    saved = _common_outputs(out, "fixed-batch", 100)
    assert saved["step2"] == 200 and s["lr"] > 0 and s["lr_auto"] is True
    rows = _csv(out / "fixed_batch.csv")
    assert len(rows) == 4 * 5 and {float(r["alpha"]) for r in rows} == {0.0, 0.25, 0.5, 0.75, 1.0}
    # gradient descent on the fixed batch drives its loss down from both checkpoints
    assert s["train_loss_first"][-1] < s["train_loss_first"][0]
    assert s["train_loss_second"][-1] < s["train_loss_second"][0]
    ends = _csv(out / "fixed_batch_endpoints.csv")
    assert len(ends) == 8 and float(ends[0]["distance_from_start"]) == 0.0
    assert len(s["train_barrier"]) == 4 and all(b >= 0 for b in s["train_barrier"])


def test_averaging_equivalent_schedules(untouched, tmp_path):
    out = tmp_path / "avg"
    kernels = ["swa", "ema:0.2", "twopoint", "npoint:3", "swa:3", "twopoint:2", "npoint:3:2"]
    realnet.averaging_sidetrip(untouched, 100, out, steps=6, report_steps=[1, 4], kernels=kernels, bn_batches=2,
                          train_eval_samples=256, val_samples=300, **QUICK)
    saved = _common_outputs(out, "averaging", 100)
    assert saved["report_steps"] == [1, 4, 6] and saved["lr"] == pytest.approx(0.1)
    # per kernel: the average's and the equivalent side-trip's train loss and val accuracy at each k
    for spec in kernels:
        for r in saved["kernels"][spec]["results"]:
            for who in ("average", "sidetrip"):
                assert {"train_loss", "train_acc", "val_loss", "val_acc"} <= set(r[who])
                assert 0 <= r[who]["val_acc"] <= 1
    ks = {spec: [r["k"] for r in saved["kernels"][spec]["results"]] for spec in kernels}
    assert ks["swa"] == [1, 4, 6] and ks["twopoint:2"] == [4, 6] and ks["npoint:3"] == [4, 6]
    assert ks["swa:3"] == [4, 6] and saved["kernels"]["npoint:3:2"]["skipped"] == [1]
    # after one step SWA(1), EMA and TwoPoint(1) coincide with their one-step side-trips
    for spec in ("swa", "ema:0.2", "twopoint"):
        r = saved["kernels"][spec]["results"][0]
        assert r["k"] == 1 and r["l2_distance"] <= 1e-4 * r["l2_average_from_start"]
    assert saved["kernels"]["swa"]["results"][0]["l2_distance"] == 0.0
    # the schedules are quadsgd's equivalent_schedule (Table 1 generalised)
    sched = _csv(out / "schedules.csv")
    for spec, k, kern in (("swa", 4, qs.SWA(4)), ("ema:0.2", 6, qs.EMA(0.2)), ("npoint:3", 4, qs.NPoint(3, 2))):
        got = [float(r["lr"]) for r in sched if r["kernel"] == spec and int(r["k"]) == k]
        np.testing.assert_allclose(got, qs.equivalent_schedule(kern, np.full(k, 0.1)), rtol=1e-12)
    rows = _csv(out / "averaging.csv")
    assert {r["model"] for r in rows} == {"average", "sidetrip", "trajectory"}
    assert len([r for r in rows if r["model"] == "trajectory"]) == 3
    assert [int(r["offset"]) for r in _csv(out / "trajectory.csv")] == list(range(6))
    assert saved["sidetrip_runs"] < sum(len(v) for v in ks.values())  # twopoint schedules shared


def test_averaging_matches_side_trips_when_gradients_barely_change(trained_run, tmp_path):
    """Lemma 2: with a tiny lr the per-batch gradients stay constant and every average equals the end
    point of its equivalent side-trip (a wrong schedule would leave an O(1) relative distance)."""
    s = realnet.averaging_sidetrip(trained_run, 200, tmp_path / "lemma2", lr=1e-4, steps=8, report_steps=[8],
                          kernels=["swa", "ema:0.3", "twopoint", "npoint:3:3"], bn_batches=1,
                          train_eval_samples=64, val_samples=64, **QUICK)
    for spec, v in s["kernels"].items():
        (r,) = v["results"]
        assert r["relative_l2"] < 0.02, (spec, r["relative_l2"])


def test_alignment(untouched, tmp_path):
    out = tmp_path / "al"
    s = realnet.alignment(untouched, 200, out, steps=5, record_every=1, batch_pairs=3, **QUICK)
    saved = _common_outputs(out, "alignment", 200)
    rows = _csv(out / "alignment.csv")
    assert [int(r["t"]) for r in rows] == list(range(6))
    assert float(rows[0]["cos_start_constant"]) == pytest.approx(1.0)
    assert float(rows[0]["cos_between_schedules"]) == pytest.approx(1.0)
    assert float(rows[0]["distance_between_schedules"]) == 0.0 and float(rows[-1]["lr_linear"]) == 0.0
    assert float(rows[1]["cos_between_schedules"]) == pytest.approx(1.0)  # the first update is the same
    assert saved["different_batches"]["n_pairs"] == 6 and -1 <= s["different_batches"]["cos_mean"] <= 1
    assert all(-1 - 1e-9 <= float(r["cos_train_vs_fixed_linear"]) <= 1 + 1e-9 for r in rows)


def test_divergence(untouched, tmp_path):
    out = tmp_path / "dv"
    s = realnet.divergence(untouched, 100, out, steps=6, record_every=1, eval_steps=[0, 3], bn_batches=2,
                           train_eval_samples=128, val_samples=128, **QUICK)
    _common_outputs(out, "divergence", 100)
    rows = _csv(out / "divergence.csv")
    assert [int(r["t"]) for r in rows] == list(range(7))
    assert all(float(rows[0][c]) == 0.0 for c in ("dist_A_B", "dist_twopoint_H", "dist_A_start"))
    # one step: the two-point average at lr is the lr/2 step (same batch, same momentum buffer)
    assert float(rows[1]["dist_twopoint_H"]) <= 1e-4 * float(rows[1]["dist_A_start"])
    assert float(rows[-1]["dist_A_B"]) > 0 and s["other_seed"] == 1
    losses = _csv(out / "divergence_losses.csv")
    assert {(int(r["t"]), r["model"]) for r in losses} == {(t, m) for t in (0, 3, 6) for m in ("A", "B", "H",
                                                                                                  "twopoint")}
    ends = _csv(out / "endpoint_distances.csv")
    assert float(ends[-1]["dist_to_A_end"]) == 0.0 and float(ends[0]["dist_to_A_end"]) > 0
    assert [int(r["step"]) for r in _csv(out / "checkpoint_distances.csv")] == [0, 100, 200]
    # Lemma 2's fixed held-out batch along A, B, H (on by default): at t = 0 all three are theta_S, and its loss
    # there is the loss of that batch evaluated independently (batch-statistics BN at the checkpoint)
    fb = _csv(out / "divergence_fixed_batch.csv")
    assert {r["model"] for r in fb} == {"A", "B", "H"} and _csv(out / "pair_distances.csv") == []
    start = [r for r in fb if r["t"] == "0"]
    assert len({r["loss"] for r in start}) == 1 and len({r["grad_norm"] for r in start}) == 1
    from realnet.checkpoint import find_checkpoint
    from realnet.trainer import build_model, evaluate, load_config, restore_checkpoint

    cfg = load_config(untouched)
    data = realnet.build_data(cfg)
    model = build_model(cfg, data.num_classes)
    restore_checkpoint(realnet.load_checkpoint(find_checkpoint(untouched, 100)), model, rng=False)
    batch = data.fixed_batches("heldout", 1, cfg.batch_size, 424_242, "cpu")[0]
    assert float(start[0]["loss"]) == pytest.approx(evaluate(model, [batch], train_mode_bn=True)["loss"], rel=1e-5)
    assert s.fixed_batch["A"].loss_start == pytest.approx(float(start[0]["loss"]))
    assert s.fixed_batch["H"].gradnorm_max_change >= 1.0 and s.pairs_end == {}


def test_divergence_lr_pairs(untouched, tmp_path):
    """eq. 13's pairs: (A, B) at lr, (H, H') at lr/2, (Q, Q') at lr/4. After one update the members differ only
    by lr * f * (g_main - g_other) (same start, same momentum buffer), so the distances are exactly f-scaled."""
    out = tmp_path / "dv-pairs"
    s = realnet.divergence(untouched, 100, out, steps=5, record_every=1, eval_steps=[0], bn_batches=2,
                           train_eval_samples=64, val_samples=64, pair_factors=[0.5, 0.25], function_points=3,
                           function_samples=64, fixed_batch_every=0, **QUICK)
    pt = s.pair_distances
    assert s.pair_factors == [1.0, 0.5, 0.25] and len(s.fixed_batch_track) == 0 and s.fixed_batch == {}
    one = {float(f): float(d) for f, d, t in zip(pt.factor, pt.dist, pt.t) if t == 1}
    assert one[0.5] == pytest.approx(0.5 * one[1.0], rel=1e-4) and one[0.25] == pytest.approx(0.25 * one[1.0], rel=1e-4)
    at_a_b = pt.select(pt.factor == 1.0)
    np.testing.assert_allclose(at_a_b.dist, s.distances.dist_A_B, rtol=1e-12)  # the pair at lr is (A, B)
    assert s.pairs_end == {str(f): float(pt.dist[(pt.factor == f) & (pt.t == 5)][0]) for f in (1.0, 0.5, 0.25)}
    assert np.all(pt.lr[pt.factor == 0.25] == pytest.approx(0.25 * s.lr))
    fun = pt.dist_function[pt.t == 5]  # function-space distance at t = 1, 2 (log-spaced) and K = 5 only
    assert np.all(np.isfinite(fun)) and np.all(fun > 0) and np.isnan(pt.dist_function[pt.t == 3]).all()
    assert set(s.pair_train_loss_quarters) == {"1.0", "0.5", "0.25"} and s.timing["pairs"]["wall_s"] > 0
    back = type(s).load(out)
    np.testing.assert_array_equal(back.pair_distances.dist, pt.dist)
    assert back.summary == s.summary
    # a result saved before the pairs and the fixed batch existed still loads (their defaults: empty)
    (out / "pair_distances.csv").unlink()
    (out / "divergence_fixed_batch.csv").unlink()
    summ = json.loads((out / "summary.json").read_text())
    for k in ("fixed_batch_seed", "fixed_batch_size", "fixed_batch", "pair_factors", "pairs_end",
              "pair_train_loss_quarters", "timing"):
        del summ[k]
    (out / "summary.json").write_text(json.dumps(summ))
    old = type(s).load(out)
    assert len(old.pair_distances) == 0 and old.pairs_end == {} and old.final == s.final
    with pytest.raises(ConfigError, match="pair_factors must be numbers in"):
        realnet.divergence(untouched, 100, tmp_path / "bad", steps=2, pair_factors=[1.0], **QUICK)


def test_sidetrip_errors(trained_run, tmp_path):
    with pytest.raises(ValueError, match=r"step 150 is not checkpointed.*available steps: 0, 100, 200"):
        realnet.lr_sweep(trained_run, 150, tmp_path / "x", **QUICK)
    with pytest.raises(ValueError, match="must not be inside the run directory"):
        realnet.lr_sweep(trained_run, 100, trained_run / "sweep", **QUICK)
    with pytest.raises(ConfigError, match="bad kernel spec 'median'"):
        realnet.averaging_sidetrip(trained_run, 100, tmp_path / "x", kernels=["median"], **QUICK)
    with pytest.raises(ConfigError, match="needs step2"):
        realnet.fixed_batch(trained_run, 100, tmp_path / "x", **QUICK)
    with pytest.raises(ConfigError, match="unknown LrSweepOptions key 'lrmax'"):
        realnet.lr_sweep(trained_run, 100, tmp_path / "x", lrmax=3, **QUICK)
    with pytest.raises(ConfigError, match="direction must be one of"):
        realnet.lr_sweep(trained_run, 100, tmp_path / "x", direction="adam", **QUICK)
    with pytest.raises(FileNotFoundError, match="run directory not found"):
        realnet.alignment(tmp_path / "missing", 0, tmp_path / "y", **QUICK)
    assert not (trained_run / "sweep").exists()


def test_sidetrip_cli(untouched, tmp_path):
    out = tmp_path / "cli-sweep"
    cmd = [sys.executable, "-m", "realnet", "sidetrip", "lr-sweep", "--run", str(untouched), "--step", "200",
           "--out", str(out), "--num-lrs=5", "--heldout-batches", "10", "--batch-size=16"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    head = json.loads(r.stdout.strip().splitlines()[-1])
    assert {"train_start_loss", "train_min_loss", "best_lr_train", "heldout_min_loss"} <= set(head)
    assert "lr-sweep step 200" in r.stderr  # tqdm
    assert json.loads((out / "summary.json").read_text())["batch_size"] == 16
    bad = subprocess.run(cmd[:-4] + ["--step", "7", "--out", str(tmp_path / "o")], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and "available steps: 0, 100, 200" in bad.stderr


# ------------------------------------------------------------------------ typed results, registry, new kernels


@dataclass(frozen=True)
class _UnequalPair(qs.AveragingKernel):
    """mu_0 = 1 - w, mu_delta = w: a kernel defined only here (not in quadsgd) -- the averaging side-trip must
    handle it through ``kernel.tracking()`` and the spec grammar without library changes."""

    w: float
    delta: int
    spec_name: ClassVar[str] = "test_unequal_pair"
    params: ClassVar[tuple] = ("w", "delta")

    @property
    def stride(self) -> int:
        return self.delta

    @property
    def point_weights(self) -> np.ndarray:
        return np.array([1.0 - self.w, self.w])


def test_registry_describes_every_sidetrip():
    from realnet.sidetrips import SIDETRIPS

    assert list(SIDETRIPS) == ["lr-sweep", "fixed-batch", "averaging", "alignment", "divergence", "linear-fit"]
    function_names = {"linear-fit": "fit_linear_model", "averaging": "averaging_sidetrip"}
    for name, trip in SIDETRIPS.items():
        assert trip.name == name and trip.result.NAME == name and trip.doc
        assert trip.function is getattr(realnet, function_names.get(name, name.replace("-", "_")))
        assert dataclasses.is_dataclass(trip.options) and issubclass(trip.options, realnet.sidetrips.SideTripOptions)


def test_results_are_typed_and_round_trip_exactly(trained_run, tmp_path):
    from realnet.sidetrips import AlignmentResult, LrSweepResult

    out = tmp_path / "sweep"
    s = realnet.lr_sweep(trained_run, 200, out, num_lrs=4, heldout_batches=3, batch_size=16, **QUICK)
    assert isinstance(s, LrSweepResult) and s.curve.lr.dtype == np.float64 and s.heldout.batch.dtype == np.int64
    assert s["train_min_loss"] == s.train_min_loss == s.summary["train_min_loss"] and "best_lr_train" in s
    assert s.heldout_losses.shape == (5, 3)
    np.testing.assert_array_equal(s.heldout_losses.min(1), s.curve.heldout_min)
    back = LrSweepResult.load(out)
    for col in s.curve.columns():
        np.testing.assert_array_equal(getattr(back.curve, col), getattr(s.curve, col))
    assert back.summary == s.summary and back.config["sidetrip"] == "lr-sweep"
    # saving a loaded result rewrites the same bytes (CSV numbers are exact; summary and metadata too)
    again = back.save(tmp_path / "again")
    for f in sorted(p.name for p in out.iterdir() if p.name not in (".lock", ".sgd-trajectories.json")):  # not
        assert (again / f).read_bytes() == (out / f).read_bytes(), f  # the result's: the output dir's lock, marker
    with pytest.raises(ValueError, match="is a 'lr-sweep' side-trip, not 'alignment'"):
        AlignmentResult.load(out)


def test_averaging_accepts_a_kernel_defined_in_this_test(trained_run, tmp_path):
    """Lemma 2 with a kernel quadsgd does not ship: the average equals its equivalent side-trip's end point."""
    out = tmp_path / "avg-new-kernel"
    spec = "test_unequal_pair:0.3:2"
    s = realnet.averaging_sidetrip(trained_run, 200, out, lr=1e-4, steps=4, report_steps=[1, 4],
                                   kernels=[spec, "ema:0.3"], bn_batches=1, train_eval_samples=64, val_samples=64,
                                   **QUICK)
    assert realnet.sidetrips.kernel_at(spec, 4) == _UnequalPair(0.3, 2)
    kres = s.kernels[spec]
    assert kres.skipped == [1] and [r.k for r in kres.results] == [4]
    assert kres.results[0].relative_l2 < 0.02
    sched = s.schedules.select(s.schedules.kernel == spec)
    np.testing.assert_allclose(sched.lr, qs.equivalent_schedule(_UnequalPair(0.3, 2), np.full(4, 1e-4)), rtol=1e-12)
