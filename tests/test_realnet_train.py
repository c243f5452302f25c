"""realnet main trajectory: outputs, bit-identical resume after a crash, refusals, CLI, other data/models, DDP."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import realnet
from realnet import trainer
from realnet.checkpoint import CheckpointError, checkpoint_path, list_checkpoints, load_checkpoint
from realnet.cli import main as cli_main
from realnet.config import ConfigError, TrainConfig

REPO = Path(__file__).resolve().parents[1]
TINY = dict(dataset="digits", model="resnet20", width=4, batch_size=16, lr=0.1, progress=False, eval_samples=100)


def _rows(path, drop=("time_s",)):
    with open(path, newline="") as fh:
        return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(fh)]


def _assert_same_state(a_path, b_path):
    a, b = load_checkpoint(a_path), load_checkpoint(b_path)
    assert a["step"] == b["step"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and len(sa) > 0
    for i in sa:
        assert torch.equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"])


def test_short_trajectory_writes_everything(tmp_path):
    out = tmp_path / "run"
    s = realnet.train(TrainConfig(**TINY, steps=12, checkpoint_every=5, eval_every=5, checkpoint_steps=[7]), out)
    assert list_checkpoints(out) == [0, 5, 7, 10, 12]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == "resnet20" and cfg["data_seed"] == 0 and cfg["small_stem"] is True
    info = json.loads((out / "run_info.json").read_text())["sessions"][0]
    assert info["seed"] == 0 and info["versions"]["torch"] == torch.__version__ and info["git"]
    assert info["config"]["steps"] == 12
    rows = _rows(out / "metrics.csv", drop=())
    assert list(rows[0]) == trainer.METRICS_COLUMNS and [int(r["step"]) for r in rows] == list(range(12))
    assert all(float(r["lr"]) == 0.1 and np.isfinite(float(r["train_loss"])) for r in rows)
    assert [int(r["step"]) for r in _rows(out / "evals.csv")] == [0, 5, 10, 12]
    assert s["steps"] == 12 and 0 <= s["val_acc"] <= 1
    ck = load_checkpoint(checkpoint_path(out, 5))
    assert ck["data_order"]["next_step"] == 5 and ck["data_order"]["position"] == 5
    assert ck["config"]["lr"] == 0.1 and set(ck["rng"]) >= {"torch", "numpy", "python"}
    assert ck["schedule"]["next_lr"] == 0.1 and ck["optimizer"]["state"]
    # checkpoints stay small for the tiny digits model
    assert checkpoint_path(out, 12).stat().st_size < 400_000


def test_resume_after_crash_is_bit_identical(tmp_path, monkeypatch):
    cfg = TrainConfig(**TINY, steps=16, checkpoint_every=4, eval_every=4, lr_schedule="cosine", weight_decay=5e-4)
    ref = tmp_path / "ref"
    realnet.train(cfg, ref)

    crashed = tmp_path / "crashed"
    real_step = trainer.train_step
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 11:
            raise RuntimeError("simulated crash")
        return real_step(*a, **k)

    monkeypatch.setattr(trainer, "train_step", flaky)
    with pytest.raises(RuntimeError, match="simulated crash"):
        realnet.train(cfg, crashed)
    monkeypatch.setattr(trainer, "train_step", real_step)
    assert list_checkpoints(crashed) == [0, 4, 8]
    s = realnet.train(cfg, crashed)  # the same command again continues from step 8
    assert s["resumed_from"] == 8
    _assert_same_state(checkpoint_path(ref, 16), checkpoint_path(crashed, 16))
    assert _rows(ref / "metrics.csv") == _rows(crashed / "metrics.csv")
    assert _rows(ref / "evals.csv") == _rows(crashed / "evals.csv")
    assert len(json.loads((crashed / "run_info.json").read_text())["sessions"]) == 2

    # a shorter run extended with a larger --steps equals the uninterrupted run too
    ext = tmp_path / "ext"
    realnet.train(TrainConfig(**{**cfg.__dict__, "steps": 6, "schedule_steps": 16}), ext)
    realnet.train(TrainConfig(**{**cfg.__dict__, "schedule_steps": 16}), ext)
    _assert_same_state(checkpoint_path(ref, 16), checkpoint_path(ext, 16))
    assert _rows(ref / "metrics.csv") == _rows(ext / "metrics.csv")


def test_resume_reads_rng_states_from_device_tensors(tmp_path, monkeypatch):
    """Resume loads through the host and restores RNG states that come back as accelerator tensors."""
    from tests.test_realnet_checkpoint import ForeignDevice, on_foreign_device

    cfg = dict(**TINY, steps=4, checkpoint_every=2, eval_every=0)
    ref, res = tmp_path / "ref", tmp_path / "res"
    realnet.train(TrainConfig(**cfg), ref)
    realnet.train(TrainConfig(**{**cfg, "steps": 2}), res)
    real_load, seen = trainer.load_run_checkpoint, []

    def device_mapped(run_dir, step, map_location="cpu", use=""):
        seen.append(str(map_location))
        ckpt = real_load(run_dir, step, map_location=map_location, use=use)
        return {**ckpt, "rng": on_foreign_device(ckpt["rng"])}

    monkeypatch.setattr(trainer, "load_run_checkpoint", device_mapped)
    realnet.train(TrainConfig(**cfg), res)
    assert seen == ["cpu"]
    assert isinstance(on_foreign_device(torch.zeros(1)), ForeignDevice)
    _assert_same_state(checkpoint_path(ref, 4), checkpoint_path(res, 4))
    assert _rows(ref / "metrics.csv") == _rows(res / "metrics.csv")


def test_retention_keeps_the_declared_checkpoints_and_refuses_what_does_not_fit(tmp_path, monkeypatch, capsys):
    cfg = dict(**TINY, steps=12, checkpoint_every=2, eval_every=0, lr_schedule="cosine")
    ref, kept = tmp_path / "ref", tmp_path / "kept"
    realnet.train(TrainConfig(**cfg), ref)
    realnet.train(TrainConfig(**{**cfg, "progress": True}, checkpoint_keep_every=6, branch_steps=[3], branch_window=2),
                  kept)
    assert "checkpoints: 8 written, 6 kept" in capsys.readouterr().err  # the plan, printed before training
    assert list_checkpoints(kept) == [0, 2, 3, 4, 6, 12]
    _assert_same_state(checkpoint_path(ref, 12), checkpoint_path(kept, 12))
    info = json.loads((kept / "run_info.json").read_text())["sessions"][0]
    assert info["checkpoint_plan"].startswith("checkpoints: 8 written")
    # a branch step whose checkpoints an earlier rule removed cannot be requested any more
    with pytest.raises(ConfigError, match=r"branch_steps: step 8 .* needs checkpoints 8, 10"):
        realnet.train(TrainConfig(**{**cfg, "steps": 14, "schedule_steps": 12}, branch_steps=[8],
                                      branch_window=2), kept)
    with pytest.raises(ConfigError, match="checkpoint_keep_every=5 must be a multiple of checkpoint_every=2"):
        realnet.train(TrainConfig(**cfg, checkpoint_keep_every=5), tmp_path / "bad")
    # not enough disk: refused before anything is written
    monkeypatch.setattr(realnet.checkpoint, "free_bytes", lambda path: 10_000)
    with pytest.raises(ConfigError, match=r"not enough disk for the checkpoints: checkpoints: 7 written, 7 kept.*"
                                          r"raise checkpoint_keep_every"):
        realnet.train(TrainConfig(**cfg), tmp_path / "full")
    assert not (tmp_path / "full").exists()


def test_different_config_and_bad_states_are_refused(tmp_path):
    out = tmp_path / "run"
    realnet.train(TrainConfig(**TINY, steps=4, checkpoint_every=2, lr_schedule="linear"), out)
    with pytest.raises(ConfigError, match=r"different config \(lr: 0\.1 \(stored\) != 0\.2"):
        realnet.train(TrainConfig(**{**TINY, "lr": 0.2}, steps=4, lr_schedule="linear"), out)
    with pytest.raises(ConfigError, match="--schedule-steps=4"):  # the linear horizon was fixed at 4 steps
        realnet.train(TrainConfig(**TINY, steps=8, lr_schedule="linear"), out)
    with pytest.raises(ValueError, match="checkpoints up to step 4 > steps=2"):
        realnet.train(TrainConfig(**TINY, steps=2, lr_schedule="linear", schedule_steps=4), out)
    p = checkpoint_path(out, 4)
    p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"step_000000004\.pt"):
        realnet.train(TrainConfig(**TINY, steps=6, lr_schedule="linear", schedule_steps=4), out)
    with pytest.raises(ValueError, match=r"batch_size must be in \[1, 1197\]"):
        realnet.train(TrainConfig(**{**TINY, "batch_size": 5000}, steps=1), tmp_path / "big")
    with pytest.raises(ConfigError, match="lr must be a finite number > 0"):
        realnet.train(TrainConfig(**{**TINY, "lr": 0.0}, steps=1), tmp_path / "zero")


def test_resnet34_trains_on_digits(tmp_path):
    out = tmp_path / "r34"
    s = realnet.train(TrainConfig(**{**TINY, "model": "resnet34", "batch_size": 8, "eval_samples": 16}, steps=2,
                                  checkpoint_every=0, eval_every=0), out)
    assert list_checkpoints(out) == [0, 2] and np.isfinite(s["final_train_loss"])
    assert "layer4.2.bn2.running_var" in load_checkpoint(checkpoint_path(out, 2))["model"]


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
    from realnet.synthetic_images import write_image_folder

    root = tmp_path_factory.mktemp("jpegs")
    write_image_folder(root, classes=2, train_per_class=10, val_per_class=3, size=(96, 72), gray=0.2, cmyk=0.1)
    return root


JPEG_RUN = dict(dataset="imagenet", model="resnet18", image_size=64, heldout_size=4, batch_size=4, lr=0.02,
                progress=False, eval_samples=6, eval_batch_size=4, checkpoint_every=2, eval_every=2)


def test_jpeg_imagefolder_resnet18_with_workers_resumes_bit_identically(jpeg_folder, tmp_path, monkeypatch):
    """ResNet-18 (ImageNet stem) at 64 px on generated JPEGs, 2 loader workers and evaluation on, killed and
    resumed, equals an uninterrupted run with the loading done in the main process (0 workers)."""
    kw = dict(JPEG_RUN, data_dir=str(jpeg_folder))
    data = realnet.build_data(realnet.resolve_config(TrainConfig(**kw, num_workers=2)))
    assert (len(data.train), len(data.heldout), len(data.val), data.num_classes) == (16, 4, 6, 2)
    order = realnet.BatchOrder(len(data.train), 4, seed=0)
    x1, y1 = data.batch_at(order, 3, "cpu")
    assert x1.shape == (4, 3, 64, 64) and torch.equal(x1, data.batch_at(order, 3, "cpu")[0])  # seeded views
    ref, res = tmp_path / "ref", tmp_path / "res"
    realnet.train(TrainConfig(**kw, steps=6, num_workers=0), ref)
    real_step, calls = trainer.train_step, {"n": 0}

    def killed(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # what the CLI turns SIGTERM into
        return real_step(*a, **k)

    monkeypatch.setattr(trainer, "train_step", killed)
    with pytest.raises(KeyboardInterrupt):
        realnet.train(TrainConfig(**kw, steps=6, num_workers=2), res)
    monkeypatch.setattr(trainer, "train_step", real_step)
    assert list_checkpoints(res) == [0, 2]
    assert realnet.train(TrainConfig(**kw, steps=6, num_workers=2), res)["resumed_from"] == 2
    _assert_same_state(checkpoint_path(ref, 6), checkpoint_path(res, 6))
    assert _rows(ref / "metrics.csv") == _rows(res / "metrics.csv")
    assert _rows(ref / "evals.csv") == _rows(res / "evals.csv") and len(_rows(res / "evals.csv")) == 4


def test_cli_train_and_errors(tmp_path, capsys):
    out = tmp_path / "cli"
    toml = tmp_path / "t.toml"
    toml.write_text("width = 4\nbatch-size = 16\neval_samples = 50\n")
    rc = cli_main(["train", "--dataset", "digits", "--out", str(out), "--steps", "3", "--checkpoint-every=2",
                   "--config", str(toml)])
    assert rc == 0
    cap = capsys.readouterr()
    assert json.loads(cap.out.strip().splitlines()[-1])["steps"] == 3
    assert "train cli" in cap.err and "3/3" in cap.err  # tqdm progress bar
    assert json.loads((out / "config.json").read_text())["width"] == 4 and list_checkpoints(out) == [0, 2, 3]
    assert cli_main(["train", "--out", str(tmp_path / "x"), "--widht=3"]) == 2
    assert "unknown TrainConfig key 'widht'" in capsys.readouterr().err
    assert cli_main(["train", "--out", str(tmp_path / "x"), "--model=resnet50"]) == 2
    assert "model must be one of" in capsys.readouterr().err
    assert cli_main(["train", "--out", str(tmp_path / "x"), "--dataset=cifar10", f"--data-dir={tmp_path / 'no'}"]) == 2
    assert "cifar-10-batches-py" in capsys.readouterr().err
    assert cli_main(["train", "--help"]) == 0
    assert "--checkpoint-every" in capsys.readouterr().out


@pytest.mark.slow
def test_ddp_two_cpu_ranks_with_torchrun(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "realnet",
           "train", "--dataset", "digits", "--out", str(out), "--steps", "4", "--width", "4", "--batch-size", "16",
           "--checkpoint-every", "2", "--eval-every", "2", "--eval-samples", "50", "--progress=false"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert list_checkpoints(out) == [0, 2, 4]
    info = json.loads((out / "run_info.json").read_text())["sessions"][0]
    assert info["world_size"] == 2
    assert len(_rows(out / "metrics.csv")) == 4 and len(_rows(out / "evals.csv")) == 3


@pytest.mark.slow
def test_ddp_two_gloo_ranks_on_jpegs_and_sync_bn_refused_on_cpu(jpeg_folder, tmp_path):
    """torchrun, 2 gloo ranks on the JPEG folder: the step-0 loss is the mean over the ranks' shares of the
    single-process global batch, each normalised separately (what side-trips reproduce with ``bn_groups``);
    rank 0 writes everything; evaluation spread over the ranks gives one process's numbers; a DDP run resumes;
    SyncBN on CPU is refused (torch runs it on GPUs only)."""
    import copy

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    kw = dict(JPEG_RUN, data_dir=str(jpeg_folder), num_workers=1)
    cfg = realnet.resolve_config(TrainConfig(**kw, steps=2))
    data = realnet.build_data(cfg)
    x, y = data.batch_at(realnet.BatchOrder(len(data.train), cfg.batch_size, cfg.data_seed), 0, "cpu")
    model = trainer.build_model(cfg, data.num_classes)
    expected = {}
    for groups in (1, 2):
        m = copy.deepcopy(model)
        expected[groups] = float(trainer.train_step(m, trainer.build_optimizer(m, cfg), x, y, cfg.lr,
                                                    bn_groups=groups)[0])
    assert abs(expected[1] - expected[2]) > 1e-4  # per-rank BatchNorm is not the global batch's
    args = [f"--{k.replace('_', '-')}={v}" for k, v in kw.items()]

    def torchrun(out, *extra):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "realnet",
               "train", "--out", str(out), *args, *extra]
        return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)

    r = torchrun(tmp_path / "sync", "--steps=2", "--sync-bn=true")  # torch's SyncBatchNorm is GPU-only
    assert r.returncode != 0 and "error: sync_bn needs CUDA devices" in r.stderr
    assert not (tmp_path / "sync").exists()
    out = tmp_path / "ddp"
    for steps in (2, 4):
        r = torchrun(out, f"--steps={steps}", "--schedule-steps=0")
        assert r.returncode == 0, r.stderr[-3000:]
        rows = _rows(out / "metrics.csv")
        assert [int(row["step"]) for row in rows] == list(range(steps)) and list_checkpoints(out)[-1] == steps
        sessions = json.loads((out / "run_info.json").read_text())["sessions"]
        assert sessions[-1]["world_size"] == 2 and len(sessions) == steps // 2
        assert load_checkpoint(checkpoint_path(out, steps))["world_size"] == 2
    assert sessions[-1]["resumed_from"] == 2
    # the global batch of each step is the single-process one, normalised per rank's share
    assert float(rows[0]["train_loss"]) == pytest.approx(expected[2], rel=1e-5)
    # evaluation dealt out to the ranks (6 examples in batches of 4 and 2, one per rank) gives one process's numbers
    for row in _rows(out / "evals.csv"):
        m = trainer.build_model(cfg, data.num_classes)
        trainer.restore_checkpoint(load_checkpoint(checkpoint_path(out, int(row["step"]))), m, rng=False)
        one = trainer.evaluate(m, data.eval_batches("val", cfg.eval_samples, cfg.eval_batch_size, "cpu"))
        assert float(row["val_loss"]) == pytest.approx(one["loss"], rel=1e-6) and float(row["val_acc"]) == one["acc"]
