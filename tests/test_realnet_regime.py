"""realnet.regime: the premises' measurements against independent ground truth."""
from __future__ import annotations

import csv

import numpy as np
import pytest

import realnet
from realnet.config import TrainConfig
from realnet.regime import fixed_batch_change, memorisation, quarter_means, training_plateau


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
