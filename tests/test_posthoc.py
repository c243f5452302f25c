"""realnet.posthoc: kernels realised on a checkpoint grid (exact on the grid, least squares against a brute-force
constrained solve otherwise), the streaming float64 merge against the in-memory weighted sum, the three file
formats, and the errors a user meets."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import quadsgd as qs
from realnet.checkpoint import save_checkpoint
from realnet.posthoc import (
    average_checkpoints,
    grid_weights,
    parse_candidate,
    read_state_dict,
    realise,
    save_state_dict,
)

GRID = np.arange(0, 2401, 100)


# ============================================================================ grid weights
@pytest.mark.parametrize("spec, expect", [
    ("last", {2400: 1.0}),
    ("twopoint:400", {2000: 0.5, 2400: 0.5}),
    ("npoint:4:200", {1800: 0.25, 2000: 0.25, 2200: 0.25, 2400: 0.25}),  # LAWA: the last 4 at stride 200
    ("npoint:5:100", {2000: 0.2, 2100: 0.2, 2200: 0.2, 2300: 0.2, 2400: 0.2}),  # SWA with stride 100
    (qs.Kernel(np.r_[0.5, np.zeros(99), 0.5]), {2300: 0.5, 2400: 0.5}),
], ids=str)
def test_exact_on_grid(spec, expect):
    w, res = grid_weights(spec, 2400, GRID)
    assert res == 0.0
    got = {int(s): float(x) for s, x in zip(GRID, w) if x != 0}
    assert got == expect  # exactly: the kernel's own weights


def test_exact_on_an_unsorted_grid_with_later_steps():
    steps = [2600, 2000, 100, 2400, 2200]
    w, res = grid_weights(qs.NPoint(3, 200), 2400, steps)
    assert res == 0.0 and list(w) == [0.0, 1 / 3, 0.0, 1 / 3, 1 / 3]


DENSE_KERNELS = [qs.Last(), qs.SWA(37), qs.TwoPoint(12), qs.NPoint(4, 7), qs.Kernel([0.1, 0.3, 0.0, 0.6]),
                 qs.EMA(0.05), qs.EMA(0.3), "cooldown:1-sqrt:50", "cooldown:cosine:40", "cooldown:exp:30:0.05"]


@pytest.mark.parametrize("kernel", DENSE_KERNELS, ids=str)
def test_dense_grid_reproduces_the_kernel(kernel):
    T = 1000
    r = realise(kernel, T, np.arange(T + 1))
    k = parse_candidate(kernel)
    assert r.residual < 1e-9
    lag_w = r.weights[::-1]  # lag 0 first
    n = 200 if np.isinf(k.support) else int(k.support)
    np.testing.assert_allclose(lag_w[:n], k.weights(n), atol=1e-12)
    assert lag_w.sum() == pytest.approx(1.0, abs=1e-12)


def _brute_projection(kernel, T, steps):
    """Constrained least squares written out: min_w sum_r (sum_j w_j [lag_j < r] - m_r)^2 s.t. sum_j w_j = 1,
    over r = 1..R (m_r = 1 beyond the kernel), by substitution w_last = 1 - sum(rest) and numpy's lstsq."""
    k = parse_candidate(kernel)
    lags = np.array(sorted(T - s for s in steps if s <= T))
    R = int(max(lags.max(), k.support if not np.isinf(k.support) else 4000)) + 1
    r = np.arange(1, R + 1)
    m = k.cumulative(r)
    A = (lags[None, :] < r[:, None]).astype(float)  # (R, n)
    if lags.size == 1:
        return {T - lags[0]: 1.0}, np.linalg.norm(A[:, 0] - m) / np.linalg.norm(1 - m)
    B = A[:, :-1] - A[:, -1:]
    w_rest, *_ = np.linalg.lstsq(B, m - A[:, -1], rcond=None)
    w = np.append(w_rest, 1 - w_rest.sum())
    res = np.linalg.norm(A @ w - m) / np.linalg.norm(1 - m)
    return {int(T - g): float(x) for g, x in zip(lags, w)}, res


