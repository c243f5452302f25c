"""realnet unit tests: config parsing, data splits and batch order, models, checkpoints, schedules."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import quadsgd as qs
from realnet import checkpoint as ck
from realnet.config import ConfigError, TrainConfig, build_options, config_diff, parse_overrides, resolve_config
from realnet.data import BatchOrder, build_data, digits_split_indices
from realnet.models import ResNet20, count_parameters, create_model
from realnet.sidetrips import AveragingOptions, KernelSpec, kernel_at, parse_kernel
from realnet.trainer import lr_at

# ------------------------------------------------------------------------------------------- config


def test_overrides_toml_and_cli_precedence(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('lr = 0.05\nsteps = 7\nmodel = "resnet18"\ncheckpoint_steps = [3, 5]\nsmall-stem = true\n')
    res, over = parse_overrides(["--out", "D", "--lr=0.2", "--batch-size", "16", "--compile", "--data-seed=none"],
                                reserved=("out",))
    assert res == {"out": "D"}
    cfg = build_options(TrainConfig, toml, over)
    assert cfg.lr == 0.2 and cfg.steps == 7 and cfg.model == "resnet18" and cfg.batch_size == 16
    assert cfg.checkpoint_steps == [3, 5] and cfg.small_stem is True and cfg.compile is True and cfg.data_seed is None
    cfg2 = build_options(TrainConfig,
                         overrides={"checkpoint_steps": "10, 20", "deterministic": "false", "steps": "1e3"})
    assert cfg2.checkpoint_steps == [10, 20] and cfg2.deterministic is False and cfg2.steps == 1000


def test_unknown_and_badly_typed_keys_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown TrainConfig key 'lrr'.*did you mean 'lr'"):
        build_options(TrainConfig, overrides={"lrr": "0.1"})
    toml = tmp_path / "bad.toml"
    toml.write_text("bogus = 1\n")
    with pytest.raises(ConfigError, match=r"bogus.*bad.toml"):
        build_options(TrainConfig, toml)
    with pytest.raises(ConfigError, match="steps must be an integer"):
        build_options(TrainConfig, overrides={"steps": "ten"})
    with pytest.raises(ConfigError, match="progress must be a boolean"):
        build_options(TrainConfig, overrides={"progress": "maybe"})
    (tmp_path / "t.toml").write_text('steps = "x"\n')
    with pytest.raises(ConfigError, match="steps must be an integer"):
        build_options(TrainConfig, tmp_path / "t.toml")
    with pytest.raises(FileNotFoundError, match="nope.toml"):
        build_options(TrainConfig, tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="unknown AveragingOptions key"):
        build_options(AveragingOptions, overrides={"window": "3"})


@pytest.mark.parametrize("key,value,pattern", [
    ("lr", 0.0, "lr must be a finite number > 0"),
    ("lr", -1.0, "lr must be a finite number > 0"),
    ("model", "vgg16", "model must be one of 'resnet34', 'resnet18', 'resnet20'"),
    ("dataset", "mnist", "dataset must be one of"),
    ("lr_schedule", "exp", "lr_schedule must be one of"),
    ("batch_size", 0, "batch_size must be an integer >= 1"),
    ("momentum", 1.0, r"momentum must be in \[0, 1\)"),
    ("seed", -1, "seed and data_seed must be integers >= 0"),
])
def test_resolve_config_rejects_bad_values(key, value, pattern):
    with pytest.raises(ConfigError, match=pattern):
        resolve_config(dataclasses.replace(TrainConfig(), **{key: value}))


def test_resolve_config_fills_auto_values():
    c = resolve_config(TrainConfig())
    assert (c.model, c.small_stem, c.image_size, c.heldout_size, c.data_seed) == ("resnet20", True, 16, 300, 0)
    c = resolve_config(TrainConfig(dataset="imagenet", lr_schedule="step", steps=90))
    assert (c.model, c.small_stem, c.image_size, c.schedule_steps, c.lr_step_size) == ("resnet34", False, 224, 90, 30)
    assert config_diff(dataclasses.asdict(c), dataclasses.asdict(dataclasses.replace(c, steps=5, lr=1.0))) == \
        {"lr": (c.lr, 1.0)}


def test_lr_schedules():
    base = dict(lr=1.0, steps=10)
    c = resolve_config(TrainConfig(**base))
    assert [lr_at(c, s) for s in (0, 9, 50)] == [1.0, 1.0, 1.0]
    c = resolve_config(TrainConfig(**base, lr_schedule="step", lr_step_size=4, lr_gamma=0.5))
    assert [lr_at(c, s) for s in (0, 3, 4, 8, 12)] == [1.0, 1.0, 0.5, 0.25, 0.125]
    c = resolve_config(TrainConfig(**base, lr_schedule="linear", lr_min=0.1))
    assert np.allclose([lr_at(c, s) for s in (0, 5, 10, 20)], [1.0, 0.55, 0.1, 0.1])
    c = resolve_config(TrainConfig(**base, lr_schedule="cosine"))
    assert np.allclose([lr_at(c, s) for s in (0, 5, 10)], [1.0, 0.5, 0.0], atol=1e-12)
    c = resolve_config(TrainConfig(**base, warmup_steps=4))
    assert np.allclose([lr_at(c, s) for s in (0, 1, 3, 4)], [0.25, 0.5, 1.0, 1.0])


# --------------------------------------------------------------------------------------------- data


def test_digits_split_is_fixed_disjoint_and_normalised():
    tr, he, va = digits_split_indices()
    assert (len(tr), len(he), len(va)) == (1197, 300, 300)
    assert len(set(tr) | set(he) | set(va)) == 1797
    tr2, _, _ = digits_split_indices()
    assert np.array_equal(tr, tr2)
    data = build_data(resolve_config(TrainConfig()))
    assert data.train.x.shape == (1197, 3, 16, 16) and data.val.x.shape == (300, 3, 16, 16)
    assert abs(float(data.train.x.mean())) < 1e-4 and abs(float(data.train.x.std()) - 1) < 1e-3
    assert data.num_classes == 10 and set(data.val.y.tolist()) == set(range(10))


def test_batch_order_is_deterministic_and_covers_each_epoch():
    o = BatchOrder(100, 32, seed=3)
    assert o.steps_per_epoch == 3
    ep0 = torch.cat([o.indices(t) for t in range(3)])
    assert len(set(ep0.tolist())) == 96
    o2 = BatchOrder(100, 32, seed=3)
    assert torch.equal(o2.indices(4), o.indices(4)) and torch.equal(o2.indices(0), o.indices(0))
    assert not torch.equal(BatchOrder(100, 32, seed=4).indices(0), o.indices(0))
    assert o.sample_seeds(5) == o2.sample_seeds(5) and o.sample_seeds(5) != o.sample_seeds(6)
    assert o.state(7) == {"seed": 3, "n": 100, "batch_size": 32, "steps_per_epoch": 3, "epoch": 2, "position": 1,
                          "next_step": 7}
    with pytest.raises(ValueError, match=r"batch_size must be in \[1, 100\]"):
        BatchOrder(100, 101, seed=0)


def test_fixed_heldout_batches_distinct_from_training_split():
    data = build_data(resolve_config(TrainConfig()))
    hb = data.fixed_batches("heldout", 10, 32, seed=1, device="cpu")
    assert len(hb) == 10 and all(x.shape == (32, 3, 16, 16) for x, _ in hb)
    hb2 = data.fixed_batches("heldout", 10, 32, seed=1, device="cpu")
    assert all(torch.equal(a[0], b[0]) for a, b in zip(hb, hb2))
    train_rows = {tuple(r) for r in data.train.x[:, 0].reshape(len(data.train), -1).numpy().round(4).tolist()}
    held_rows = {tuple(r) for r in hb[0][0][:, 0].reshape(32, -1).numpy().round(4).tolist()}
    assert len(held_rows & train_rows) <= 2  # duplicated digit images can exist in the raw data


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "imagenet"])
def test_missing_data_dir_names_path_and_layout(tmp_path, dataset):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=r"nowhere.*expected layout"):
        build_data(resolve_config(TrainConfig(dataset=dataset, data_dir=str(missing))))
    with pytest.raises(FileNotFoundError, match="needs --data-dir"):
        build_data(resolve_config(TrainConfig(dataset=dataset)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty.*expected layout"):
        build_data(resolve_config(TrainConfig(dataset=dataset, data_dir=str(tmp_path / "empty"))))


# ------------------------------------------------------------------------------------------- models


def test_models():
    m = ResNet20(num_classes=10)
    assert 265_000 < count_parameters(m) < 280_000  # He et al.: 0.27M
    assert m(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    r34 = create_model("resnet34", 10, small_stem=True)
    assert r34.conv1.kernel_size == (3, 3) and r34.conv1.stride == (1, 1) and isinstance(r34.maxpool, torch.nn.Identity)
    assert 21_000_000 < count_parameters(r34) < 21_400_000
    assert r34(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    r18 = create_model("resnet18", 100)
    assert r18.conv1.kernel_size == (7, 7) and r18.fc.out_features == 100
    assert any(isinstance(mod, torch.nn.BatchNorm2d) for mod in create_model("resnet20", 10, width=4).modules())
    with pytest.raises(ValueError, match="unknown model 'resnet50'"):
        create_model("resnet50", 10)


# -------------------------------------------------------------------------------------- checkpoints


def test_checkpoint_roundtrip_and_damage(tmp_path):
    payload = {"step": 3, "model": {"w": torch.arange(5.0)}, "rng": ck.capture_rng_state(), "config": {"a": 1}}
    p = ck.save_checkpoint(ck.checkpoint_path(tmp_path, 3), payload)
    assert p.name == "step_000000003.pt" and ck.list_checkpoints(tmp_path) == [3]
    back = ck.load_checkpoint(p)
    assert back["step"] == 3 and torch.equal(back["model"]["w"], torch.arange(5.0))
    torch.manual_seed(1)
    state = ck.capture_rng_state()
    a = torch.rand(3)
    ck.restore_rng_state(back["rng"])
    ck.restore_rng_state(state)
    assert torch.equal(torch.rand(3), a)
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ck.CheckpointError, match=r"truncated.*step_000000003\.pt"):
        ck.load_checkpoint(p)
    p.write_bytes(raw[:-10] + bytes(10))
    with pytest.raises(ck.CheckpointError, match=r"corrupt checkpoint .*step_000000003\.pt.*SHA-256"):
        ck.load_checkpoint(p)
    p.write_bytes(b"hello")
    with pytest.raises(ck.CheckpointError, match="not a realnet checkpoint"):
        ck.load_checkpoint(p)
    with pytest.raises(ValueError, match="step 4 is not checkpointed.*available steps: 3"):
        ck.find_checkpoint(tmp_path, 4)


# ------------------------------------------------------------------------------------------ kernels


def test_kernel_specs_map_to_quadsgd_kernels():
    assert kernel_at("swa", 10) == qs.SWA(10)
    assert kernel_at("swa:3", 10) == qs.SWA(3) and kernel_at("swa:12", 10) is None
    assert kernel_at("ema:0.01", 5) == qs.EMA(0.01)
    assert kernel_at("twopoint", 7) == qs.TwoPoint(7) and kernel_at("twopoint:8", 7) is None
    assert kernel_at("npoint:3", 10) == qs.NPoint(3, 5) and kernel_at("npoint:3", 1) is None
    assert kernel_at("npoint:4:2", 6) == qs.NPoint(4, 2) and kernel_at("npoint:4:3", 6) is None
    for bad in ("swa:0", "ema", "ema:2", "twopoint:x", "npoint:1", "median"):
        with pytest.raises(ConfigError, match="bad kernel spec"):
            parse_kernel(bad)


def test_kernel_specs_use_quadsgds_grammar_and_fit_rule():
    # one grammar with quadsgd: its other forms work too; a kernel fits when it needs no iterate before S
    assert isinstance(parse_kernel("swa"), KernelSpec) and parse_kernel(" EMA:0.5 ").at(0) == qs.EMA(0.5)
    assert kernel_at("last", 1) == qs.Last() and kernel_at("kernel:0.5,0.5", 1) == qs.Kernel([0.5, 0.5])
    assert kernel_at("kernel:0.5,0,0.5", 1) is None and kernel_at("twopoint", 0) is None
    with pytest.raises(ConfigError, match="bad kernel spec 'kernel:0.5,0.6'"):
        parse_kernel("kernel:0.5,0.6")


# ------------------------------------------------------------------------------------- result tables


def test_tables_round_trip_exactly_with_blank_and_non_finite_cells(tmp_path):
    from realnet.sidetrips import AveragingTable

    vals = [0.1, 1 / 3, float("inf"), float("nan"), 5e-324, -2.5e300]
    n = len(vals)
    t = AveragingTable(kernel=["swa"] * (n - 1) + ["trajectory"], kernel_repr=["SWA(window=2)"] * (n - 1) + ["Last()"],
                       k=list(range(n)), model=["average"] * (n - 1) + ["trajectory"], train_loss=vals,
                       train_acc=vals, val_loss=vals, val_acc=vals, l2_to_partner=vals, l2_from_start=vals)
    t.write(tmp_path / "a.csv")
    lines = (tmp_path / "a.csv").read_text().splitlines()
    assert lines[0] == ",".join(AveragingTable.columns()) and len(lines) == n + 1
    assert lines[3].split(",")[-2:] == ["inf", "inf"] and lines[-1].split(",")[-2] == ""  # trajectory: no partner
    back = AveragingTable.read(tmp_path / "a.csv")
    assert back.k.dtype == np.int64 and back.kernel_repr[1] == "SWA(window=2)"
    np.testing.assert_array_equal(back.train_loss, np.array(vals))  # exact, NaN in place
    assert np.isnan(back.l2_to_partner[-1]) and len(back.select(back.model == "average")) == n - 1
    with pytest.raises(ValueError, match="has 2 rows, expected 1"):
        AveragingTable(kernel=["a"], kernel_repr=["b"], k=[1, 2], model=["m"], train_loss=[1.0], train_acc=[1.0],
                       val_loss=[1.0], val_acc=[1.0], l2_to_partner=[1.0], l2_from_start=[1.0])


def test_sidetrip_sizes_come_from_the_run_config(tmp_path):
    from realnet.config import sidetrip_sizes
    from sgdtraj.files import write_json
    from validation.__main__ import main as validation_main
    from validation.real import RealConfig

    cfg = resolve_config(TrainConfig(dataset="imagenet", data_dir="/old/place", batch_size=1024, lr=0.4))
    z = sidetrip_sizes(cfg)
    assert (z.batch_size, z.lr, z.image_size, z.model) == (1024, 0.4, 224, "resnet34")
    assert z.sweep_batch_sizes == [256, 1024, 4096] and z.eval_samples == 10000 and z.threads == 0
    small = sidetrip_sizes(resolve_config(TrainConfig(dataset="imagenet", batch_size=64, heldout_size=100)))
    assert small.sweep_batch_sizes == [16, 64, 100] and small.eval_samples == 100
    run = tmp_path / "run"
    run.mkdir()
    import dataclasses
    write_json(run / "config.json", dataclasses.asdict(cfg))
    moved = tmp_path / "moved"
    moved.mkdir()
    rc = RealConfig.for_mode("quick", run=run, data_dir=moved)
    assert (rc.dataset, rc.batch_size, rc.sweep_batch_size, rc.lr) == ("imagenet", 1024, 1024, 0.4)
    assert rc.sweep_batch_sizes == [256, 1024, 4096] and rc.data_dir == str(moved) and rc.threads == 0
    digits = resolve_config(TrainConfig())
    write_json(run / "config.json", dataclasses.asdict(digits))
    assert RealConfig.for_mode("quick", run=run) == RealConfig.for_mode("quick", run=run, data_dir=None)
    assert RealConfig.for_mode("quick", run=run).sweep_batch_sizes == RealConfig().sweep_batch_sizes  # digits' own
    # --run with --data-dir is accepted (the run needs 3 checkpoints: refused for that reason, not the pairing)
    assert validation_main(["reproduce", "--run", str(run), "--data-dir", str(moved), "--real-only",
                            "--out", str(tmp_path / "rep"), "--no-progress"]) == 2
