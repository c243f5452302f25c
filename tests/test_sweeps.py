"""quadsgd sweeps: tables equal direct theory calls, simulation within its standard errors, resume after a
kill, a real Dask LocalCluster, spec errors before any work, the example spec (Fig. 9 / 11, eq. 20)."""
from __future__ import annotations

import concurrent.futures as cf
import copy
import functools
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest

import quadsgd as qs
from quadsgd.__main__ import main as cli_main
from quadsgd.kernels import AveragingKernel
from quadsgd.sweeps import (
    SpecError,
    SweepError,
    expand_grid,
    load_spec,
    point_id,
    point_seed,
    random_design,
    run_spec,
    sweep,
)
from quadsgd.sweeps.quantities import PARAMS, point_model, record_schedule

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "fig9_fig11_eq20.toml"


def small_spec(**sweep_overrides) -> dict:
    """Two-scale model, three kernels, every theory quantity and the simulation; 4 points."""
    spec = {
        "sweep": {"name": "small", "seed": 7, "kernels": ["Last", "EMA", "TwoPoint"],
                  "quantities": ["stationary_loss", "stationary_covariance", "stationary_loss_per_kappa",
                                 "effective_lr", "effective_lr_paper", "expected_loss",
                                 "expected_loss_per_kappa", "sim_loss", "sim_loss_per_kappa"]},
        "params": {"spectrum": "two-scale", "fast": 1.0, "slow": 0.015, "n_fast": 2, "n_slow": 3,
                   "decay": 0.01, "steps": 600, "records": 8, "chains": 64, "u0": 2.0},
        "grid": {"lr": [0.05, 0.5], "delta": [1, 10]},
    }
    spec["sweep"].update(sweep_overrides)
    return spec


def theory_spec() -> dict:
    spec = small_spec()
    spec["sweep"]["quantities"] = [q for q in spec["sweep"]["quantities"] if not q.startswith("sim_")]
    return spec