@settings(max_examples=25, deadline=None)
@given(st.sets(st.integers(0, 299), min_size=1, max_size=12),
       st.sampled_from(["swa:64", "ema:0.03", "cooldown:1-sqrt:120", "cooldown:cosine:90", "twopoint:45",
                        "npoint:3:50", "cooldown:exp:80"]))
def test_projection_is_the_constrained_least_squares(others, spec):
    T = 300
    steps = sorted(set(others) | {T})
    w, res = grid_weights(spec, T, steps)
    ref, ref_res = _brute_projection(spec, T, steps)
    got = {int(s): float(x) for s, x in zip(steps, w)}
    for s in steps:
        assert got[s] == pytest.approx(ref.get(s, 0.0), abs=1e-8), (s, got, ref)
    assert res == pytest.approx(ref_res, rel=1e-7, abs=1e-10)
    assert np.all(w >= -1e-15) and w.sum() == pytest.approx(1.0, abs=1e-12)


def test_realised_schedule_is_the_equivalent_schedule_of_the_realised_weights():
    r = realise("cooldown:linear:400", 2400, [2000, 2160, 2400])
    np.testing.assert_allclose(r.weights, [120.5 / 400 * 0 + 0.19875, 0.5, 0.30125])
    k = r.realised_kernel()
    np.testing.assert_allclose(r.schedule(0.2), qs.equivalent_schedule(k, 0.2, steps=400), atol=1e-15)
    assert r.schedule_summary().startswith("0.801 x160, 0.301 x240")
    assert r.effective_length == pytest.approx(1 + 2 * (0.5 * 240 + 0.19875 * 400))
    assert r.window == 400 and 0 < r.residual < 1


def test_residual_is_relative_distance_under_lemma2():
    """With orthogonal unit batch gradients, ||merge - requested average|| / ||requested average - last|| equals
    the residual (theta_T - theta_{T-r} sums the last r steps' -lr g)."""
    rng = np.random.default_rng(0)
    T, lr = 400, 0.1
    g = np.linalg.qr(rng.normal(size=(T + 50, T)))[0].T  # T orthonormal rows of dim T + 50
    theta = np.vstack([np.zeros(T + 50), -lr * np.cumsum(g, axis=0)])  # theta_0..theta_T
    steps = np.array([0, 100, 250, 330, 400])
    for spec in ["swa:300", "cooldown:1-sqrt:350", "twopoint:150", "ema:0.05"]:  # (0.95^400 ~ 1e-9: no tail)
        r = realise(spec, T, steps)
        merge = r.weights @ theta[steps]
        mu = parse_candidate(spec).weights(T + 1) if spec.startswith("ema") else parse_candidate(spec).weights()
        mu = np.append(mu[:T], 1 - mu[:T].sum())
        avg = mu @ theta[T - np.arange(len(mu))]
        assert np.linalg.norm(merge - avg) / np.linalg.norm(avg - theta[T]) == pytest.approx(r.residual, rel=1e-9)


@pytest.mark.parametrize("args, match", [
    (("twopoint:100", 2450, GRID), r"at_step 2450 has no checkpoint.*latest checkpoint before it is 2400"),
    (("bogus:3", 2400, GRID), r"unknown kernel 'bogus'"),
    (("cooldown:wiggle:100", 2400, GRID), r"bad kernel spec 'cooldown:wiggle:100'.*shape"),
    (("cooldown:linear", 2400, GRID), r"cooldown:SHAPE:L"),
    (("swa:10", 2400, [1.5, 2400]), r"steps must be"),
    (("swa:10", 2400, [2400, 2400]), r"repeat"),
    (("swa:10", -1, GRID), r"at_step"),
])
def test_grid_errors(args, match):
    with pytest.raises(ValueError, match=match):
        grid_weights(*args)


