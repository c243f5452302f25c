"""Measurements of a run at a checkpoint that branch off it like a side-trip (same run context, batches and
seeds): memorisation (held-out vs fresh training batches) and the gradient noise scale. The numbers they return
are the typed records of :mod:`realnet.regime`; the rules that judge them are :mod:`validation.real.premises`'.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np

from .data import BatchOrder
from .regime import Memorisation, NoiseScale, noise_scale_from_gradients
from .sidetrips import RunContext, SideTripOptions, batch_grad, functional_model, grad_vector
from .trainer import deterministic_mode, evaluate

__all__ = ["memorisation", "gradient_noise_scale"]


@contextlib.contextmanager
def _at_checkpoint(run_dir, step: int, device: str, threads: int, deterministic: bool | None):
    """(context, branch at ``step``, options) of ``run_dir`` under the side-trips' determinism rule
    (deterministic on CPU unless told otherwise), on ``threads`` torch threads."""
    opts = SideTripOptions(device=device, threads=threads, deterministic=deterministic, progress=False)
    with deterministic_mode(False, threads):
        ctx = RunContext(run_dir, opts)
        det = ctx.rt.device.type == "cpu" if deterministic is None else deterministic
        with deterministic_mode(det):
            yield ctx, ctx.branch(int(step)), opts


def memorisation(run_dir, step: int, n_batches: int = 10, batch_size: int = 0, clean_samples: int = 0,
                 device: str = "cpu", threads: int = 0, deterministic: bool | None = None) -> Memorisation:
    """Measure :class:`Memorisation` at checkpoint ``step`` of ``run_dir`` (nothing is written).

    Like with like: both sides are seen through the same views, recorded in ``views``. ``"augmented"`` where the
    data set augments its fixed batches (digits with augmentation: the held-out batches get the training
    augmentation with fixed seeds, the fresh batches the run's); ``"clean"`` elsewhere (ImageFolder and CIFAR
    data sets, whose held-out examples are always evaluated through the evaluation transform -- the centre crop):
    the fresh batches hold the examples of updates ``step ..`` through that same evaluation transform, not the
    RandomResizedCrop + flip views the run trained on, so a clean ``fresh_train_loss`` is not the logged loss.
    With batch-statistics BatchNorm every batch is normalised in the run's per-rank groups (a DDP run without
    SyncBN: each rank's share), so the augmented fresh loss of update S is the one training logged.

    n_batches: held-out and fresh batches (10 each). batch_size: 0 = the run's (held-out batches capped at the
    held-out split's size). clean_samples: examples of the clean training / validation evaluation (0 = skip).
    """
    if n_batches < 1:
        raise ValueError(f"n_batches must be an integer >= 1; got {n_batches}")
    with _at_checkpoint(run_dir, step, device, threads, deterministic) as (ctx, br, opts):
        B = int(batch_size) or ctx.cfg.batch_size
        augmented = bool(ctx.data.augment_fixed)
        held = ctx.heldout(n_batches, min(B, len(ctx.data.heldout)))
        order = ctx.order if B == ctx.cfg.batch_size else BatchOrder(len(ctx.data.train), B, ctx.cfg.data_seed)
        fresh = [ctx.data.batch_at(order, int(step) + i, ctx.rt.device, augment=ctx.cfg.augment and augmented)
                 for i in range(n_batches)]
        held, fresh = ctx.ghost_groups(held), ctx.ghost_groups(fresh)
        out = {}
        for key, tm in (("", True), ("_eval_bn", False)):
            h = evaluate(br.model, held, ctx.rt, train_mode_bn=tm)["loss"]
            f = evaluate(br.model, fresh, ctx.rt, train_mode_bn=tm)["loss"]
            out.update({f"heldout_loss{key}": h, f"fresh_train_loss{key}": f,
                        f"ratio{key}": h / f if f > 0 else math.nan})
        if clean_samples:
            bs = opts.eval_batch_size
            tr = evaluate(br.model, ctx.data.eval_batches("train", clean_samples, bs, ctx.rt.device), ctx.rt)
            va = evaluate(br.model, ctx.data.eval_batches("val", clean_samples, bs, ctx.rt.device), ctx.rt)
            out.update(clean_train_loss=tr["loss"], clean_train_acc=tr["acc"], clean_val_loss=va["loss"],
                       clean_val_acc=va["acc"])
    return Memorisation(step=int(step), n_batches=int(n_batches), batch_size=B,
                        heldout_augmented=augmented, views="augmented" if augmented else "clean", **out)


def gradient_noise_scale(run_dir, step: int, n_batches: int = 16, batch_size: int = 0, device: str = "cpu",
                         threads: int = 0, deterministic: bool | None = None) -> NoiseScale:
    """Measure :class:`NoiseScale` at checkpoint ``step`` of ``run_dir`` from the loss gradients of the fresh
    training batches of updates ``step .. step + n_batches - 1`` (batch-statistics BatchNorm in the run's per-rank
    groups, as in training; batch_size 0 = the run's). Nothing is written."""
    if n_batches < 2:
        raise ValueError(f"n_batches must be an integer >= 2; got {n_batches}")
    with _at_checkpoint(run_dir, step, device, threads, deterministic) as (ctx, br, opts):
        B = int(batch_size) or ctx.cfg.batch_size
        fmodel, _ = functional_model(br.model, "batch")
        params = dict(br.model.named_parameters())
        rows = []
        for i in range(n_batches):
            x, y = ctx.batch_at(int(step) + i, B)
            _, g = batch_grad(fmodel, params, x, y, ctx.rt, plan=ctx.batch_plan(opts))
            rows.append(grad_vector(g).double().cpu().numpy())
    return noise_scale_from_gradients(np.stack(rows), B, step)