# =============================================================================================
# Designs, ids and seeds
# =============================================================================================
def test_expand_grid_product_order_and_lists():
    pts = expand_grid({"a": [1, 2], "b": ["x", "y", "z"]})
    assert pts == [{"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 1, "b": "z"},
                   {"a": 2, "b": "x"}, {"a": 2, "b": "y"}, {"a": 2, "b": "z"}]
    assert expand_grid([{"a": 1}, {"a": 2, "b": 3}]) == [{"a": 1}, {"a": 2, "b": 3}]
    with pytest.raises(ValueError, match=r"grid\['a'\] must be a non-empty list"):
        expand_grid({"a": 0.05})
    with pytest.raises(ValueError, match="item #1"):
        expand_grid([{"a": 1}, 3])


def test_point_id_and_seed_are_stable_and_canonical():
    p = {"lr": 0.05, "delta": 10, "spectrum": "two-scale"}
    # pinned: changing the hashing scheme would silently orphan every stored result
    assert point_id(p, "fp") == "4a6298c52069eb2a"
    assert point_seed(3, p) == 6938445949437699753
    assert point_id(dict(reversed(list(p.items()))), "fp") == point_id(p, "fp")  # key order irrelevant
    assert point_id({**p, "delta": 10.0}, "fp") != point_id(p, "fp")  # 10 and 10.0 are different values
    assert point_id(p, "other") != point_id(p, "fp")
    assert point_id({"w": (0.5, 0.5)}) == point_id({"w": [0.5, 0.5]}) == point_id({"w": np.array([0.5, 0.5])})
    assert point_seed(3, p) != point_seed(4, p)
    assert 0 <= point_seed(3, p) < 2**63


def test_random_design_reproducible_ranges_and_independent_streams():
    dists = {"lr": {"loguniform": [1e-3, 1e-1]}, "delta": {"int_loguniform": [1, 1000]},
             "momentum": {"choice": [0.0, 0.9]}, "u0": {"uniform": [-1, 1]}, "n": {"int_uniform": [2, 4]}}
    a = random_design(dists, 400, seed=5)
    assert a == random_design(dists, 400, seed=5)
    assert a != random_design(dists, 400, seed=6)
    lr = np.array([p["lr"] for p in a])
    delta = np.array([p["delta"] for p in a])
    assert lr.min() >= 1e-3 and lr.max() <= 1e-1
    assert 0.4 < np.mean(np.log10(lr) < -2) < 0.6  # log-uniform: half the mass below the geometric midpoint
    assert delta.min() >= 1 and delta.max() <= 1000 and all(type(p["delta"]) is int for p in a)
    assert {p["momentum"] for p in a} == {0.0, 0.9}
    assert {p["n"] for p in a} == {2, 3, 4}
    # adding a parameter does not change the draws of the others
    b = random_design({"lr": dists["lr"]}, 400, seed=5)
    assert [p["lr"] for p in b] == list(lr)
    with pytest.raises(ValueError, match="unknown distribution 'normal'"):
        random_design({"lr": {"normal": [0, 1]}}, 3)
    with pytest.raises(ValueError, match="low > 0"):
        random_design({"lr": {"loguniform": [0, 1]}}, 3)


# =============================================================================================
# The engine with user functions
# =============================================================================================
def f_scalar(a, b):
    return a * 10 + b


def f_dict(a, b):
    return {"sum": a + b, "prod": a * b}


def f_arrays(a, b, seed):
    t = np.arange(3)
    return {"t": t, "y": a * t + b, "tag": "curve", "seed_echo": np.full(3, seed % 1000)}


def f_rows(a, b):
    return [{"name": "x", "v": float(a)}, {"name": "y", "v": float(b)}]


def f_frame(a, b):
    return pd.DataFrame({"k": [1, 2], "v": [a, b]})


def f_fail_on(a, b, bad=3):
    if a == bad:
        raise RuntimeError(f"boom at a = {a}")
    return a + b


def f_logged(log, a, b):
    with open(log, "a") as fh:
        fh.write(f"{a},{b}\n")
    return {"v": a * b}


def test_sweep_output_forms_and_columns():
    grid = {"a": [1, 2], "b": [5, 6, 7]}
    df = sweep(f_scalar, grid, "serial", progress=False)
    assert list(df.columns) == ["point_id", "a", "b", "status", "value", "reason"]
    assert df["value"].tolist() == [15, 16, 17, 25, 26, 27]
    assert (df["status"] == "ok").all() and df["reason"].isna().all()

    df = sweep(f_dict, grid, "serial", progress=False)
    assert df[["sum", "prod"]].to_numpy().tolist() == [[a + b, a * b] for a in (1, 2) for b in (5, 6, 7)]

    df = sweep(f_arrays, [{"a": 2, "b": 1}, {"a": 3, "b": 0}], "serial", seed=11, progress=False)
    assert len(df) == 6 and df["y"].tolist() == [1, 3, 5, 0, 3, 6] and (df["tag"] == "curve").all()
    seeds = [point_seed(11, {"a": 2, "b": 1}), point_seed(11, {"a": 3, "b": 0})]
    assert df["seed"].tolist() == [seeds[0]] * 3 + [seeds[1]] * 3
    assert df["seed_echo"].tolist() == [seeds[0] % 1000] * 3 + [seeds[1] % 1000] * 3

    df = sweep(f_rows, {"a": [1], "b": [2]}, "serial", progress=False)
    assert df[["name", "v"]].to_numpy().tolist() == [["x", 1.0], ["y", 2.0]]
    df = sweep(f_frame, {"a": [1], "b": [2]}, "serial", progress=False)
    assert df[["k", "v"]].to_numpy().tolist() == [[1, 1], [2, 2]]


def test_sweep_thread_pool_and_process_pool_give_the_serial_table():
    grid = {"a": list(range(6)), "b": [1, 2]}
    ref = sweep(f_arrays, grid, "serial", seed=3, progress=False)
    with cf.ThreadPoolExecutor(2) as ex:
        thr = sweep(f_arrays, grid, ex, seed=3, batch_size=2, progress=False)
        assert not ex._shutdown  # a user's executor is not shut down
    pd.testing.assert_frame_equal(thr, ref)
    proc = sweep(f_arrays, grid, None, seed=3, max_workers=2, batch_size=1, progress=False)
    pd.testing.assert_frame_equal(proc, ref)


def test_sweep_bad_input_is_rejected_before_work(tmp_path):
    out = tmp_path / "o"
    with pytest.raises(ValueError, match=r"points #0 and #1 are identical"):
        sweep(f_scalar, [{"a": 1, "b": 2}, {"b": 2, "a": 1}], "serial", out=out, progress=False)
    with pytest.raises(ValueError, match="parameter name 'status' is reserved"):
        sweep(f_scalar, {"status": [1]}, "serial", progress=False)

    def validate(p):
        if p["a"] > 1:
            raise ValueError(f"a = {p['a']} must be <= 1")

    with pytest.raises(ValueError, match=r"point #2 \(a=2\): a = 2 must be <= 1.*on_invalid='skip'"):
        sweep(f_scalar, {"a": [0, 1, 2], "b": [4]}, "serial", out=out, validate=validate, progress=False)
    assert not out.exists()  # nothing was written
    df = sweep(f_scalar, {"a": [0, 1, 2], "b": [4]}, "serial", out=out, validate=validate,
               on_invalid="skip", progress=False)
    assert df["status"].tolist() == ["ok", "ok", "skipped"]
    assert df["value"].iloc[:2].tolist() == [4, 14] and pd.isna(df["value"].iloc[2])
    assert df["reason"].iloc[2] == "a = 2 must be <= 1"


def test_sweep_failing_point_names_it_and_keeps_finished_points(tmp_path):
    out = tmp_path / "o"
    grid = {"a": [1, 2, 3, 4], "b": [0]}
    with pytest.raises(SweepError, match=r"point #2 \(a=3\) failed: RuntimeError: boom at a = 3") as e:
        sweep(f_fail_on, grid, "serial", out=out, batch_size=1, progress=False)
    assert "worker traceback" in str(e.value)
    assert json.loads((out / "run.json").read_text())["status"] == "failed"
    # fixed function (bad = 99): the finished points are not recomputed; only a = 3 and a = 4 are
    fixed = functools.partial(f_fail_on, bad=99)
    df = sweep(fixed, grid, "serial", out=out, batch_size=1, progress=False, fingerprint="f")
    assert df["value"].tolist() == [1, 2, 3, 4]


def test_sweep_resume_computes_only_missing_points(tmp_path):
    log = tmp_path / "calls.txt"
    fn = functools.partial(f_logged, str(log))
    out = tmp_path / "o"
    sweep(fn, {"a": [1, 2], "b": [3]}, "serial", out=out, progress=False)
    (out / "parts" / "part-junk.parquet.123.tmp").write_bytes(b"half a file from a killed run")
    df = sweep(fn, {"a": [1, 2, 5, 6], "b": [3]}, "serial", out=out, progress=False)
    assert log.read_text().splitlines() == ["1,3", "2,3", "5,3", "6,3"]  # each point computed once
    assert df["v"].tolist() == [3, 6, 15, 18]
    assert not list((out / "parts").glob("*.tmp"))
    assert len(list((out / "parts").glob("*.parquet"))) == 1  # consolidated
    run = json.loads((out / "run.json").read_text())
    assert run["n_resumed"] == 2 and run["n_computed"] == 2 and run["status"] == "complete"
    assert len(run["history"]) == 1
    fresh = sweep(fn, {"a": [1, 2, 5, 6], "b": [3]}, "serial", out=tmp_path / "fresh", progress=False)
    pd.testing.assert_frame_equal(df, fresh)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "results.parquet"), fresh)
    # a smaller grid returns only its points (the store keeps the others)
    calls = len(log.read_text().splitlines())
    sub = sweep(fn, {"a": [5], "b": [3]}, "serial", out=out, progress=False)
    assert sub["v"].tolist() == [15] and len(log.read_text().splitlines()) == calls


