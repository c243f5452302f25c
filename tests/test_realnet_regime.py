"""realnet.regime: the premises' measurements against independent ground truth."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

import realnet
from realnet.config import TrainConfig
from realnet.probes import memorisation
from realnet.regime import fixed_batch_change, quarter_means, training_plateau


@pytest.fixture(scope="module")
def aug_run(tmp_path_factory):
    """ResNet-20 (width 4) trained 40 steps on augmented digits; checkpoints every 10 steps."""
    run = tmp_path_factory.mktemp("regime") / "run"
    realnet.train(TrainConfig(dataset="digits", width=4, steps=40, batch_size=16, lr=0.05, augment_strength=1.5,
                              checkpoint_every=10, eval_every=20, progress=False, threads=1), run)
    return run


def _train_losses(run):
    with open(run / "metrics.csv", newline="") as fh:
        return [float(r["train_loss"]) for r in csv.DictReader(fh)]


def test_quarter_means_by_hand():
    p = quarter_means([9, 9, 9, 9, 2, 2, 4, 4])  # quarters [4, 6) and [6, 8)
    assert (p.steps, p.prev_quarter_loss, p.last_quarter_loss, p.ratio) == (8, 2.0, 4.0, 2.0)
    p = quarter_means(np.arange(1.0, 11.0))  # N = 10: [5, 7) -> 6.5, [7, 10) -> 9
    assert p.prev_quarter_loss == 6.5 and p.last_quarter_loss == 9.0
    with pytest.raises(ValueError, match="at least 4 updates"):
        quarter_means([1.0, 2.0, 3.0])


def test_training_plateau_reads_metrics(aug_run):
    losses = _train_losses(aug_run)
    assert len(losses) == 40
    p = training_plateau(aug_run)
    assert p.prev_quarter_loss == pytest.approx(np.mean(losses[20:30]))
    assert p.last_quarter_loss == pytest.approx(np.mean(losses[30:40]))
    q = training_plateau(aug_run, length=20)  # a prefix
    assert q.ratio == pytest.approx(np.mean(losses[15:20]) / np.mean(losses[10:15]))
    with pytest.raises(ValueError, match=r"length must be in \[4, 40\]"):
        training_plateau(aug_run, length=41)


def test_memorisation_fresh_batch_is_the_logged_loss(aug_run):
    """The fresh batch of update S at theta_S is exactly what training logged for update S (same batch, same
    parameters, batch-statistics BN): an independent record of the number (b) uses."""
    losses = _train_losses(aug_run)
    m = memorisation(aug_run, 30, n_batches=1, threads=1)
    assert m.fresh_train_loss == pytest.approx(losses[30], rel=1e-5)
    assert m.heldout_augmented and m.batch_size == 16 and np.isnan(m.clean_val_loss)
    m3 = memorisation(aug_run, 30, n_batches=3, clean_samples=64, threads=1)
    assert m3.ratio == pytest.approx(m3.heldout_loss / m3.fresh_train_loss)
    assert 0 <= m3.clean_val_acc <= 1 and m3.clean_train_loss > 0 and m3.ratio_eval_bn > 0
    # held-out batches: the side-trips' (seed HELDOUT_SEED), evaluated independently
    from realnet.checkpoint import find_checkpoint
    from realnet.sidetrips import HELDOUT_SEED
    from realnet.trainer import build_model, evaluate, load_config, restore_checkpoint

    cfg = load_config(aug_run)
    data = realnet.build_data(cfg)
    model = build_model(cfg, data.num_classes)
    restore_checkpoint(realnet.load_checkpoint(find_checkpoint(aug_run, 30)), model, rng=False)
    held = data.fixed_batches("heldout", 3, 16, HELDOUT_SEED, "cpu")
    assert m3.heldout_loss == pytest.approx(evaluate(model, held, train_mode_bn=True)["loss"], rel=1e-6)


def test_fixed_batch_change_by_hand():
    c = fixed_batch_change([2.0, 1.5, 1.0, 1.2], [4.0, 2.0, 9.0, 6.0])
    assert c.loss_end_over_start == 0.6 and c.loss_min_over_start == 0.5
    assert c.gradnorm_max_change == 2.25 and c.gradnorm_end_ratio == 1.5 and c.n_points == 4
    assert fixed_batch_change([1.0, 1.0], [1.0, 0.25]).gradnorm_max_change == 4.0  # a fall counts like a rise
    with pytest.raises(ValueError, match="equal length"):
        fixed_batch_change([1.0, 2.0], [1.0])


def test_noise_scale_recovers_a_known_scale():
    """Batch gradients g_i = G + e_i / sqrt(b), e_i ~ N(0, Sigma) per example: the estimate of tr(Sigma) / |G|^2
    falls within 4 standard errors of the truth (seeded; false-alarm rate < 1e-4), and the cosine estimate
    b (1/c - 1) agrees within 20 %."""
    from realnet.regime import noise_scale_from_gradients

    rng = np.random.default_rng(3)
    P, n, b = 4000, 400, 8
    G = rng.normal(size=P) * 0.05
    sd = rng.uniform(0.5, 1.5, size=P)  # Sigma = diag(sd^2)
    truth = float((sd ** 2).sum() / (G @ G))
    g = G + rng.normal(size=(n, P)) * sd / math.sqrt(b)
    ns = noise_scale_from_gradients(g, b, step=7)
    # relative se of the ratio ~ sqrt(2/n) (variance) plus the |G|^2 estimate's noise
    se_g2 = math.sqrt(4 * (G * G * sd ** 2).sum() / b / n + 2 * (sd ** 4).sum() / b ** 2 / n ** 2)
    rel = math.sqrt(2 / (n - 1) + (se_g2 / (G @ G)) ** 2)
    assert abs(ns.b_noise / truth - 1) < 4 * rel, (ns.b_noise, truth, rel)
    assert ns.trace_sigma == pytest.approx(b * ((g - g.mean(0)) ** 2).sum() / (n - 1))
    assert ns.grad_sq_norm == pytest.approx(g.mean(0) @ g.mean(0) - ns.trace_sigma / b / n)
    assert ns.b_noise_from_cosine == pytest.approx(truth, rel=0.2)
    assert (ns.step, ns.batch_size, ns.n_batches) == (7, 8, n)
    pure_noise = noise_scale_from_gradients(rng.normal(size=(50, 100)), 4)
    assert pure_noise.b_noise == math.inf or pure_noise.b_noise > 100  # no resolvable mean gradient
    with pytest.raises(ValueError, match="n >= 2"):
        noise_scale_from_gradients(np.ones((1, 3)), 4)


def test_gradient_noise_scale_on_a_run(aug_run):
    """On a run: the batch gradients are those of the fresh training batches of updates S, S+1 (batch-statistics
    BN, as in training), recomputed here with plain autograd on the restored model."""
    import torch
    import torch.nn.functional as F

    from realnet.checkpoint import find_checkpoint
    from realnet.probes import gradient_noise_scale
    from realnet.regime import noise_scale_from_gradients
    from realnet.sidetrips._runner import RunContext, SideTripOptions
    from realnet.trainer import build_model, load_config, restore_checkpoint

    ns = gradient_noise_scale(aug_run, 30, n_batches=2, threads=1)
    cfg = load_config(aug_run)
    data = realnet.build_data(cfg)
    model = build_model(cfg, data.num_classes)
    restore_checkpoint(realnet.load_checkpoint(find_checkpoint(aug_run, 30)), model, rng=False)
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.track_running_stats, m.running_mean, m.running_var = False, None, None
    ctx = RunContext(aug_run, SideTripOptions(threads=1, progress=False))
    rows = []
    for t in (30, 31):
        x, y = ctx.batch_at(t)
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double().numpy())
    ref = noise_scale_from_gradients(np.stack(rows), 16, 30)
    assert ns.mean_pair_cosine == pytest.approx(ref.mean_pair_cosine, abs=1e-4)
    assert ns.trace_sigma == pytest.approx(ref.trace_sigma, rel=1e-3) and ns.batch_size == 16


@pytest.fixture(scope="module")
def jpeg_run(tmp_path_factory):
    """ResNet-20 (width 4) trained 4 steps at 32 px on a generated JPEG ImageFolder (2 classes, 16 training and 4
    held-out examples, RandomResizedCrop + flip), batch 4; as if by 2 ranks from a copy of it."""
    from realnet.synthetic_images import write_image_folder

    root = tmp_path_factory.mktemp("jpeg-regime")
    write_image_folder(root / "data", classes=2, train_per_class=10, val_per_class=3, size=(96, 72), gray=0.2,
                       cmyk=0.1, seed=2)
    run = root / "run"
    realnet.train(TrainConfig(dataset="imagenet", data_dir=str(root / "data"), model="resnet20", width=4,
                              image_size=32, heldout_size=4, batch_size=4, lr=0.02, steps=4, checkpoint_every=2,
                              eval_every=2, eval_samples=6, eval_batch_size=4, progress=False, threads=1), run)
    return run


def _restored(run, step):
    from realnet.checkpoint import find_checkpoint
    from realnet.trainer import build_model, load_config, restore_checkpoint

    cfg = load_config(run)
    data = realnet.build_data(cfg)
    model = build_model(cfg, data.num_classes)
    restore_checkpoint(realnet.load_checkpoint(find_checkpoint(run, step)), model, rng=False)
    return cfg, data, model


def test_memorisation_on_an_image_folder_compares_clean_with_clean(jpeg_run):
    """On an ImageFolder the held-out batches are centre crops, so the fresh training batches are too: the fresh
    loss equals the loss of updates 2, 3's examples through the evaluation transform (recomputed here), not the
    augmented loss training logged; the record says ``views == "clean"``."""
    from realnet.sidetrips import HELDOUT_SEED
    from realnet.trainer import evaluate

    m = memorisation(jpeg_run, 2, n_batches=2, threads=1)
    assert m.views == "clean" and not m.heldout_augmented and m.batch_size == 4
    cfg, data, model = _restored(jpeg_run, 2)
    order = realnet.BatchOrder(len(data.train), 4, cfg.data_seed)
    clean = [next(data.train.iterate([(order.indices(t), None)], train=False, device="cpu")) for t in (2, 3)]
    augmented = [data.batch_at(order, t, "cpu") for t in (2, 3)]
    assert not torch.equal(clean[0][0], augmented[0][0]) and torch.equal(clean[0][1], augmented[0][1])
    assert m.fresh_train_loss == pytest.approx(evaluate(model, clean, train_mode_bn=True)["loss"], rel=1e-5)
    assert m.fresh_train_loss_eval_bn == pytest.approx(evaluate(model, clean)["loss"], rel=1e-5)
    logged = np.mean(_train_losses(jpeg_run)[2:4])  # the augmented views the run trained on
    assert abs(m.fresh_train_loss / logged - 1) > 1e-3
    held = data.fixed_batches("heldout", 2, 4, HELDOUT_SEED, "cpu")
    assert m.heldout_loss == pytest.approx(evaluate(model, held, train_mode_bn=True)["loss"], rel=1e-5)
    assert m.ratio == pytest.approx(m.heldout_loss / m.fresh_train_loss)


def test_memorisation_normalises_per_rank(jpeg_run, tmp_path):
    """On a run whose checkpoints say 2 ranks (no SyncBN), each batch of 4 is normalised as the ranks' shares of
    2 (rank r took positions r, r + 2): the fresh loss is the mean over the shares, not BatchNorm over the 4."""
    import shutil

    from realnet.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint, save_checkpoint
    from realnet.trainer import evaluate

    two = tmp_path / "two"
    shutil.copytree(jpeg_run, two)
    for s in list_checkpoints(two):
        ck = load_checkpoint(checkpoint_path(two, s))
        ck["world_size"] = 2
        save_checkpoint(checkpoint_path(two, s), ck)
    m = memorisation(two, 2, n_batches=1, threads=1)
    cfg, data, model = _restored(two, 2)
    order = realnet.BatchOrder(len(data.train), 4, cfg.data_seed)
    x, y = next(data.train.iterate([(order.indices(2), None)], train=False, device="cpu"))
    shares = evaluate(model, [(x[0::2], y[0::2]), (x[1::2], y[1::2])], train_mode_bn=True)["loss"]
    assert m.fresh_train_loss == pytest.approx(shares, rel=1e-6)
    whole = evaluate(model, [(x, y)], train_mode_bn=True)["loss"]
    assert abs(whole / m.fresh_train_loss - 1) > 1e-3
