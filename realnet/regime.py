r"""The regime of a trajectory at a checkpoint, measured: is it on a plateau, is its training stream memorised, is
a fixed batch fit along a side-trip, what is its gradient noise scale. Numbers only; the rules that decide
whether a claim's premise holds are in :mod:`validation.real.premises`.

* :func:`training_plateau` / :func:`quarter_means` -- mean fresh-batch training loss (``metrics.csv``: the loss
  of the batch of update t at the parameters before it) over the last quarter of the run and over the
  quarter before, and their ratio :class:`Plateau`. A constant-lr run of length N is exactly the first N
  steps of a longer one, so ``length`` evaluates a prefix.
* :class:`Memorisation` (measured by :func:`realnet.probes.memorisation`) -- at checkpoint S: mean loss of
  ``n_batches`` fixed held-out batches (seed
  :data:`realnet.sidetrips.HELDOUT_SEED`, the side-trips' held-out batches) over the mean loss of the
  ``n_batches`` fresh training batches of updates S .. S + n_batches - 1, both seen through the same views
  (``views``: both augmented like the stream when the data set augments fixed batches, else both through the
  evaluation transform), both with batch-statistics BatchNorm (as in training, running statistics untouched)
  at the checkpoint's parameters (eval-mode BN numbers and clean train/validation losses beside it).
* :func:`fixed_batch_change` -- a fixed batch's loss and gradient norm along a side-trip summarised as
  Lemma 2's premise reads them: loss at the end / at the start and the largest change of the gradient norm
  :math:`\max_t \max(r_t, 1/r_t)`, :math:`r_t = \|g_t\| / \|g_0\|` (:class:`FixedBatchChange`).
* :func:`noise_scale_from_gradients` (measured on a run by :func:`realnet.probes.gradient_noise_scale`) -- McCandlish
  et al.'s (2018) simple noise scale
  :math:`B_\text{noise} = \operatorname{tr}\Sigma / |G|^2` at checkpoint S from the gradients of the fresh
  training batches of updates S, S+1, ... (:class:`NoiseScale`).

Pure functions and records, no torch: :mod:`realnet.probes` measures on a run; ``benchmarks/regime_probe.py``
and ``validation`` (the premises shown with every verdict) both use them.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sgdtraj.files import read_csv

__all__ = ["Plateau", "quarter_means", "training_plateau", "Memorisation", "FixedBatchChange",
           "fixed_batch_change", "NoiseScale", "noise_scale_from_gradients"]


@dataclass(frozen=True)
class Plateau:
    """Mean fresh-batch training loss over the quarter [N/2, 3N/4) (``prev_quarter_loss``) and [3N/4, N)
    (``last_quarter_loss``) of the first ``steps`` = N updates; ``ratio`` = last / previous."""

    steps: int
    prev_quarter_loss: float
    last_quarter_loss: float
    ratio: float


def quarter_means(losses) -> Plateau:
    """:class:`Plateau` of a per-update loss series (1-D, length N >= 4)."""
    v = np.asarray(losses, dtype=np.float64).ravel()
    n = v.size
    if n < 4:
        raise ValueError(f"losses must hold at least 4 updates (one per quarter); got {n}")
    prev, last = float(np.mean(v[n // 2: 3 * n // 4])), float(np.mean(v[3 * n // 4:]))
    return Plateau(steps=int(n), prev_quarter_loss=prev, last_quarter_loss=last,
                   ratio=last / prev if prev > 0 else math.nan)


def training_plateau(run_dir, length: int | None = None) -> Plateau:
    """:func:`quarter_means` of the run's ``metrics.csv`` ``train_loss`` (its first ``length`` rows if given)."""
    rows = read_csv(Path(run_dir) / "metrics.csv")
    if length is not None:
        if not 4 <= length <= len(rows):
            raise ValueError(f"length must be in [4, {len(rows)}] (the run's logged updates); got {length}")
        rows = rows[:length]
    return quarter_means([float(r["train_loss"]) for r in rows])