def test_store_is_locked_while_a_sweep_writes(tmp_path):
    from quadsgd.sweeps.store import Store as _Store

    s = _Store(tmp_path / "o")
    try:
        with pytest.raises(ValueError, match="another sweep is writing"):
            sweep(f_scalar, {"a": [1], "b": [1]}, "serial", out=tmp_path / "o", progress=False)
    finally:
        s.close()
    assert sweep(f_scalar, {"a": [1], "b": [1]}, "serial", out=tmp_path / "o", progress=False)["value"].tolist() == [11]


# =============================================================================================
# Built-in quantities: the table equals direct calls of the theory functions
# =============================================================================================
def test_spec_table_equals_direct_theory_calls(tmp_path):
    spec = load_spec(theory_spec())
    df = run_spec(spec, tmp_path / "o", scheduler="serial", progress=False)
    assert df["point_id"].nunique() == 4
    for (lr, delta), g in df.groupby(["lr", "delta"]):
        p = {"spectrum": "two-scale", "fast": 1.0, "slow": 0.015, "n_fast": 2, "n_slow": 3, "lr": lr, "momentum": 0.0}
        m = point_model(p)
        kernels = {"Last": qs.Last(), "EMA": qs.EMA(0.01), "TwoPoint": qs.TwoPoint(int(delta))}
        times, _ = record_schedule(600, 8, "log")
        assert times[0] == 1 and times[-1] == 600
        u0 = np.full(5, 2.0)
        for name, k in kernels.items():
            rows = g[g["kernel"] == name]

            def q(name_):
                return rows[rows["quantity"] == name_].sort_values(["kappa", "time"])

            assert q("stationary_loss")["value"].item() == qs.stationary_loss(m, k)
            cov = qs.stationary_covariance(m, k)
            np.testing.assert_array_equal(q("stationary_covariance")["kappa"], [0.015, 1.0])
            np.testing.assert_array_equal(q("stationary_covariance")["value"], [cov[2], cov[0]])
            per = qs.stationary_loss_per_coordinate(m, k)
            np.testing.assert_allclose(q("stationary_loss_per_kappa")["value"], [per[2:].sum(), per[:2].sum()],
                                       rtol=1e-14)
            lam = qs.effective_lr(m, k)
            np.testing.assert_array_equal(q("effective_lr")["value"], [lam[2], lam[0]])
            curve = qs.expected_loss(m, k, steps=600, u0=u0)
            e = q("expected_loss")
            np.testing.assert_array_equal(e["time"], times)
            np.testing.assert_array_equal(e["value"], curve[times])
            # per-kappa curves add up to the total curve
            epk = q("expected_loss_per_kappa")
            total = epk.groupby("time")["value"].sum()
            np.testing.assert_allclose(total.to_numpy(), curve[times], rtol=1e-12)
            # the paper's printed formula: eq. 20 for the two-point average, lr for the last iterate
            g_ = 1.0 - lr * np.array([0.015, 1.0])
            paper = {"Last": lr * np.ones(2), "TwoPoint": lr * (1 + g_ ** int(delta)) / 2,
                     "EMA": lr * 0.01 / 1.99 * (1 + 0.99 * g_) / (1 - 0.99 * g_)}[name]
            np.testing.assert_allclose(q("effective_lr_paper")["value"], paper, rtol=1e-12)
            assert q("stationary_loss")["stderr"].isna().all()
    # theory only: no simulation columns were filled
    assert not df["quantity"].str.startswith("sim_").any()


def test_simulation_statistics_agree_with_theory_within_standard_errors(tmp_path):
    spec = small_spec()
    spec["params"].update(chains=400, steps=3000, records=6)
    df = run_spec(spec, tmp_path / "o", scheduler="serial", progress=False)
    key = ["point_id", "kernel", "time"]
    sim = df[df["quantity"] == "sim_loss"].set_index(key)
    th = df[df["quantity"] == "expected_loss"].set_index(key)
    z = (sim["value"] - th["value"].loc[sim.index]) / sim["stderr"]
    assert len(z) == 4 * 3 * 6 and np.isfinite(z).all() and (sim["stderr"] > 0).all()
    assert np.abs(z).max() < 4.5, z.abs().sort_values().tail()
    assert 0.3 < np.mean(z ** 2) < 2.5  # the stated standard errors are the right size
    # per-kappa final losses against the exact per-kappa curve at t = steps
    key = ["point_id", "kernel", "kappa"]
    s = df[df["quantity"] == "sim_loss_per_kappa"].set_index(key)
    e = df[(df["quantity"] == "expected_loss_per_kappa") & (df["time"] == 3000)].set_index(key)
    zk = (s["value"] - e["value"].loc[s.index]) / s["stderr"]
    assert len(zk) == 4 * 3 * 2 and np.abs(zk).max() < 4.5
    # stderr of a per-kappa loss: the loss of n independent Gaussian coordinates has sd ~ sqrt(2/n) x mean
    stat = df[df["quantity"] == "stationary_loss_per_kappa"].set_index(key)["value"]
    n_coord = np.where(s.index.get_level_values("kappa") == 1.0, 2, 3)
    ratio = s["stderr"] / (np.sqrt(2.0 / n_coord) * stat.loc[s.index] / math.sqrt(400))
    assert 0.7 < ratio.min() and ratio.max() < 1.3, ratio