# ============================================================================ streaming average
def _sds(n, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [{"conv.weight": torch.randn(8, 3, 3, 3, generator=g, dtype=dtype) * (1 + i),
             "bn.running_mean": torch.randn(8, generator=g, dtype=dtype),
             "bn.num_batches_tracked": torch.tensor(100 * (i + 1)),
             "fc.weight": torch.randn(10, 8, generator=g, dtype=dtype) + 1e3} for i in range(n)]


def _write(sds, tmp_path, fmt):
    paths = []
    for i, sd in enumerate(sds):
        if fmt == "realnet":
            p = save_checkpoint(tmp_path / f"step_{i:09d}.pt", {"model": sd, "step": i, "optimizer": {"state": {}}})
        else:
            p = save_state_dict(sd, tmp_path / f"sd_{i}.{'safetensors' if fmt == 'safetensors' else 'pt'}")
        paths.append(p)
    return paths


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_streaming_average_equals_in_memory_weighted_sum(tmp_path, dtype):
    sds = _sds(5, dtype=dtype)
    w = np.array([0.1, 0.0, 0.3, 0.35, 0.25])
    out = average_checkpoints(_write(sds, tmp_path, "pt"), w)
    for k in ("conv.weight", "bn.running_mean", "fc.weight"):
        ref = sum(float(wi) * sd[k].double() for wi, sd in zip(w, sds))  # in memory, float64
        assert out[k].dtype == dtype
        # the same float64 sum (to its rounding), rounded once to the checkpoints' dtype
        tol = 1e-14 if dtype == torch.float64 else 0.0
        torch.testing.assert_close(out[k], ref.to(dtype), rtol=tol, atol=0)
    assert int(out["bn.num_batches_tracked"]) == 500  # the last file's integer buffer


@pytest.mark.parametrize("fmt", ["realnet", "safetensors"])
def test_formats_agree_bitwise(tmp_path, fmt):
    sds = _sds(3, seed=1)
    w = [0.2, 0.3, 0.5]
    ref = average_checkpoints(_write(sds, tmp_path / "pt", "pt"), w)
    got = average_checkpoints(_write(sds, tmp_path / fmt, fmt), w)
    assert set(got) == set(ref)
    for k in ref:
        assert torch.equal(got[k], ref[k]) and got[k].dtype == ref[k].dtype
    mixed = average_checkpoints([_write(sds, tmp_path / "m", "safetensors")[0],
                                 *_write(sds, tmp_path / "n", "realnet")[1:]], w)
    assert all(torch.equal(mixed[k], ref[k]) for k in ref)


def test_written_state_dict_reads_back(tmp_path):
    sd = _sds(1)[0]
    for name in ("a.pt", "a.safetensors"):
        back = read_state_dict(save_state_dict(sd, tmp_path / name))
        assert all(torch.equal(back[k], sd[k]) for k in sd)
    assert not list(tmp_path.glob(".*tmp*"))


def test_state_dict_nested_under_a_key_is_found(tmp_path):
    sd = _sds(1)[0]
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "lightning.ckpt")
    assert torch.equal(read_state_dict(tmp_path / "lightning.ckpt")["fc.weight"], sd["fc.weight"])


def test_merge_errors(tmp_path):
    a, b = _write(_sds(2), tmp_path, "pt")
    with pytest.raises(ValueError, match=r"weights must sum to 1 \(within 1e-06\), they sum to 0.9"):
        average_checkpoints([a, b], [0.5, 0.4])
    with pytest.raises(ValueError, match="one entry per path"):
        average_checkpoints([a, b], [1.0])
    with pytest.raises(ValueError, match="weights contains NaN"):
        average_checkpoints([a, b], [np.nan, 1.0])
    with pytest.raises(FileNotFoundError, match="not found.*missing.pt"):
        average_checkpoints([a, tmp_path / "missing.pt"], [0.5, 0.5])
    other = _sds(1)[0]
    other["fc.weight"] = torch.zeros(10, 9)
    c = save_state_dict(other, tmp_path / "c.pt")
    with pytest.raises(ValueError, match=r"'fc.weight' has shape \(10, 9\).*different architectures"):
        average_checkpoints([a, c], [0.5, 0.5])
    extra = {**_sds(1)[0], "head.bias": torch.zeros(3)}
    d = save_state_dict(extra, tmp_path / "d.pt")
    with pytest.raises(ValueError, match=r"'head.bias'.*different architectures"):
        average_checkpoints([a, d], [0.5, 0.5])
    fewer = dict(list(_sds(1)[0].items())[:2])
    e = save_state_dict(fewer, tmp_path / "e.pt")
    with pytest.raises(ValueError, match=r"lacks tensors.*different architectures"):
        average_checkpoints([a, e], [0.5, 0.5])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read .*junk.pt"):
        average_checkpoints([a, tmp_path / "junk.pt"], [0.5, 0.5])


