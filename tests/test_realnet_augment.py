"""Digits augmentation (realnet.data.DigitsAugment): determinism, geometry, bit-exact resume and branching,
untouched validation split, augmented fixed held-out batches, and that the augmented images keep the digit."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

import realnet
from realnet.checkpoint import checkpoint_path, load_checkpoint
from realnet.config import ConfigError, TrainConfig, resolve_config
from realnet.data import BatchOrder, DigitsAugment, build_data
from realnet.trainer import (
    build_model,
    build_optimizer,
    deterministic_mode,
    load_config,
    restore_checkpoint,
    train_step,
)

AUG = dict(dataset="digits", augment_strength=1.0)
TINY = dict(**AUG, model="resnet20", width=4, batch_size=16, lr=0.1, progress=False, eval_samples=100, threads=1)


@pytest.fixture(scope="module")
def data():
    return build_data(resolve_config(TrainConfig(**AUG)))


@pytest.fixture(scope="module")
def plain():
    return build_data(resolve_config(TrainConfig()))


def _blob(size=16, cx=5.0, cy=9.0, w=1.2):
    """A Gaussian blob centred at pixel (cx, cy) (x = column), shape (1, 1, size, size)."""
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    return torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * w * w)).view(1, 1, size, size)


def _centroid(img):
    img = img[0, 0].double().clamp_min(0)
    yy, xx = torch.meshgrid(torch.arange(img.shape[0], dtype=torch.float64),
                            torch.arange(img.shape[1], dtype=torch.float64), indexing="ij")
    m = img.sum()
    return float((img * xx).sum() / m), float((img * yy).sum() / m)


# ------------------------------------------------------------------------------------ determinism


def test_batches_are_a_pure_function_of_seed_and_step(data):
    order = BatchOrder(len(data.train), 32, seed=3)
    again = build_data(resolve_config(TrainConfig(**AUG)))  # a fresh bundle (as after a restart)
    order2 = BatchOrder(len(again.train), 32, seed=3)
    for t in (0, 5, 41):
        (x, y), (x2, y2) = data.batch_at(order, t, "cpu"), again.batch_at(order2, t, "cpu")
        assert torch.equal(x, x2) and torch.equal(y, y2)
    # out of order / repeated access gives the same batch (no hidden state)
    assert torch.equal(data.batch_at(order, 41, "cpu")[0], data.batch_at(order, 41, "cpu")[0])
    # another data seed gives other augmentations of the same examples
    x3, _ = data.batch_at(BatchOrder(len(data.train), 32, seed=4), 0, "cpu")
    assert not torch.equal(x3, data.batch_at(order, 0, "cpu")[0])


def test_the_same_example_is_augmented_differently_at_different_steps(data):
    order = BatchOrder(len(data.train), 32, seed=0)
    spe = order.steps_per_epoch
    i0 = order.indices(0)
    # find an example of step 0 again in epoch 1
    later = {int(v): t for t in range(spe, 2 * spe) for v in order.indices(t)}
    ex = next(int(v) for v in i0 if int(v) in later)
    t1 = later[ex]
    a = data.batch_at(order, 0, "cpu")[0][int((i0 == ex).nonzero()[0, 0])]
    i1 = order.indices(t1)
    b = data.batch_at(order, t1, "cpu")[0][int((i1 == ex).nonzero()[0, 0])]
    plain_img = data.train.x[ex]
    assert not torch.equal(a, b)
    assert float((a - plain_img).abs().mean()) > 0.05 and float((b - plain_img).abs().mean()) > 0.05


def test_samples_get_independent_augmentations_that_do_not_depend_on_the_batch():
    aug = DigitsAugment(1.0)
    x = torch.rand(1, 1, 16, 16).expand(6, -1, -1, -1).contiguous()  # one image six times
    seeds = [11, 12, 13, 14, 15, 11]
    out = aug(x, seeds)
    assert torch.equal(out[0], out[5])  # same seed, same result
    for i in range(1, 5):
        assert not torch.equal(out[0], out[i])
    # a sample's augmentation is the same alone, in a sub-batch (a DDP shard) or in the whole batch
    for i in range(6):
        assert torch.equal(aug(x[i:i + 1], seeds[i:i + 1])[0], out[i])
    assert torch.equal(aug(x[1::2], seeds[1::2]), out[1::2])
    assert torch.equal(DigitsAugment(0.0)(x, seeds), x)


# --------------------------------------------------------------------------------------- geometry


def test_translation_and_rotation_move_the_content_as_documented():
    size = 16
    img = _blob(size, cx=5.0, cy=9.0)
    c0 = np.array(_centroid(img))
    centre = (size - 1) / 2
    seeds = [101, 202, 303, 404]
    # translation only: the content moves by -t (normalised) = -t * size / 2 pixels
    tr = DigitsAugment(1.0, rotate_deg=0, log_scale=0, shear_deg=0, elastic=0, noise=0, translate=1.5)
    u, _, _ = tr.draws(seeds, size)
    for j, sd in enumerate(seeds):
        t = u[j, 3:5].numpy() * 1.5 / 4
        got = np.array(_centroid(tr(img, [sd])))
        assert np.allclose(got, c0 - t * size / 2, atol=0.05), (got, c0, t)
    # rotation only: the output at p samples the input at R(a) p, so the content rotates by -a
    rot = DigitsAugment(1.0, rotate_deg=40, log_scale=0, shear_deg=0, translate=0, elastic=0, noise=0)
    u, _, _ = rot.draws(seeds, size)
    for j, sd in enumerate(seeds):
        a = float(u[j, 0]) * math.radians(40)
        v = c0 - centre
        R = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])  # R(-a)
        got = np.array(_centroid(rot(img, [sd])))
        assert np.allclose(got, centre + R @ v, atol=0.1), (got, centre + R @ v)


def test_parameter_draws_have_the_documented_distributions():
    aug = DigitsAugment(1.0)
    u, z, n = aug.draws(list(range(4000)), 16)
    # u ~ U(-1, 1)^5: mean 0 and variance 1/3; 4000 draws, 5-sigma tolerances
    assert np.allclose(u.mean(0).numpy(), 0, atol=5 * (1 / 3 / 4000) ** 0.5)
    assert np.allclose(u.var(0).numpy(), 1 / 3, atol=5 * (4 / 45 / 4000) ** 0.5)
    assert float(u.abs().max()) < 1
    # the smoothed elastic field has unit std before its amplitude (rms displacement = elastic)
    m, r, gnorm = aug._smoother(16)
    e = (m @ z @ m.T) / gnorm
    assert e.shape == (4000, 2, 16, 16) and abs(float(e.std()) - 1) < 0.03
    assert abs(float(n.std()) - 1) < 0.01 and abs(float(n.mean())) < 0.01


def test_bad_augment_settings_are_refused():
    with pytest.raises(ValueError, match="strength must be a finite number >= 0"):
        DigitsAugment(-1.0)
    with pytest.raises(ValueError, match="elastic_sigma must be a finite number > 0"):
        DigitsAugment(1.0, elastic_sigma=0.0)
    with pytest.raises(ConfigError, match=r"augment_strength must be in \[0, 4\]"):
        resolve_config(TrainConfig(augment_strength=-0.5))
    with pytest.raises(ConfigError, match=r"augment_strength must be in \[0, 4\]"):
        resolve_config(TrainConfig(augment_strength=float("nan")))
    with pytest.raises(ConfigError, match="augment_strength applies to dataset 'digits' only"):
        resolve_config(TrainConfig(dataset="cifar10", augment_strength=1.0))


# ------------------------------------------------------------------------------------------ splits


def test_validation_split_is_untouched(data, plain):
    assert torch.equal(data.val.x, plain.val.x) and torch.equal(data.val.y, plain.val.y)
    assert data.val.augment is None
    ev = [x for x, _ in data.eval_batches("val", 300, 64, "cpu")]
    ev0 = [x for x, _ in plain.eval_batches("val", 300, 64, "cpu")]
    assert all(torch.equal(a, b) for a, b in zip(ev, ev0))
    for aug in (None, True):
        vb = data.fixed_batches("val", 2, 32, seed=5, device="cpu", augment=aug)
        vb0 = plain.fixed_batches("val", 2, 32, seed=5, device="cpu")
        assert all(torch.equal(a[0], b[0]) for a, b in zip(vb, vb0))
    # unaugmented views of the train / held-out splits equal the plain data bit for bit
    assert torch.equal(data.train.x, plain.train.x) and torch.equal(data.heldout.x, plain.heldout.x)
    order = BatchOrder(len(data.train), 32, seed=0)
    assert torch.equal(data.batch_at(order, 3, "cpu", augment=False)[0], plain.batch_at(order, 3, "cpu")[0])


def test_heldout_batches_are_augmented_and_fixed(data, plain):
    hb = data.fixed_batches("heldout", 3, 32, seed=1, device="cpu")
    hb0 = plain.fixed_batches("heldout", 3, 32, seed=1, device="cpu")
    again = build_data(resolve_config(TrainConfig(**AUG))).fixed_batches("heldout", 3, 32, seed=1, device="cpu")
    for (x, y), (x0, y0), (x2, y2) in zip(hb, hb0, again):
        assert torch.equal(y, y0)  # the same examples ...
        assert float((x - x0).abs().mean()) > 0.05  # ... augmented
        assert torch.equal(x, x2) and torch.equal(y, y2)  # and the same every time
    other = data.fixed_batches("heldout", 3, 32, seed=2, device="cpu")
    assert not torch.equal(other[0][0], hb[0][0])
    # explicit augment=False gives the plain held-out images
    assert torch.equal(data.fixed_batches("heldout", 1, 32, seed=1, device="cpu", augment=False)[0][0], hb0[0][0])
    # plain digits: fixed batches stay unaugmented (as before)
    assert plain.augment_fixed is False and data.augment_fixed is True


def test_augmented_images_keep_the_digit_and_its_mass(data, plain):
    """Cheap sanity: pixel mass is kept within 10%, and a nearest-class-mean classifier fitted on the plain
    training images still recognises the augmented held-out images far above chance (0.1; template matching is
    not shift-invariant, so far below its accuracy on the plain images; 300 images, the chance level's std is
    0.017; measured accuracies: benchmarks/results/2026-12-07-numbers-from-docstrings.md)."""
    tr = data.train
    mean, std = tr.norm
    hb = data.fixed_batches("heldout", 1, 300, seed=9, device="cpu")[0]
    hb0 = plain.fixed_batches("heldout", 1, 300, seed=9, device="cpu")[0]
    mass = float((hb[0][:, 0] * std + mean).sum()) / float((hb0[0][:, 0] * std + mean).sum())
    assert 0.9 < mass < 1.1, mass
    X = tr.x[:, 0].reshape(len(tr), -1)
    cent = torch.stack([X[tr.y == c].mean(0) for c in range(10)])

    def acc(x, y):
        d = torch.cdist(x[:, 0].reshape(len(x), -1), cent)
        return float((d.argmin(1) == y).float().mean())

    a_plain, a_aug = acc(*hb0), acc(*hb)
    assert a_plain > 0.85 and a_aug > 0.3, (a_plain, a_aug)
    # and shuffling the labels would be caught (chance level)
    assert acc(hb[0], hb[1][torch.randperm(300, generator=torch.Generator().manual_seed(0))]) < 0.2


# -------------------------------------------------------------------- resume and branching (trainer)


def test_config_records_the_augmentation_and_old_runs_stay_plain(tmp_path):
    out = tmp_path / "run"
    realnet.train(TrainConfig(**TINY, steps=2, checkpoint_every=1, eval_every=0), out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["augment_strength"] == 1.0 and cfg["augment"] is True
    ck = load_checkpoint(checkpoint_path(out, 2))
    assert ck["config"]["augment_strength"] == 1.0
    del cfg["augment_strength"]  # a run written before the key existed is plain digits
    (out / "config.json").write_text(json.dumps(cfg))
    assert load_config(out).augment_strength == 0.0


def test_resume_and_branching_are_bit_exact_with_augmentation(tmp_path):
    cfg = TrainConfig(**TINY, steps=10, checkpoint_every=1, eval_every=5)
    ref = tmp_path / "ref"
    realnet.train(cfg, ref)
    res = tmp_path / "resumed"
    realnet.train(dataclasses.replace(cfg, steps=6), res)
    realnet.train(cfg, res)  # continues from the step-6 checkpoint
    a, b = load_checkpoint(checkpoint_path(ref, 10)), load_checkpoint(checkpoint_path(res, 10))
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for i in a["optimizer"]["state"]:
        assert torch.equal(a["optimizer"]["state"][i]["momentum_buffer"], b["optimizer"]["state"][i]["momentum_buffer"])
    ra = (ref / "metrics.csv").read_text().splitlines()
    rb = (res / "metrics.csv").read_text().splitlines()
    strip = lambda rows: [",".join(r.split(",")[:-1]) for r in rows]  # noqa: E731 (drop time_s)
    assert strip(ra) == strip(rb) and len(ra) == 11
    # branching: the batch a side-trip rebuilds for update 7 reproduces the run's update exactly
    rcfg = load_config(ref)
    data = build_data(rcfg)
    order = BatchOrder(len(data.train), rcfg.batch_size, rcfg.data_seed)
    with torch.random.fork_rng(devices=[]):
        model = build_model(rcfg, data.num_classes)
    opt = build_optimizer(model, rcfg)
    restore_checkpoint(load_checkpoint(checkpoint_path(ref, 7)), model, opt, rng=False)
    with deterministic_mode(True, threads=1):  # as the trainer ran it
        x, y = data.batch_at(order, 7, "cpu")
        loss, _ = train_step(model, opt, x, y, rcfg.lr)
    assert float(loss) == float(ra[8].split(",")[3])
    nxt = load_checkpoint(checkpoint_path(ref, 8))["model"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, nxt[k]), k