def test_same_seed_same_result_for_any_worker_count_and_order(tmp_path):
    spec = small_spec()
    spec["sweep"]["quantities"] = ["sim_loss", "sim_loss_per_kappa"]
    spec["params"].update(chains=32, steps=300, records=4)
    sp = load_spec(spec)
    serial = run_spec(sp, tmp_path / "serial", scheduler="serial", progress=False)
    pooled = run_spec(sp, tmp_path / "pool", workers=2, batch_size=1, progress=False)
    pd.testing.assert_frame_equal(serial, pooled)
    rev = sweep(sp.function(), list(reversed(sp.points)), "serial", seed=sp.seed, fingerprint=sp.fingerprint,
                progress=False)
    cols = ["point_id", "quantity", "kernel", "kappa", "time"]
    a = serial.sort_values(cols).reset_index(drop=True)
    b = rev.sort_values(cols).reset_index(drop=True)[a.columns]
    pd.testing.assert_frame_equal(a, b)
    # a different sweep seed changes the simulated values, not the theory
    spec["sweep"]["seed"] = 8
    other = run_spec(spec, tmp_path / "seed8", scheduler="serial", progress=False)
    assert not np.allclose(other["value"], serial["value"])


# =============================================================================================
# Spec validation: clear errors before any work
# =============================================================================================
@pytest.mark.parametrize("mutate, pattern", [
    (lambda s: s["grid"].update(lrr=[0.1]), r"\[grid\]: unknown parameter 'lrr' \(did you mean 'lr'\?\)"),
    (lambda s: s["params"].update(momentm=0.9),
     r"\[params\]: unknown parameter 'momentm' \(did you mean 'momentum'\?\)"),
    (lambda s: s.update(grids={}), r"unknown section 'grids' \(did you mean 'grid'\?\)"),
    (lambda s: s["sweep"].update(quantities=["stationary_los"]),
     r"\[sweep\] quantities: unknown quantity 'stationary_los' \(did you mean 'stationary_loss'\?\)"),
    (lambda s: s["sweep"].update(kernels=["EMA", "Median"]), r"unknown kernel 'Median'"),
    (lambda s: s["grid"].update(lr=[0.05, "0.5"]),
     r"point #2 \(lr='0\.5', delta=1\): parameter 'lr' must be a float in \(0, inf\), got '0\.5' \(str\) "
     r"\(set in \[grid\]\)"),
    (lambda s: s["grid"].update(delta=[1, 2.5]),
     r"point #1 \(lr=0\.05, delta=2\.5\): parameter 'delta' must be an integer >= 1, got 2\.5 \(float\)"),
    (lambda s: s["params"].update(momentum=1.0), r"parameter 'momentum' must be a float in \[0, 1\), got 1\.0"),
    (lambda s: s["params"].update(chains=True), r"parameter 'chains' must be an integer >= 2, got True \(bool\)"),
    (lambda s: s["params"].pop("decay"),
     r"point #0 \(lr=0\.05, delta=1\): missing parameter 'decay' \(needed by EMA\)"),
    (lambda s: s["params"].update(lr=0.1), r"'lr' is both fixed in \[params\] and varied in \[grid\]"),
    (lambda s: s["grid"].update(lr=[0.05, 2.5]),
     r"point #2 \(lr=2\.5, delta=1\): lr = 2\.5 is unstable: .*needs 0 < lr < 2\. .*on_unstable = \"skip\""),
    (lambda s: s.update(figures=[{"file": "a.png", "kind": "line", "x": "delta"}]),
     r"\[\[figures\]\] 'a\.png': option 'quantity' is required"),
    (lambda s: s.update(figures=[{"file": "a.png", "kind": "line", "x": "delta", "quantity": "effective_lr",
                                  "colour": "red"}]), r"unknown figure option 'colour'"),
])
def test_spec_errors_name_key_and_point_before_any_work(tmp_path, mutate, pattern):
    spec = theory_spec()
    mutate(spec)
    out = tmp_path / "o"
    with pytest.raises(SpecError, match=pattern):
        run_spec(spec, out, scheduler="serial", progress=False)
    assert not out.exists()


