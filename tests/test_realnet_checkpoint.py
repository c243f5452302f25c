"""realnet.checkpoint: RNG states restored through the host from any device."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from realnet import checkpoint as ck


class ForeignDevice(torch.Tensor):
    """A tensor that behaves like one on an accelerator: ``.numpy()`` is refused (as for CUDA tensors),
    ``.cpu()`` gives the host copy."""

    def numpy(self, *a, **k):
        raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() first.")

    def cpu(self, *a, **k):
        return self.as_subclass(torch.Tensor).clone()


def on_foreign_device(tree):
    """Every tensor of a checkpoint tree as a :class:`ForeignDevice` tensor (a fake device map)."""
    if isinstance(tree, torch.Tensor):
        return tree.clone().as_subclass(ForeignDevice)
    if isinstance(tree, dict):
        return {k: on_foreign_device(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(on_foreign_device(v) for v in tree)
    return tree


def _draws():
    return torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)]


def test_rng_state_restores_from_another_device_and_meta_is_refused(tmp_path):
    torch.manual_seed(3)
    np.random.seed(4)
    random.seed(5)
    np.random.randn()  # a cached gaussian in numpy's state
    p = ck.save_checkpoint(ck.checkpoint_path(tmp_path, 1), {"step": 1, "rng": ck.capture_rng_state()})
    expected = _draws()
    rng = on_foreign_device(ck.load_checkpoint(p)["rng"])
    with pytest.raises(TypeError, match="cuda"):  # what the old restore did: .numpy() on a device tensor
        rng["numpy"]["key"].numpy()
    torch.manual_seed(99)
    np.random.seed(99)
    ck.restore_rng_state(rng)
    got = _draws()
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]

    meta = ck.load_checkpoint(p, map_location="meta")["rng"]
    assert meta["torch"].device.type == "meta"
    with pytest.raises(ck.CheckpointError, match="meta device.*map_location='cpu'"):
        ck.restore_rng_state(meta)


def test_retention_rule_writes_keeps_and_plans_disk(tmp_path):
    rule = ck.RetentionRule(every=100, keep_every=1000, listed=frozenset({750}), branches=frozenset({2000}),
                            window=200, last=3050)
    written = rule.written(0, 3050)
    assert written[:3] == [100, 200, 300] and 750 in written and written[-1] == 3050 and len(written) == 32
    kept = [s for s in written if rule.keeps(s)]
    assert kept == [750, 1000, 1800, 1900, 2000, 2100, 2200, 3000, 3050]
    assert rule.written(2950, 3050) == [3000, 3050] and rule.writes(0) and not rule.writes(150)
    plan = ck.plan_disk(rule, 0, 3050, 1000, tmp_path / "not-yet")
    assert (plan.written, plan.kept, plan.peak_bytes) == (32, 9, 11 * 1000)  # + the two unkept in flight
    assert plan.free_bytes > 0 and "32 written, 9 kept" in plan.line(tmp_path)
    keep_all = rule._replace(keep_every=0)
    assert ck.plan_disk(keep_all, 0, 3050, 10, tmp_path).peak_bytes == 32 * 10


def test_background_writer_prunes_after_the_next_is_on_disk_and_reports_errors(tmp_path, monkeypatch):
    rule = ck.RetentionRule(every=2, keep_every=4, listed=frozenset(), branches=frozenset(), window=0, last=8)
    w = ck.CheckpointWriter(tmp_path, rule)
    weights = torch.arange(4.0)
    w.submit(2, {"step": 2, "model": {"w": weights}})
    weights += 1  # the snapshot was taken: later changes do not reach the file
    w.wait()
    assert ck.list_checkpoints(tmp_path) == [2]
    assert torch.equal(ck.load_checkpoint(ck.checkpoint_path(tmp_path, 2))["model"]["w"], torch.arange(4.0))
    real = ck.save_checkpoint

    def disk_full(path, payload):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck, "save_checkpoint", disk_full)
    w.submit(4, {"step": 4})
    with pytest.raises(OSError, match="No space left"):
        w.wait()
    assert ck.list_checkpoints(tmp_path) == [2]  # the last good checkpoint stays
    monkeypatch.setattr(ck, "save_checkpoint", real)
    w.submit(4, {"step": 4})
    w.submit(6, {"step": 6})
    w.close()
    assert ck.list_checkpoints(tmp_path) == [4, 6]  # 2 went once 4 was written; 6 stays until 8 is