@dataclass(frozen=True)
class Memorisation:
    """Held-out vs fresh training-batch loss at checkpoint ``step`` (see the module docstring).

    ratio = heldout_loss / fresh_train_loss (batch-statistics BN); ``*_eval_bn``: the same with eval-mode BN
    (the checkpoint's running statistics). views: what both sides were seen through -- ``"augmented"`` (the
    training augmentation on held-out and fresh batches) or ``"clean"`` (the evaluation transform on both);
    ``""`` in records written before it was recorded. clean_*: unaugmented training subset / validation split in
    eval mode (NaN when not measured).
    """

    step: int
    n_batches: int
    batch_size: int
    heldout_loss: float
    fresh_train_loss: float
    ratio: float
    heldout_loss_eval_bn: float
    fresh_train_loss_eval_bn: float
    ratio_eval_bn: float
    heldout_augmented: bool
    views: str = ""
    clean_train_loss: float = math.nan
    clean_train_acc: float = math.nan
    clean_val_loss: float = math.nan
    clean_val_acc: float = math.nan

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class FixedBatchChange:
    """A fixed batch along one side-trip: loss at the start / end, the smallest loss reached, and its gradient
    norm's largest change ``max_t max(r_t, 1/r_t)`` and end ratio ``r_K`` (``r_t = |g_t| / |g_0|``) over
    ``n_points`` recorded steps."""

    loss_start: float
    loss_end: float
    loss_end_over_start: float
    loss_min_over_start: float
    gradnorm_max_change: float
    gradnorm_end_ratio: float
    n_points: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def fixed_batch_change(loss, grad_norm) -> FixedBatchChange:
    """:class:`FixedBatchChange` from a fixed batch's loss and gradient norm (absolute, or already divided by
    the first) at recorded steps ``t_0 = 0 < t_1 < ... < t_n = K`` (1-D arrays of equal length >= 2)."""
    loss = np.asarray(loss, dtype=np.float64).ravel()
    gn = np.asarray(grad_norm, dtype=np.float64).ravel()
    if loss.size < 2 or loss.size != gn.size:
        raise ValueError(f"loss and grad_norm must be 1-D of equal length >= 2; got {loss.size} and {gn.size}")
    r = gn / gn[0]
    with np.errstate(divide="ignore"):
        change = float(np.max(np.maximum(r, 1.0 / r)))
    return FixedBatchChange(loss_start=float(loss[0]), loss_end=float(loss[-1]),
                            loss_end_over_start=float(loss[-1] / loss[0]),
                            loss_min_over_start=float(loss.min() / loss[0]), gradnorm_max_change=change,
                            gradnorm_end_ratio=float(r[-1]), n_points=int(loss.size))


@dataclass(frozen=True)
class NoiseScale:
    r"""The simple gradient noise scale at checkpoint ``step`` from ``n_batches`` batch gradients of size
    ``batch_size``: ``trace_sigma`` (:math:`\operatorname{tr}\Sigma`, per-example, unbiased: b times the
    batch gradients' sample variance), ``grad_sq_norm`` (:math:`|G|^2`, unbiased: :math:`|\bar g|^2 - V/n`),
    ``b_noise`` = their ratio (inf when the unbiased :math:`|G|^2 \le 0`: the mean gradient is not resolved),
    ``mean_pair_cosine`` (mean cosine between different batches' gradients) and ``b_noise_from_cosine`` =
    :math:`b (1/c - 1)` (the same scale read from the cosines)."""

    step: int
    batch_size: int
    n_batches: int
    trace_sigma: float
    grad_sq_norm: float
    b_noise: float
    mean_pair_cosine: float
    b_noise_from_cosine: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def noise_scale_from_gradients(grads, batch_size: int, step: int = 0) -> NoiseScale:
    """:class:`NoiseScale` from ``grads`` (n x P array or tensor: one batch gradient of ``batch_size`` examples
    per row, n >= 2), in float64."""
    g = np.asarray(grads, dtype=np.float64)
    if g.ndim != 2 or g.shape[0] < 2:
        raise ValueError(f"grads must be an (n >= 2) x P array; got shape {g.shape}")
    n, b = g.shape[0], int(batch_size)
    mean = g.mean(0)
    var = float(((g - mean) ** 2).sum(1).sum() / (n - 1))  # E|g_b - G|^2 = tr(Sigma) / b
    g2 = float(mean @ mean - var / n)
    tr = b * var
    unit = g / np.linalg.norm(g, axis=1, keepdims=True)
    cos = unit @ unit.T
    c = float(cos[np.triu_indices(n, 1)].mean())
    return NoiseScale(step=int(step), batch_size=b, n_batches=n, trace_sigma=tr, grad_sq_norm=g2,
                      b_noise=tr / g2 if g2 > 0 else math.inf, mean_pair_cosine=c,
                      b_noise_from_cosine=b * (1.0 / c - 1.0) if c > 0 else math.inf)
