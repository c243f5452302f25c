"""Sizes of the real-network checks and of the trajectory trained when no ``--run`` is given.

:class:`RealConfig` is plain data (no torch import); :meth:`RealConfig.for_mode` gives the ``--quick`` and
``--full`` sizes. Thresholds of the claims live beside the claims (one module per family of claims).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = ["RealConfig"]


@dataclass
class RealConfig:
    """Sizes of the real-network checks and the trajectory trained when no ``--run`` is given.

    The quick defaults are the measured recommendation of
    ``benchmarks/results/2026-12-01-regime-measurements.md``: on plain digits the 1,197 training images are
    memorised within ~10 epochs and no premise holds; with per-sample augmentation (strength 1.5), a constant lr
    0.2 and weight decay 1e-3 the fresh-batch loss is quasi-stationary from ~2,000 steps on (last quarter /
    quarter before 0.945 at 2,400 steps), held-out / fresh loss is 1.09 at step 1,800, and a fixed batch is not
    fit along 150-300-step side-trips (loss end/start >= 0.59, gradient norm within x1.76).
    """

    run: str | None = None  # existing run directory (skips training)
    dataset: str = "digits"
    data_dir: str | None = None
    model: str = "resnet20"
    width: int = 16  # resnet20 base width
    steps: int = 3000  # main trajectory length (trained runs): the last replicate's block ends at 2,700
    batch_size: int = 32
    lr: float = 0.2  # constant lr of the main trajectory
    weight_decay: float = 1e-3  # coupled L2 weight decay (shortens the weight norm's relaxation to ~250 steps)
    augment_strength: float = 1.5  # digits: realnet.data.DigitsAugment strength (0 = plain digits; others: 0)
    seed: int = 0  # the job's seed: the trajectory's, and with it every side-trip seed (replicate r: 3 seed + r + 1)
    # replicates: independent side-trips at `replicates` branch points S_r = S_0 + r * spacing, each with its own
    # side-trip seed (fixed held-out / BatchNorm / reference batches); spacing >= the longest trajectory side-trip
    # (divergence), so no two replicates' side-trips use the same training batches
    replicates: int = 3
    branch_fraction: float = 0.6  # S_0 at this fraction of the run (paper: 75k of 100k; here 1,800 of 3,000)
    replicate_spacing_fraction: float = 0.1  # S_{r+1} - S_r (300 of 3,000 steps)
    second_offset_fraction: float = 0.12  # fixed-batch's second checkpoint, later by this fraction (360 steps)
    merge_checkpoint_every: int = 50  # checkpoints inside the replicates' blocks (the post-hoc merge's grid)
    premise_batches: int = 10  # (b): held-out and fresh training batches at the branch point
    sweep_batch_size: int = 128  # fixed-batch's batch (fig. 3); fig. 2 sweeps at the run's own batch size
    sweep_batch_sizes: list = field(default_factory=lambda: [8, 32, 256])  # Fig. 13 (32: also fig. 2's)
    noise_batches: int = 64  # fresh training batches of the gradient noise scale B_noise at the branch point
    sweep_num_lrs: int = 25  # step sizes of each lr-sweep's log grid (1e-4 .. 100, 4 per decade)
    sweep_heldout_batches: int = 10  # held-out batches of each lr-sweep (paper: >= 10) ...
    sweep_heldout_images: int = 768  # ... fewer (>= 3) where this many images are reached (large batches)
    fixed_batch_alphas: int = 7  # interpolation points of fixed-batch (Fig. 3)
    fixed_batch_gd_steps: int = 9  # GD steps on the fixed batch from each checkpoint (paper: 9)
    fixed_batch_heldout_batches: int = 4
    averaging_steps: int = 100  # K of the averaging side-trip
    averaging_kernels: list = field(default_factory=lambda: ["swa", "ema:0.02", "twopoint"])
    bn_batches: int = 10  # update_bn batches before each eval-mode evaluation (averaging, divergence)
    alignment_steps: int = 150  # Fig. 7 side-trips (Lemma 2's premise measured at 150 and 300)
    alignment_batch_pairs: int = 10  # different training batches of the reference cosines (+1)
    divergence_steps: int = 300  # Fig. 6 / 8 and the eq. 13 pairs (the lr/2 loss re-equilibrates in ~300)
    divergence_record_every: int = 10  # distances and Lemma 2's fixed batch recorded every N steps
    # eq. 13 pairs at lr * f besides lr itself: 5 lrs over a factor 16 (3 residual degrees of freedom of the slope)
    eq13_factors: list = field(default_factory=lambda: [0.5, 0.25, 0.125, 0.0625])
    eq13_function_points: int = 6  # steps with the pairs' function-space distance (log-spaced, plus the end)
    eq13_function_samples: int = 256
    # linear-model-fit (realnet.sidetrips.linear_fit): top-k Hessian directions on a fixed sample, curvature and
    # noise on fresh batches, a constant-lr continuation of linear_fit_steps updates (>= the length rule's minimum
    # for lags / kernels / blocks: 1,065 for these; 0 = exactly that minimum)
    linear_fit_k: int = 8
    linear_fit_sample_batches: int = 8  # Hessian sample: this many batches of the run's batch size
    linear_fit_steps: int = 0
    linear_fit_lags: int = 10
    linear_fit_kernels: list = field(default_factory=lambda: ["ema:0.1", "twopoint:20", "swa:20"])
    linear_fit_blocks: int = 10  # jackknife blocks (the replicates carry the verdict's interval; the length rule's
    #   minimum continuation is proportional: 1,065 steps here)
    linear_fit_noise_batches: int = 100
    linear_fit_curvature_batches: int = 16
    controls: str = "default"  # sizes of the controls run with the claims: "default" or "tiny" (tests)
    eval_samples: int = 2048  # train / validation examples per evaluation
    threads: int = 1  # torch threads: one is faster for this small model on 2 shared cores (32 vs 1.5-40 it/s)
    device: str = "auto"

    @classmethod
    def for_mode(cls, mode, run=None, data_dir=None, dataset=None):
        """``quick``: the defaults. ``full``: the same trajectory (its premises are the measured ones) with longer
        side-trips and larger evaluations. ``dataset`` other than digits (with ``--data-dir``): ResNet-34, batch
        128, lr 0.1, weight decay 1e-4, 20,000 steps, no digits augmentation (the loader's crop + flip)."""
        base = cls() if mode == "quick" else cls(averaging_steps=500, alignment_steps=300, divergence_steps=600,
                                                 replicate_spacing_fraction=0.15, steps=4000, branch_fraction=0.45,
                                                 sweep_num_lrs=49, sweep_heldout_images=4096,
                                                 fixed_batch_heldout_batches=10,
                                                 eval_samples=10000, fixed_batch_alphas=21, linear_fit_k=16,
                                                 linear_fit_sample_batches=16,
                                                 linear_fit_kernels=["ema:0.02", "twopoint:100", "swa:100"],
                                                 linear_fit_noise_batches=400, linear_fit_curvature_batches=64)
        if dataset and dataset != "digits":
            base = cls(**{**asdict(base), "dataset": dataset, "model": "resnet34", "batch_size": 128,
                          "steps": 20000, "lr": 0.1, "weight_decay": 1e-4, "augment_strength": 0.0, "threads": 0,
                          "sweep_batch_size": 512, "sweep_batch_sizes": [128, 512, 2048]})
        if run:
            base = cls(**{**asdict(base), **_run_sizes(run)})
        base.run = str(run) if run else None
        base.data_dir = str(data_dir) if data_dir else None
        return base

    def to_dict(self):
        return asdict(self)

    def heldout_batches(self, batch_size: int) -> int:
        """Held-out batches of an lr-sweep at ``batch_size``: ``sweep_heldout_batches``, fewer (>= 3) once they hold
        ``sweep_heldout_images`` images."""
        need = -(-int(self.sweep_heldout_images) // max(1, int(batch_size)))
        return int(min(self.sweep_heldout_batches, max(3, need)))


def _run_sizes(run) -> dict:
    """RealConfig fields from an existing run's own config (:func:`realnet.config.sidetrip_sizes`); digits runs keep
    the digits defaults."""
    from realnet.config import sidetrip_sizes
    from realnet.trainer import load_config

    z = sidetrip_sizes(load_config(run))
    if z.dataset == "digits":
        return {}
    return dict(dataset=z.dataset, model=z.model, batch_size=z.batch_size, lr=z.lr, sweep_batch_size=z.batch_size,
                sweep_batch_sizes=z.sweep_batch_sizes, eval_samples=z.eval_samples, threads=z.threads,
                augment_strength=0.0)
