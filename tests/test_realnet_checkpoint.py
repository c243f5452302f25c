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