def test_unstable_points_skipped_on_request_are_recorded(tmp_path):
    spec = theory_spec()
    spec["grid"]["lr"] = [0.05, 1.9, 2.5]
    spec["sweep"]["on_unstable"] = "skip"
    df = run_spec(spec, tmp_path / "o", scheduler="serial", progress=False)
    st = df.groupby("lr")["status"].agg(set)
    assert st.to_dict() == {0.05: {"ok"}, 1.9: {"ok"}, 2.5: {"skipped"}}
    reason = df.loc[df["status"] == "skipped", "reason"]
    assert len(reason) == 2 and reason.str.contains(r"lr = 2\.5 is unstable.*0 < lr < 2", regex=True).all()
    # the CLI option does the same for a spec that says "error"; re-running recomputes nothing
    spec["sweep"]["on_unstable"] = "error"
    out = tmp_path / "cli"
    spec_path = tmp_path / "spec.toml"
    import tomli_w

    spec_path.write_text(tomli_w.dumps(spec))
    assert cli_main(["sweep", str(spec_path), "--out", str(out), "--scheduler", "serial", "--no-progress"]) == 2
    assert not out.exists()
    assert cli_main(["sweep", str(spec_path), "--out", str(out), "--scheduler", "serial", "--no-progress",
                     "--skip-unstable"]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out / "results.parquet"), df)
    assert cli_main(["sweep", str(spec_path), "--out", str(out), "--scheduler", "serial", "--no-progress",
                     "--skip-unstable"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["n_resumed"] == 6 and run["n_computed"] == 0


def test_spec_random_design_points_and_designs(tmp_path):
    spec = {
        "sweep": {"seed": 1, "kernels": ["EMA"], "quantities": ["stationary_loss"]},
        "params": {"spectrum": "loguniform", "dim": 20, "omega_min": 1e-3, "omega_max": 1.0},
        "random": {"n": 5, "lr": {"loguniform": [1e-3, 1.0]}, "decay": {"loguniform": [1e-4, 1.0]}},
        "points": [{"momentum": 0.0}, {"momentum": 0.5}],
    }
    sp = load_spec(spec)
    assert len(sp.points) == 10
    df = run_spec(sp, tmp_path / "o", scheduler="serial", progress=False)
    for _, r in df.iterrows():
        m = qs.LinearModel(np.geomspace(1.0, 1e-3, 20), r["lr"], momentum=r["momentum"])
        assert r["value"] == qs.stationary_loss(m, qs.EMA(r["decay"]))
    with pytest.raises(SpecError, match=r"\[\[design\]\] 'b' grid: 'lr' is both fixed in \[\[design\]\] 'b' params"):
        load_spec({"sweep": {"kernels": ["Last"], "quantities": ["stationary_loss"]},
                   "design": [{"name": "a", "grid": {"lr": [0.1]}},
                              {"name": "b", "params": {"lr": 0.1}, "grid": {"lr": [0.2]}}]})


# =============================================================================================
# Command line, files, metadata, the example spec
# =============================================================================================
def test_cli_writes_results_spec_copy_metadata_and_figures(tmp_path, capsys):
    spec = copy.deepcopy(small_spec())
    spec["params"].update(chains=16, steps=200)
    spec["figures"] = [
        {"file": "curves.png", "kind": "loss_curves", "series": ["lr", "delta"], "select": {"kernel": ["Last", "EMA"]}},
        {"file": "lr.png", "kind": "line", "x": "delta", "quantity": "effective_lr", "hue": ["lr", "kappa"],
         "reference": "effective_lr_paper", "normalize": "lr", "logx": True, "select": {"kernel": "TwoPoint"}},
        {"file": "heat.png", "kind": "heatmap", "x": "delta", "y": "lr", "quantity": "stationary_loss",
         "select": {"kernel": "TwoPoint"}, "logy": True},
        {"file": "kappa.pdf", "kind": "loss_per_kappa", "select": {"lr": 0.05, "delta": 10}},
    ]
    import tomli_w

    path = tmp_path / "s.toml"
    text = "# a comment that must survive the copy\n" + tomli_w.dumps(spec)
    path.write_text(text)
    out = tmp_path / "out"
    assert cli_main(["sweep", str(path), "--out", str(out), "--scheduler", "serial", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "small: 4 points (0 skipped)" in printed and "curves.png" in printed
    assert (out / "spec.toml").read_text() == text
    run = json.loads((out / "run.json").read_text())
    assert run["seed"] == 7 and run["status"] == "complete" and run["n_points"] == 4
    assert {"numpy", "pandas", "pyarrow", "dask", "distributed", "sgd-trajectories"} <= set(run["versions"])
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert run["git"] == (git.stdout.strip() if git.returncode == 0 else "unknown")
    import pyarrow.parquet as pq

    meta = json.loads(pq.read_schema(out / "results.parquet").metadata[b"quadsgd.sweep"])
    assert meta["seed"] == 7 and meta["git"] == run["git"]
    for f in ("curves.png", "lr.png", "heat.png"):
        assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "kappa.pdf").read_bytes()[:5] == b"%PDF-"
    # a broken spec: exit status 2 and a message, no traceback
    path.write_text(text.replace('spectrum = "two-scale"', 'spectrum = "two_scale"'))
    assert cli_main(["sweep", str(path), "--out", str(tmp_path / "bad"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "error: point #0" in err and "parameter 'spectrum' must be one of 'two-scale'" in err
    assert "Traceback" not in err


def _example(designs=None, chains=None) -> dict:
    data = tomllib.loads(EXAMPLE.read_text())
    if designs is not None:
        data["design"] = [d for d in data["design"] if d["name"] in designs]
        def uses(f):
            sel = f["select"] if isinstance(f["select"], list) else [f["select"]]
            return all(c["design"] in designs for c in sel)

        data["figures"] = [f for f in data["figures"] if uses(f)]
    if chains is not None:
        for d in data["design"]:
            if "chains" in d.get("params", {}):
                d["params"]["chains"] = chains
    return data


def test_example_eq20_over_delta(tmp_path):
    df = run_spec(_example(designs={"eq20"}), tmp_path / "o", scheduler="serial", progress=False)
    e = df[df["quantity"] == "effective_lr"]
    assert sorted(e["delta"].unique()) == [1, 2, 3, 5, 10, 20, 30, 50, 100, 200, 300, 500, 1000, 2000, 5000]
    lr, kap, delta = e["lr"].to_numpy(), e["kappa"].to_numpy(), e["delta"].to_numpy(dtype=float)
    eq20 = lr * (1 + (1 - lr * kap) ** delta) / 2  # paper eq. 20
    np.testing.assert_allclose(e["value"], eq20, rtol=1e-12)
    # limits named in A.3: lr for delta ~ 1 on the slow direction, lr / 2 for large delta on the fast one
    fast_far = e[(e["kappa"] == 1.0) & (e["delta"] >= 1000)]["value"] / 0.05
    np.testing.assert_allclose(fast_far, 0.5, rtol=1e-12)
    assert abs(e[(e["kappa"] == 0.015) & (e["delta"] == 1)]["value"].item() / 0.05 - 1) < 1e-3
    assert (tmp_path / "o" / "eq20_delta.png").stat().st_size > 10_000


@pytest.mark.slow
def test_example_fig9_fig11_quantities(tmp_path):
    df = run_spec(_example(designs={"fig9"}), tmp_path / "o", workers=2, progress=False)

    def val(q, lr, kernel, **kw):
        r = df[(df["quantity"] == q) & np.isclose(df["lr"], lr) & (df["kernel"] == kernel)]
        for k, v in kw.items():
            r = r[np.isclose(r[k], v)]
        return r["value"].to_numpy()

    # stationary losses against the scalar AR(1) closed forms (field notes): S = lr/(w(2-lr w)),
    # EMA factor a/(2-a) (1+(1-a)g)/(1-(1-a)g), g = 1 - lr w; loss 0.5 w Var per coordinate
    a = 1 / 450

    def last(lr):
        return sum(0.5 * lr / (2 - lr * w) for w in (1.0, 0.015))

    def ema(lr):
        tot = 0.0
        for w in (1.0, 0.015):
            g = 1 - lr * w
            tot += 0.5 * lr / (2 - lr * w) * a / (2 - a) * (1 + (1 - a) * g) / (1 - (1 - a) * g)
        return tot

    np.testing.assert_allclose(val("stationary_loss", 0.05, "Last"), last(0.05), rtol=1e-12)
    np.testing.assert_allclose(val("stationary_loss", 0.02, "Last"), last(0.02), rtol=1e-12)
    np.testing.assert_allclose(val("stationary_loss", 0.05, "EMA"), ema(0.05), rtol=1e-12)
    # Fig. 9: EMA at lr0 reaches (below) the stationary loss of lr1 ...
    assert (val("stationary_loss", 0.05, "EMA") < val("stationary_loss", 0.02, "Last")
            < 0.5 * val("stationary_loss", 0.05, "Last"))
    # ... without the slow convergence of lr1: at t = 2000 its loss is already well below lr1's
    t = df.loc[df["quantity"] == "expected_loss", "time"]
    t2k = t.iloc[np.argmin(np.abs(t.to_numpy() - 2000))]
    assert val("expected_loss", 0.05, "EMA", time=t2k) < 0.6 * val("expected_loss", 0.02, "Last", time=t2k)
    # Fig. 11b: EMA cuts the fast coordinate's stationary contribution > 20x, the slow one's by < 30%
    fast = (val("stationary_loss_per_kappa", 0.05, "EMA", kappa=1.0)
            / val("stationary_loss_per_kappa", 0.05, "Last", kappa=1.0))
    slow = (val("stationary_loss_per_kappa", 0.05, "EMA", kappa=0.015)
            / val("stationary_loss_per_kappa", 0.05, "Last", kappa=0.015))
    assert fast < 0.05 and 0.7 < slow < 1.0
    # the simulation (1000 chains) agrees with the exact curves within its standard errors
    key = ["lr", "kernel", "time"]
    sim = df[df["quantity"] == "sim_loss"].set_index(key)
    th = df[df["quantity"] == "expected_loss"].set_index(key)
    z = (sim["value"] - th["value"].loc[sim.index]) / sim["stderr"]
    assert len(z) == 2 * 2 * record_schedule(20000, 40, "log")[0].size
    assert np.abs(z).max() < 4.5
    for f in ("fig9_loss.png", "fig11b_fast_slow.png"):
        assert (tmp_path / "o" / f).stat().st_size > 10_000


# =============================================================================================
# Interrupted runs and a real Dask cluster
# =============================================================================================
def _kill_spec(tmp_path) -> Path:
    import tomli_w

    spec = {
        "sweep": {"name": "killme", "seed": 3, "kernels": ["Last", "EMA"],
                  "quantities": ["sim_loss", "stationary_loss"], "batch_size": 1},
        "params": {"lr": 0.05, "decay": 0.01, "steps": 4000, "chains": 3000, "records": 4,
                   "record_spacing": "linear"},
        "grid": {"replicate": list(range(10))},
    }
    path = tmp_path / "kill.toml"
    path.write_text(tomli_w.dumps(spec))
    return path


@pytest.mark.slow
def test_killed_cli_run_resumes_without_loss_or_duplicates(tmp_path):
    spec = _kill_spec(tmp_path)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "quadsgd", "sweep", str(spec), "--out", str(out), "--workers", "1",
           "--no-figures"]
    with open(tmp_path / "log1.txt", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
        try:
            deadline = time.monotonic() + 120
            while len(list((out / "parts").glob("*.parquet"))) < 3:
                assert proc.poll() is None, (tmp_path / "log1.txt").read_text()
                assert time.monotonic() < deadline, "no parts were written"
                time.sleep(0.02)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the CLI, its forkserver and its worker
            proc.wait()
    n_parts = len(list((out / "parts").glob("*.parquet")))
    assert 3 <= n_parts < 10 and not (out / "results.parquet").exists()
    assert json.loads((out / "run.json").read_text())["status"] == "running"  # killed: no chance to update
    r = subprocess.run(cmd + ["--no-progress"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete" and run["n_resumed"] >= n_parts and run["n_resumed"] + run["n_computed"] == 10
    df = pd.read_parquet(out / "results.parquet")
    assert df["point_id"].nunique() == 10
    assert not df.duplicated(["point_id", "quantity", "kernel", "time"]).any()
    assert (df.groupby("point_id").size() == 2 * 4 + 2).all()  # each point exactly once, complete
    ref = run_spec(spec, tmp_path / "ref", scheduler="serial", progress=False, figures=False)
    pd.testing.assert_frame_equal(df, ref)


@pytest.mark.slow
def test_dask_local_cluster_gives_the_local_table(tmp_path):
    import tomli_w
    from distributed import LocalCluster

    spec = small_spec()
    spec["params"].update(chains=64, steps=500)
    spec["figures"] = [{"file": "curves.png", "kind": "loss_curves", "series": ["lr", "delta"]}]
    path = tmp_path / "s.toml"
    path.write_text(tomli_w.dumps(spec))
    local, remote = tmp_path / "local", tmp_path / "dask"
    assert cli_main(["sweep", str(path), "--out", str(local), "--workers", "2", "--no-progress"]) == 0
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", protocol="tcp") as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tcp://127.0.0.1:")
        assert cli_main(["sweep", str(path), "--out", str(remote), "--scheduler", address, "--batch-size", "1",
                         "--no-progress"]) == 0
    run = json.loads((remote / "run.json").read_text())
    assert run["executor"].startswith(f"dask {address}") and run["n_computed"] == 4
    a = pd.read_parquet(local / "results.parquet")
    b = pd.read_parquet(remote / "results.parquet")
    assert len(a) > 100 and (a["quantity"] == "sim_loss").any()
    pd.testing.assert_frame_equal(a, b)
    assert (remote / "curves.png").exists()


def test_public_schema_is_documented():
    # every parameter has a description and a type; every quantity named in the module docstring exists
    from quadsgd.sweeps import quantities as Q

    for p in PARAMS.values():
        assert p.doc and p.kind in ("float", "int", "str", "floats")
    for q in Q.QUANTITIES:
        assert f"``{q}``" in Q.__doc__


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.toml")), ids=lambda p: p.name)
def test_example_specs_are_valid(path):
    spec = load_spec(path)
    assert spec.points and spec.figures
    for p in spec.points:
        qs.LinearModel(np.asarray(point_model(p).omega), p["lr"], momentum=p["momentum"])  # every point stable


def test_plot_functions_draw_the_table_values():
    from matplotlib.figure import Figure

    from quadsgd.sweeps.figures import plot_heatmap, plot_line, plot_loss_curves, plot_loss_per_kappa

    sp = load_spec(theory_spec())
    df = sweep(sp.function(), sp.points, "serial", seed=sp.seed, progress=False)
    ax = Figure().add_subplot()
    plot_line(ax, df, x="delta", quantity="effective_lr", hue=["lr", "kappa"], normalize="lr",
              reference="effective_lr_paper", select={"kernel": "TwoPoint"})
    sel = df[(df["quantity"] == "effective_lr") & (df["kernel"] == "TwoPoint")
             & (df["lr"] == 0.5) & (df["kappa"] == 1.0)]
    line = [ln for ln in ax.lines if ln.get_label() == "λ = 0.5, κ = 1, two-point: effective_lr"][0]
    np.testing.assert_array_equal(line.get_xdata(), sel.sort_values("delta")["delta"])
    np.testing.assert_array_equal(line.get_ydata(), sel.sort_values("delta")["value"] / 0.5)
    assert ax.get_xlabel() == "delta (Δ)" and len(ax.lines) == 8  # 4 groups x (exact + eq. 19-21)
    ax = Figure().add_subplot()
    plot_loss_curves(ax, df, series=["lr", "delta"], select={"kernel": "EMA", "delta": 1})
    e = df[(df["quantity"] == "expected_loss") & (df["kernel"] == "EMA") & (df["delta"] == 1) & (df["lr"] == 0.05)]
    line = [ln for ln in ax.lines if ln.get_label().startswith("λ = 0.05, Δ = 1, EMA")][0]
    np.testing.assert_array_equal(line.get_ydata(), e["value"])
    assert ax.get_xscale() == ax.get_yscale() == "log"
    ax = Figure().add_subplot()
    plot_loss_per_kappa(ax, df, select={"lr": 0.05, "delta": 10})
    assert len([ln for ln in ax.lines if ln.get_label().startswith("κ")]) == 2 * 3
    ax = Figure().add_subplot()
    plot_heatmap(ax, df, x="delta", y="lr", quantity="stationary_loss", select={"kernel": "TwoPoint"})
    z = ax.collections[0].get_array()
    want = df[(df["quantity"] == "stationary_loss") & (df["kernel"] == "TwoPoint")].sort_values(["lr", "delta"])
    np.testing.assert_array_equal(np.ma.getdata(z).ravel(), want["value"])
    with pytest.raises(ValueError, match="several rows per"):
        plot_heatmap(Figure().add_subplot(), df, x="delta", y="lr", quantity="stationary_loss")


# =============================================================================================
# Kernels by name come from the kernel registry: a kernel defined only here works in specs
# =============================================================================================
@dataclass(frozen=True)
class Triangle(AveragingKernel):
    r"""Linearly decaying weights :math:`\mu_k = 2(W-k)/(W(W+1))`, :math:`k < W` (defined only in this test module)."""

    width: int
    spec_name: ClassVar[str] = "triangle_test"
    params: ClassVar[tuple] = ("width",)

    def __post_init__(self):
        if isinstance(self.width, bool) or not isinstance(self.width, int) or self.width < 2:
            raise ValueError(f"width must be an integer >= 2, got {self.width!r}")

    @property
    def point_weights(self) -> np.ndarray:
        w = np.arange(self.width, 0, -1.0)
        return w / w.sum()


def test_a_kernel_defined_outside_the_library_works_in_specs(tmp_path):
    spec = {
        "sweep": {"seed": 5, "kernels": ["Last", "Triangle"],
                  "quantities": ["stationary_loss", "effective_lr", "effective_lr_paper", "sim_loss"]},
        "params": {"n_fast": 1, "n_slow": 2, "steps": 2000, "records": 5, "chains": 400, "u0": 0.0},
        "grid": {"lr": [0.1, 0.5], "width": [3, 40]},
    }
    df = run_spec(spec, tmp_path / "o", scheduler="serial", progress=False, figures=False)
    assert set(df["kernel"]) == {"Last", "Triangle"} and df["width"].dtype.kind == "i"
    for (lr, width), g in df.groupby(["lr", "width"]):
        kappa = np.array([0.015, 1.0])
        mu = np.arange(width, 0, -1.0) / (width * (width + 1) / 2)
        c = np.correlate(mu, mu, mode="full")[width - 1:]           # C_delta, eq. 17
        gam = 1.0 - lr * kappa
        ratio = c[0] + 2 * (c[1:, None] * gam ** np.arange(1, width)[:, None]).sum(axis=0)  # eq. 19 bracket
        var = lr / (kappa * (2 - lr * kappa))                        # scalar AR(1), no momentum
        t = g[g["kernel"] == "Triangle"]
        row = t[t["quantity"] == "stationary_loss"]["value"].item()
        np.testing.assert_allclose(row, 0.5 * (kappa * var * ratio * np.array([2, 1])).sum(), rtol=1e-12)
        for q in ("effective_lr", "effective_lr_paper"):  # without momentum the printed formula is exact
            np.testing.assert_allclose(t[t["quantity"] == q].sort_values("kappa")["value"], lr * ratio, rtol=1e-12)
        m = qs.LinearModel(np.array([1.0, 0.015, 0.015]), lr)
        assert row == qs.stationary_loss(m, Triangle(int(width)))
        sim = t[t["quantity"] == "sim_loss"]  # started at the minimum: the loss rises to the stationary one
        exact = qs.expected_loss(m, Triangle(int(width)), steps=2000, u0=np.zeros(3))[sim["time"].astype(int)]
        z = (sim["value"].to_numpy() - exact) / sim["stderr"].to_numpy()
        assert np.abs(z).max() < 4.5, z
    # the kernel's parameter is part of the schema (type from the class) and checked by the kernel
    bad = copy.deepcopy(spec)
    bad["grid"]["width"] = [3, 2.5]
    with pytest.raises(SpecError, match=r"parameter 'width' must be an integer, got 2\.5 \(float\)"):
        load_spec(bad)
    bad["grid"]["width"] = [1]
    with pytest.raises(SpecError, match=r"parameter 'width': width must be an integer >= 2, got 1"):
        load_spec(bad)
    bad["grid"].pop("width")
    with pytest.raises(SpecError, match=r"missing parameter 'width' \(needed by Triangle\)"):
        load_spec(bad)
    # the spec names it by class name, spec name or lower case; the table always says "Triangle"
    for name in ("triangle_test", "triangle"):
        assert (load_spec({**spec, "sweep": {**spec["sweep"], "kernels": [name]}}).designs[None]["kernels"]
                == ("Triangle",))
    from matplotlib.figure import Figure

    from quadsgd.sweeps.figures import plot_line

    ax = Figure().add_subplot()
    plot_line(ax, df, x="lr", quantity="stationary_loss", hue=["width"], select={"kernel": "Triangle"})
    assert [ln.get_label() for ln in ax.lines] == ["width = 3, Triangle: stationary_loss",
                                                   "width = 40, Triangle: stationary_loss"]


def test_spec_module_works_without_tomllib(tmp_path):
    # Python 3.10 has no tomllib: the spec module must fall back to the tomli backport. Simulated here
    # with tomllib blocked and a stand-in tomli module wrapping the real parser (tomli may not be installed).
    script = textwrap.dedent(f"""
        import sys, types
        try:
            import tomllib as real
        except ModuleNotFoundError:
            import tomli as real
        sys.modules["tomllib"] = None  # `import tomllib` now raises ModuleNotFoundError
        calls = []
        tomli = types.ModuleType("tomli")
        tomli.TOMLDecodeError = real.TOMLDecodeError
        tomli.loads = lambda text, **kw: calls.append(len(text)) or real.loads(text, **kw)
        tomli.load = real.load
        sys.modules["tomli"] = tomli
        import quadsgd.sweeps
        from quadsgd.sweeps import SpecError, load_spec
        spec = load_spec({str(EXAMPLE)!r})
        bad = {str(tmp_path / 'bad.toml')!r}
        open(bad, "w").write("[sweep\\n")
        try:
            load_spec(bad)
        except SpecError as e:
            msg = str(e)
        print(len(spec.points), len(calls), "is not valid TOML" in msg,
              sys.modules["quadsgd.sweeps.spec"].tomllib is tomli)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["17", "2", "True", "True"]