def _bytes(t):
    return t.reshape(-1).view(torch.uint8)


MANY_DTYPES = {"f32": torch.randn(3, 4), "bf16": torch.randn(5).bfloat16(), "scalar": torch.tensor(7),
               "empty": torch.zeros(0, 3), "f64": torch.randn(2, dtype=torch.float64),
               "mask": torch.tensor([True, False]), "f16": torch.randn(3).half(),
               "f8": torch.randn(4).to(torch.float8_e4m3fn), "i32": torch.arange(3, dtype=torch.int32)}


def test_safetensors_are_read_and_written_without_the_package(tmp_path, monkeypatch):
    sds = _sds(2)
    monkeypatch.setitem(sys.modules, "safetensors", None)
    paths = _write(sds, tmp_path, "safetensors")
    back = read_state_dict(paths[0])
    assert all(torch.equal(back[k], sds[0][k]) and back[k].shape == sds[0][k].shape for k in sds[0])
    out = average_checkpoints(paths, [0.25, 0.75])
    assert torch.equal(out["fc.weight"], (0.25 * sds[0]["fc.weight"].double() + 0.75 * sds[1]["fc.weight"].double())
                       .float())
    with pytest.raises(ValueError, match=r"tensor 'z' has dtype torch.complex128, which a .safetensors file cannot"):
        save_state_dict({"z": torch.zeros(2, dtype=torch.complex128)}, tmp_path / "c.safetensors")
    assert not (tmp_path / "c.safetensors").exists()


