"""The side-trips the real-network claims read, as requests ``(name, key, options)``.

``name`` is a side-trip of :data:`realnet.sidetrips.SIDETRIPS`, ``key`` its directory under ``OUT/sidetrips``.
The claims (``ctx.sidetrip(*request)``) and the prefetch (:mod:`.prefetching`) build them with the same functions,
so both name the same side-trip; each claim declares the ones it reads (:class:`.context.RealClaim`).
"""
from __future__ import annotations

from .config import RealConfig
from .context import RealContext

__all__ = ["lr_sweep_request", "fixed_batch_request", "averaging_request", "divergence_request",
           "alignment_request", "linear_fit_request", "divergence_eval_steps"]


def lr_sweep_request(cfg: RealConfig, batch_size: int, key: str | None = None) -> tuple[str, str, dict]:
    return "lr-sweep", key or f"lr-sweep-b{batch_size}", dict(
        batch_size=batch_size, heldout_batches=cfg.heldout_batches(batch_size), num_lrs=cfg.sweep_num_lrs)


def fixed_batch_request(ctx: RealContext) -> tuple[str, str, dict]:
    cfg = ctx.cfg
    return "fixed-batch", "fixed-batch", dict(step2=ctx.branch.step2, gd_steps=cfg.fixed_batch_gd_steps,
                                              heldout_batches=cfg.fixed_batch_heldout_batches,
                                              batch_size=cfg.sweep_batch_size, num_alphas=cfg.fixed_batch_alphas)


def averaging_request(cfg: RealConfig) -> tuple[str, str, dict]:
    K = cfg.averaging_steps
    report = sorted({k for k in (1, 3, 10, 30, 100, 300, 1000) if k < K} | {K})  # log-spaced: curves in figures
    return "averaging", "averaging", dict(steps=K, report_steps=report, kernels=list(cfg.averaging_kernels),
                                          train_eval_samples=cfg.eval_samples, val_samples=cfg.eval_samples,
                                          bn_batches=cfg.bn_batches)


def divergence_request(cfg: RealConfig) -> tuple[str, str, dict]:
    """The divergence side-trip shared by fig. 6, fig. 8 and eq. 13 (A, B, H, the lr pairs, the fixed batch)."""
    return "divergence", "divergence", dict(
        steps=cfg.divergence_steps, eval_steps=divergence_eval_steps(cfg.divergence_steps),
        train_eval_samples=cfg.eval_samples, val_samples=cfg.eval_samples, record_every=cfg.divergence_record_every,
        fixed_batch_every=cfg.divergence_record_every, bn_batches=cfg.bn_batches,
        pair_factors=[float(f) for f in cfg.eq13_factors], function_points=cfg.eq13_function_points,
        function_samples=cfg.eq13_function_samples)


def divergence_eval_steps(K: int) -> list[int]:
    """Steps with loss evaluations along the divergence side-trip: 0 and five log-spaced ones ending at K (K = 300:
    3, 9, 30, 95, 300)."""
    return sorted({0} | {max(1, int(round(K * 10 ** (-j / 2)))) for j in range(5)})


def alignment_request(cfg: RealConfig) -> tuple[str, str, dict]:
    return "alignment", "alignment", dict(steps=cfg.alignment_steps, batch_pairs=cfg.alignment_batch_pairs)


def linear_fit_request(ctx: RealContext) -> tuple[str, str, dict]:
    """The linear-fit side-trip (its Hessian sample: ``linear_fit_sample_batches`` batches of the run's size)."""
    from realnet.trainer import load_config

    cfg = ctx.cfg
    sample = cfg.linear_fit_sample_batches * load_config(ctx.run_dir).batch_size
    return "linear-fit", "linear-fit", dict(
        k=cfg.linear_fit_k, sample_size=sample, steps=cfg.linear_fit_steps, lags=cfg.linear_fit_lags,
        kernels=list(cfg.linear_fit_kernels), noise_batches=cfg.linear_fit_noise_batches,
        curvature_batches=cfg.linear_fit_curvature_batches, n_blocks=cfg.linear_fit_blocks)