def test_safetensors_files_agree_with_the_safetensors_package(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    save_state_dict(MANY_DTYPES, tmp_path / "ours.safetensors")
    theirs = st.load_file(str(tmp_path / "ours.safetensors"))
    st.save_file(MANY_DTYPES, str(tmp_path / "theirs.safetensors"))
    ours = read_state_dict(tmp_path / "theirs.safetensors")
    for got in (theirs, ours):
        assert set(got) == set(MANY_DTYPES)
        for k, v in MANY_DTYPES.items():
            assert got[k].dtype == v.dtype and got[k].shape == v.shape and torch.equal(_bytes(got[k]), _bytes(v)), k


def test_many_dtypes_round_trip_through_torch_save(tmp_path):
    sd = {**MANY_DTYPES, "c64": torch.randn(3, dtype=torch.complex64)}
    back = read_state_dict(save_state_dict(sd, tmp_path / "a.pt"))
    assert all(back[k].dtype == v.dtype and torch.equal(_bytes(back[k]), _bytes(v)) for k, v in sd.items())


@pytest.mark.parametrize("how", ["segments", "torch-reader"])
def test_sum_cut_into_segments_and_blocks_is_the_in_memory_sum(tmp_path, monkeypatch, how):
    """Tensors cut across segments and cache blocks (tiny sizes), files of different dtypes for the same tensor,
    complex tensors, a tensor whose storage is not its own (torch's reader): the in-memory float64 sum, rounded once
    to the last file's dtype (within half a unit in its last place: sums of half-precision inputs often lie on a
    tie, where the float64 sum's last bit, fused or not, decides)."""
    from realnet import posthoc

    monkeypatch.setattr(posthoc, "_IN_FLIGHT", 6 * 1000)
    monkeypatch.setattr(posthoc, "_BLOCK", 64)
    g = torch.Generator().manual_seed(3)
    dtypes = [torch.bfloat16, torch.float64, torch.float16, torch.float32]
    sds = [{"a": (torch.randn(37, 11, generator=g) * 3).to(dt), "b": torch.randn(1000, generator=g).to(dt),
            "z": torch.randn(129, generator=g, dtype=torch.complex64), "n": torch.tensor(i)}
           for i, dt in enumerate(dtypes)]
    if how == "torch-reader":  # a transposed view: no dense storage of its own, read by torch.load(mmap=True)
        for sd in sds:
            sd["t"] = torch.randn(13, 7, generator=g).t()
    fmts = ["pt", "safetensors", "realnet", "pt"]
    paths = [_write([sd], tmp_path / f"{i}", f)[0] for i, (sd, f) in enumerate(zip(sds, fmts))]
    w = [0.1, 0.2, 0.3, 0.4]
    out = average_checkpoints(paths, w)
    for k in sds[0]:
        if k == "n":
            assert int(out[k]) == 3
            continue
        ref = sum(wi * sd[k].to(torch.complex128 if sd[k].is_complex() else torch.float64) for wi, sd in zip(w, sds))
        assert out[k].dtype == sds[-1][k].dtype and out[k].shape == sds[-1][k].shape
        same = (out[k] == ref.to(out[k].dtype)).double().mean()
        got, ref = (torch.view_as_real(x) if x.is_complex() else x for x in (out[k].to(ref.dtype), ref))
        half_ulp = torch.finfo(out[k].dtype).eps / 2 * ref.abs() * (1 + 1e-9)
        assert bool(((got - ref).abs() <= half_ulp).all()), k
        assert same > 0.98, k  # and mostly the very same rounding


def test_zero_weight_files_are_not_read(tmp_path):
    a, b = _write(_sds(2), tmp_path, "pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    out = average_checkpoints([a, tmp_path / "junk.pt", b], [0.5, 0.0, 0.5])
    assert int(out["bn.num_batches_tracked"]) == 200


def _model_entry(path, name):
    from realnet.posthoc import _index

    return next(e for e in _index(path) if e.name == name)


def _flip(path, offset):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        x = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([x[0] ^ 1]))


def test_realnet_checkpoints_are_checked_where_they_are_read(tmp_path, monkeypatch):
    """A flipped bit in a model tensor fails its CRC-32 naming the file and tensor; the optimizer's state is not
    read (a flipped bit there does not matter to the merge); a truncated file is refused from its header; a file
    written without CRCs has the SHA-256 of its payload checked instead."""
    from realnet.checkpoint import CheckpointError

    sds = _sds(2)
    for sd in sds:
        sd["opt"] = torch.zeros(1)  # a marker: the model's last tensor
    paths = []
    for i, sd in enumerate(sds):
        mom = {"state": {0: {"momentum_buffer": torch.full((4096,), float(i))}}}
        paths.append(save_checkpoint(tmp_path / f"step_{i:09d}.pt", {"model": sd, "step": i, "optimizer": mom}))
    ref = average_checkpoints(paths, [0.5, 0.5])
    e = _model_entry(paths[1], "fc.weight")
    _flip(paths[1], paths[1].stat().st_size - 4096)  # inside the momentum buffer, the payload's last storage
    assert torch.equal(average_checkpoints(paths, [0.5, 0.5])["fc.weight"], ref["fc.weight"])
    _flip(paths[1], e.offset + 17)
    with pytest.raises(CheckpointError, match=r"corrupt checkpoint '.*step_000000001.pt': tensor 'fc.weight' does "
                                              r"not match the CRC-32"):
        average_checkpoints(paths, [0.5, 0.5])
    data = paths[0].read_bytes()
    paths[0].write_bytes(data[:-10])
    with pytest.raises(CheckpointError, match=r"truncated or corrupt checkpoint .*step_000000000.pt"):
        average_checkpoints(paths, [0.5, 0.5])
    from torch.utils.serialization import config

    monkeypatch.setattr(config.save, "compute_crc32", False)
    p = save_checkpoint(tmp_path / "nocrc.pt", {"model": sds[0], "step": 0})
    assert torch.equal(read_state_dict(p)["fc.weight"], sds[0]["fc.weight"])
    _flip(p, p.read_bytes().index(sds[0]["fc.weight"].numpy().tobytes()))
    with pytest.raises(CheckpointError, match="SHA-256 of the payload does not match"):
        average_checkpoints([p], [1.0])


def test_truncated_or_malformed_safetensors_are_named(tmp_path):
    p = save_state_dict(_sds(1)[0], tmp_path / "a.safetensors")
    data = p.read_bytes()
    p.write_bytes(data[:-8])
    with pytest.raises(ValueError, match=r"as a .safetensors file: tensor 'fc.weight'.*\(truncated\?\)"):
        read_state_dict(p)
    p.write_bytes(b"\xff" * 16)
    with pytest.raises(ValueError, match=r"cannot read '.*a.safetensors' as a .safetensors file: no valid header"):
        average_checkpoints([p], [1.0])


# ============================================================================ the posthoc command
TINY = dict(dataset="digits", model="resnet20", width=4, steps=30, batch_size=16, lr=0.1, checkpoint_every=5,
            eval_every=0, eval_samples=32, progress=False, threads=1)
MERGE = dict(progress=False, threads=1, val_samples=64, bn_batches=2, fresh_batches=2)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """ResNet-20 (width 4) trained 30 steps on digits; checkpoints every 5 steps."""
    from realnet import TrainConfig, train

    run = tmp_path_factory.mktemp("posthoc") / "run"
    train(TrainConfig(**TINY), run)
    return run


@pytest.fixture(scope="module")
def merged(tiny_run, tmp_path_factory):
    from realnet.posthoc_run import evaluate_merges

    out = tmp_path_factory.mktemp("merged") / "m"
    kernels = ["twopoint:10", "npoint:3:5", "cooldown:1-sqrt:10", "ema:0.1"]
    return out, evaluate_merges(tiny_run, 30, out, kernels=kernels, save_models=True, **MERGE)


def test_command_outputs(merged, tiny_run):
    import csv
    import json

    out, res = merged
    with open(out / "candidates.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["kernel"] for r in rows] == ["last", "twopoint:10", "npoint:3:5", "cooldown:1-sqrt:10", "ema:0.1"]
    two = res.row("twopoint:10")
    assert two["weights"] == "20:0.5;30:0.5" and two["residual"] == 0.0 and two["window"] == 10
    assert res.row("last")["gain"] == 0.0 and res.row("last")["weights"] == "30:1"
    assert 0 < res.row("cooldown:1-sqrt:10")["residual"] <= 0.25
    for r in res.rows:  # the gain is the paired difference of the per-example losses: its mean is exact
        assert r["gain"] == pytest.approx(res.row("last")["val_loss"] - r["val_loss"], abs=1e-12)
        assert np.isfinite(r["val_loss_se"]) and r["val_loss_se"] > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["checkpoints"] == [0, 5, 10, 15, 20, 25, 30] and len(summary["candidates"]) == 5
    assert (out / "posthoc.png").stat().st_size > 10_000
    info = json.loads((out / "run_info.json").read_text())
    assert info["git"] and "torch" in info["versions"]


def test_finished_command_is_read_back(merged, tiny_run):
    from realnet.posthoc_run import evaluate_merges

    out, res = merged
    before = (out / "candidates.csv").stat().st_mtime_ns
    again = evaluate_merges(tiny_run, 30, out, kernels=["twopoint:10", "npoint:3:5", "cooldown:1-sqrt:10", "ema:0.1"],
                            save_models=True, **MERGE)
    assert (out / "candidates.csv").stat().st_mtime_ns == before
    assert [r["val_loss"] for r in again.rows] == [r["val_loss"] for r in res.rows]


def test_merged_model_is_the_weighted_average_evaluated(merged, tiny_run):
    """The two-point row's validation loss is that of (theta_20 + theta_30)/2 after update_bn, recomputed here."""
    from torch.optim.swa_utils import update_bn

    from realnet.checkpoint import checkpoint_path
    from realnet.posthoc_run import MergeOptions, _per_example
    from realnet.sidetrips._runner import RunContext
    from realnet.trainer import build_model, deterministic_mode

    out, res = merged
    opts = MergeOptions(**MERGE)
    with deterministic_mode(True, 1):
        ctx = RunContext(tiny_run, opts)
        model = build_model(ctx.cfg, ctx.data.num_classes)
        a, b = (read_state_dict(checkpoint_path(tiny_run, s)) for s in (20, 30))
        model.load_state_dict({k: (0.5 * a[k].double() + 0.5 * b[k].double()).to(a[k].dtype)
                               if a[k].is_floating_point() else b[k] for k in a})
        update_bn(ctx.bn_batches(2, 0), model)
        vl, _ = _per_example(model, ctx.data.eval_batches("val", 64, opts.eval_batch_size, ctx.rt.device), ctx.rt)
    assert float(vl.mean()) == pytest.approx(res.row("twopoint:10")["val_loss"], rel=1e-6)


def test_saved_merges_are_realnet_checkpoints(merged, tiny_run):
    from realnet.checkpoint import checkpoint_path, load_checkpoint

    out, res = merged
    ck = load_checkpoint(out / "models" / "twopoint_10.pt")
    a, b = (read_state_dict(checkpoint_path(tiny_run, s)) for s in (20, 30))
    assert torch.equal(ck["model"]["fc.weight"],
                       (0.5 * a["fc.weight"].double() + 0.5 * b["fc.weight"].double()).float())
    assert ck["step"] == 30 and ck["posthoc"]["weights"] == [0.5, 0.5] and "optimizer" in ck
    assert (out / "models" / "cooldown_1-sqrt_10.pt").is_file()


def test_default_candidates_fit_the_grid():
    from realnet.posthoc_run import default_candidates

    c = default_candidates(2400, range(0, 2401, 100))
    assert c[:4] == ["last", "twopoint:100", "twopoint:200", "twopoint:400"]
    assert {"npoint:3:100", "npoint:5:100", "cooldown:linear:200", "cooldown:1-sqrt:400", "swa:800"} <= set(c)
    assert any(s.startswith("ema:") for s in c)
    assert default_candidates(10, [10]) == ["last"]


@pytest.mark.parametrize("argv, match", [
    (["--at-step", "33"], r"--at-step 33 has no checkpoint in run .*checkpointed steps: 0, 5, 10"),
    (["--at-step", "30", "--kernels", "bogus:3"], r"--kernels: unknown kernel 'bogus'"),
    (["--at-step", "30", "--kernels", "cooldown:wiggle:10"], r"--kernels: bad kernel spec 'cooldown:wiggle:10'"),
    (["--at-step", "30", "--kernels", "swa:7"], r"--kernels swa:7: its grid residual 0.\d+ exceeds --max-residual 0.1"),
    (["--at-step", "x"], r"--at-step must be an integer"),
    (["--at-step", "30", "--max-residual", "-1"], r"max_residual must be a finite number >= 0"),
])
def test_command_errors_are_one_line_and_write_nothing(tiny_run, tmp_path, capsys, argv, match):
    import re

    from realnet.cli import main

    out = tmp_path / "o"
    rc = main(["posthoc", "--run", str(tiny_run), "--out", str(out), "--max-residual", "0.1", "--progress", "false",
               *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and re.search(match, err), err
    assert not out.exists()


def test_mixed_architectures_are_refused_naming_the_file(tiny_run, tmp_path, capsys):
    """A checkpoint of another architecture among those a candidate merges: one line naming --run, the file and
    the tensor, before anything is written; a candidate that does not merge it is not refused."""
    import shutil

    from realnet import TrainConfig, train
    from realnet.cli import main
    from realnet.posthoc_run import evaluate_merges

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    other = tmp_path / "other"
    train(TrainConfig(**{**TINY, "width": 8, "steps": 5, "checkpoint_every": 5}), other)
    shutil.copy(other / "checkpoints" / "step_000000005.pt", run / "checkpoints" / "step_000000020.pt")
    with pytest.raises(ValueError, match=r"--run: tensor .* has shape .* in '.*step_000000020.pt'.*different "
                                         r"architectures"):
        evaluate_merges(run, 30, tmp_path / "o", kernels=["twopoint:10"], **MERGE)
    out = tmp_path / "o2"
    rc = main(["posthoc", "--run", str(run), "--out", str(out), "--at-step", "30", "--kernels", "twopoint:10",
               "--progress", "false"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "step_000000020.pt" in err and "--run" in err, err
    assert not out.exists() and not (tmp_path / "o").exists()
    res = evaluate_merges(run, 30, tmp_path / "o3", kernels=["twopoint:5"], **MERGE)
    assert res.row("twopoint:5")["weights"] == "25:0.5;30:0.5"


def test_killed_command_keeps_finished_candidates(merged, tiny_run, tmp_path):
    """SIGKILL after the first candidates finished; the re-run computes only the rest and its table equals the
    uninterrupted one (same numbers bit for bit)."""
    import json
    import os
    import signal
    import subprocess
    import time
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "killed"
    argv = [sys.executable, "-m", "realnet", "posthoc", "--run", str(tiny_run), "--at-step", "30", "--out", str(out),
            "--kernels", "twopoint:10,npoint:3:5,cooldown:1-sqrt:10,ema:0.1", "--progress", "false", "--threads", "1",
            "--val-samples", "64", "--bn-batches", "2", "--fresh-batches", "2"]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out / ".resume-state.pt"
    t0 = time.monotonic()
    while not state.exists() and proc.poll() is None and time.monotonic() - t0 < 120:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state.exists() and not (out / "summary.json").exists(), "the command was not killed midway"
    from realnet.checkpoint import load_checkpoint

    done = set(load_checkpoint(state)["state"]["rows"])
    assert "last" in done
    again = subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    info = json.loads((out / "run_info.json").read_text())
    assert len(info["resumed"]) == 1 and not state.exists()
    ref = (merged[0] / "candidates.csv").read_text()
    assert (out / "candidates.csv").read_text() == ref


def test_predict_reads_the_linear_fit(tiny_run, tmp_path):
    """--predict: the gains of the fitted linear model for the realised kernels (here exact: the kernels
    themselves), equal to quadsgd.fitting.predict of the same kernels."""
    from quadsgd.fitting import predict
    from realnet import fit_linear_model
    from realnet.posthoc_run import evaluate_merges

    fit = fit_linear_model(tiny_run, 30, tmp_path / "lf", k=3, steps=84, lags=2, kernels=["twopoint:2"], n_blocks=5,
                           sample_size=32, curvature_batches=4, noise_batches=8, n_boot=200, threads=1,
                           progress=False)
    res = evaluate_merges(tiny_run, 30, tmp_path / "m", kernels=["twopoint:10", "npoint:3:5"], predict=True,
                          linear_fit=str(tmp_path / "lf"), **MERGE)
    p = predict(fit.kappa, fit.noise_std, fit.lr, fit.momentum, kernels=["twopoint:10", "npoint:3:5"])
    ok = np.asarray(p.stable, bool)
    for j, spec in enumerate(["twopoint:10", "npoint:3:5"]):
        row = res.row(spec)
        assert row["predicted_variance_ratio"] == pytest.approx(
            np.nansum(p.averaged_variance[ok, j]) / np.nansum(p.variance[ok]), rel=1e-12)
        assert row["predicted_loss_gain"] == pytest.approx(np.nansum(p.loss_reduction[ok, j]), rel=1e-12, abs=1e-15)
    assert res.row("last")["predicted_variance_ratio"] == 1.0 and res.row("last")["predicted_loss_gain"] == 0.0
    assert 0 < res.row("npoint:3:5")["predicted_variance_ratio"] < 1
    with pytest.raises(ValueError, match="--linear-fit .* fitted at step 30, not at --at-step 25"):
        evaluate_merges(tiny_run, 25, tmp_path / "m2", kernels=["twopoint:10"], predict=True,
                        linear_fit=str(tmp_path / "lf"), **MERGE)
