"""Losses and gradients of batches at points and along lines in parameter space (lr-sweep, fixed-batch, alignment).

* :func:`functional_model`: a copy of a model for ``torch.func.functional_call`` with BatchNorm normalising by
  each batch's own statistics (no running statistics touched), or eval-mode BN with the running statistics;
* :func:`batch_grad`: loss and gradient of one batch at given parameters;
* :func:`batch_losses`: losses at ``theta - c * d`` for many coefficients ``c`` and batches, vmapped over the
  coefficients (``mode="lr"``), over the batches (``"batches"``) or looped (``"loop"``);
* :func:`sweep_line`: the single-step line search of lr-sweep (and fixed-batch's automatic lr).

Every batch is evaluated under a :class:`BatchPlan`: BatchNorm with batch statistics normalises over the
run's per-rank batch (a DDP run without SyncBN normalised each rank's ``batch / world_size`` examples: the
batch is split into those ghost groups and the loss / gradient is the mean over groups, as DDP's), and no
forward pass holds more than ``max_images`` examples (groups are never split: a bound below the group size is
refused; eval-mode BatchNorm splits freely). The default plan (one group, no bound) is the one-shot path.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, replace_all_batch_norm_modules_, vmap

from ..config import ConfigError, check_choice
from ..trainer import Runtime

__all__ = ["functional_model", "batch_grad", "batch_losses", "resolve_batched", "sweep_line", "row_stats",
           "nanargmin", "grad_vector", "BATCHED_MODES", "BatchPlan", "ONE_SHOT"]

BATCHED_MODES = ("auto", "lr", "batches", "loop")


class BatchPlan(NamedTuple):
    """How a batch is cut for evaluation (module docstring)."""

    bn_world: int = 1  # ranks that normalised BatchNorm separately (1: the whole batch, one process or SyncBN)
    max_images: int = 0  # most examples in one forward pass (0: no bound)

    def part_size(self, n: int, batch_stats: bool) -> int:
        """Examples per part of a batch of ``n``: the BatchNorm group with batch statistics (refused when it
        does not divide the batch or exceeds ``max_images``), else at most ``max_images``."""
        if not batch_stats:
            return min(n, self.max_images) if self.max_images else n
        if n % self.bn_world:
            raise ConfigError(f"a batch of {n} cannot be normalised like the run's {self.bn_world} ranks (it does "
                              f"not divide evenly); use a batch_size that is a multiple of {self.bn_world}")
        g = n // self.bn_world
        if self.max_images and g > self.max_images:
            raise ConfigError(f"micro_batch={self.max_images} is smaller than the BatchNorm group of {g} examples (the "
                              f"run's per-rank batch): batch statistics need the whole group in one pass; use "
                              f"micro_batch >= {g} or 0")
        return g

    def parts(self, x: torch.Tensor, y: torch.Tensor, batch_stats: bool):
        """``[(x_k, y_k, weight_k)]``, weights = part size / batch size: with batch statistics the ranks' shares
        (rank ``r`` of ``w`` took positions ``r, r + w, ...``, as :meth:`realnet.data.DataBundle.train_batches`
        deals them), else consecutive parts."""
        n = len(y)
        g = self.part_size(n, batch_stats)
        if g == n:
            return [(x, y, 1.0)]
        if batch_stats:
            w = self.bn_world
            return [(x[r::w], y[r::w], 1.0 / w) for r in range(w)]
        return [(x[i:i + g], y[i:i + g], min(g, n - i) / n) for i in range(0, n, g)]

    def splits(self, n: int, batch_stats: bool) -> bool:
        return self.part_size(n, batch_stats) < n


#: the one-shot plan: every batch in one forward pass, BatchNorm over the whole batch
ONE_SHOT = BatchPlan()


def functional_model(model: nn.Module, bn_mode: str) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A copy of ``model`` for ``functional_call``: BN with batch statistics (no running stats), or
    eval-mode BN with the model's running statistics (returned as the buffers dict)."""
    fm = copy.deepcopy(model)
    if bn_mode == "batch":
        replace_all_batch_norm_modules_(fm)
        fm.train()
        return fm, {}
    fm.eval()
    return fm, {k: v.detach() for k, v in fm.named_buffers()}


def batch_grad(fmodel: nn.Module, params: dict[str, torch.Tensor], x, y, rt: Runtime, plan: BatchPlan = ONE_SHOT):
    """Loss and gradient (dict) of batch ``(x, y)`` at ``params`` through a batch-statistics ``fmodel``; under
    ``plan``, the size-weighted mean over its BatchNorm groups (one backward pass per group)."""
    if plan.splits(len(y), True):
        loss, grads = None, None
        for xk, yk, w in plan.parts(x, y, True):
            lk, gk = batch_grad(fmodel, params, xk, yk, rt)
            loss = lk * w if loss is None else loss + lk * w
            grads = {k: v * w for k, v in gk.items()} if grads is None else {k: grads[k] + v * w
                                                                              for k, v in gk.items()}
        return loss, grads
    p = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    with rt.autocast():
        out = functional_call(fmodel, p, (rt.prep(x),))
    loss = F.cross_entropy(out.float(), y)
    grads = torch.autograd.grad(loss, list(p.values()))
    return loss.detach(), {k: g.detach() for k, g in zip(p, grads)}


def grad_vector(g: dict[str, torch.Tensor]) -> torch.Tensor:
    """A gradient dict as one float32 vector (parameter order)."""
    return torch.cat([v.reshape(-1).float() for v in g.values()])


def resolve_batched(mode: str, model: nn.Module, rt: Runtime) -> str:
    """``auto`` -> ``lr`` below 2M parameters, else ``batches`` on CUDA and ``loop`` on CPU."""
    check_choice("batched", mode, BATCHED_MODES)
    if mode != "auto":
        return mode
    n = sum(p.numel() for p in model.parameters())
    if n < 2_000_000:
        return "lr"
    return "batches" if rt.device.type == "cuda" else "loop"


@torch.no_grad()
def batch_losses(fmodel: nn.Module, buffers: dict, theta: dict[str, torch.Tensor], direction: dict[str, torch.Tensor],
                 coeffs: torch.Tensor, batches: list[tuple[torch.Tensor, torch.Tensor]], rt: Runtime,
                 mode: str = "lr", chunk_size: int = 16, on_progress: Callable[[int], Any] | None = None,
                 plan: BatchPlan = ONE_SHOT) -> torch.Tensor:
    """Losses at ``theta - c * direction`` for every coefficient ``c`` and batch; shape (len(coeffs), len(batches)).

    mode ``lr`` vmaps over coefficients (``chunk_size`` per forward), ``batches`` vmaps over the
    batches (which must share a shape), ``loop`` runs one forward per (coefficient, batch).
    ``on_progress(n)`` is called after each batch (mode ``lr``) or coefficient (other modes).
    ``plan``: each batch's loss is the size-weighted mean over its parts (:class:`BatchPlan`; batch statistics
    when ``buffers`` is empty); the vmapped modes hold at most ``plan.max_images`` examples per forward.
    """
    batch_stats = not buffers
    if not batch_stats and any(plan.splits(len(y), False) for _, y in batches):
        return _independent_losses(fmodel, buffers, theta, direction, coeffs, batches, rt, plan.max_images,
                                   on_progress)
    if any(plan.splits(len(y), batch_stats) for _, y in batches):
        parts, owner = [], []
        for j, (x, y) in enumerate(batches):
            for xk, yk, w in plan.parts(x, y, batch_stats):
                parts.append((xk, yk))
                owner.append((j, w))
        per_part = batch_losses(fmodel, buffers, theta, direction, coeffs, parts, rt, mode, chunk_size, None,
                                BatchPlan(1, plan.max_images))
        out = torch.zeros(len(coeffs), len(batches), device=per_part.device, dtype=per_part.dtype)
        for k, (j, w) in enumerate(owner):
            out[:, j] += per_part[:, k] * w
        if on_progress:
            on_progress(len(batches) if mode == "lr" else len(coeffs))
        return out
    tick = on_progress or (lambda n: None)
    if plan.max_images:
        biggest = max((len(y) for _, y in batches), default=1)
        chunk_size = max(1, min(chunk_size, plan.max_images // max(1, biggest)))
    coeffs = coeffs.to(rt.device, torch.float32)

    def loss_at(c, x, y):
        p = {k: theta[k] - c * direction[k] for k in theta}
        with rt.autocast():
            out = functional_call(fmodel, (p, buffers), (x,))
        return F.cross_entropy(out.float(), y)

    out = torch.empty(len(coeffs), len(batches), device=rt.device)
    xs = [rt.prep(x) for x, _ in batches]
    ys = [y for _, y in batches]
    if mode == "lr":
        for j, (x, y) in enumerate(zip(xs, ys)):
            out[:, j] = vmap(lambda c: loss_at(c, x, y), chunk_size=max(1, chunk_size))(coeffs)
            tick(1)
    elif mode == "batches" and len({tuple(x.shape) for x in xs}) == 1:
        per = max(1, plan.max_images // len(ys[0])) if plan.max_images else len(xs)  # batches per forward
        for i, c in enumerate(coeffs):
            for a in range(0, len(xs), per):
                X, Y = torch.stack(xs[a:a + per]), torch.stack(ys[a:a + per])
                out[i, a:a + per] = vmap(lambda x, y: loss_at(c, x, y))(X, Y)
            tick(1)
    else:
        for i, c in enumerate(coeffs):
            for j, (x, y) in enumerate(zip(xs, ys)):
                out[i, j] = loss_at(c, x, y)
            tick(1)
    return out


@torch.no_grad()
def _independent_losses(fmodel, buffers, theta, direction, coeffs, batches, rt: Runtime, max_images: int,
                        on_progress=None) -> torch.Tensor:
    """:func:`batch_losses` with eval-mode BatchNorm, where examples are independent: all batches' examples in
    forward passes of at most ``max_images``, per-example losses summed per batch."""
    X = torch.cat([x for x, _ in batches])
    Y = torch.cat([y for _, y in batches])
    owner = torch.cat([torch.full((len(y),), j, dtype=torch.long) for j, (_, y) in enumerate(batches)]).to(Y.device)
    sizes = torch.tensor([len(y) for _, y in batches], dtype=torch.float32, device=rt.device)
    out = torch.zeros(len(coeffs), len(batches), device=rt.device)
    for i, c in enumerate(coeffs.to(rt.device, torch.float32)):
        p = {k: theta[k] - c * direction[k] for k in theta}
        for a in range(0, len(Y), max_images):
            with rt.autocast():
                logits = functional_call(fmodel, (p, buffers), (rt.prep(X[a:a + max_images]),))
            per = F.cross_entropy(logits.float(), Y[a:a + max_images], reduction="none")
            out[i].index_add_(0, owner[a:a + max_images], per)
        if on_progress:
            on_progress(1)
    return out / sizes


def sweep_line(ctx, br, train_batch, heldout, lrs: np.ndarray, opts, direction: str = "grad",
               bn_mode: str = "batch", desc: str | None = None) -> tuple[np.ndarray, float, float, str]:
    """Losses after one step ``theta - lr * d`` from branch ``br`` for ``lr`` in ``[0, *lrs]``.

    ``d`` is the gradient of ``train_batch`` (``direction="grad"``) or the optimizer's momentum update with
    weight decay (``"sgd"``). Returns (losses of shape (1 + len(lrs), 1 + len(heldout)) in float64, the
    training batch first; the gradient's norm; the direction's norm; the batching mode used).
    """
    rt = ctx.rt
    plan = ctx.batch_plan(opts)
    gmodel, _ = functional_model(br.model, "batch")
    theta = {k: v.detach() for k, v in br.model.named_parameters()}
    _, g = batch_grad(gmodel, theta, *train_batch, rt, plan=plan)
    grad_norm = float(torch.sqrt(sum((v.double() ** 2).sum() for v in g.values())))
    if direction == "sgd":
        cfg = ctx.cfg
        d = {}
        state = br.optimizer.state
        for (k, p) in br.model.named_parameters():
            gk = g[k] + cfg.weight_decay * p.detach() if cfg.weight_decay else g[k]
            buf = state.get(p, {}).get("momentum_buffer")
            d[k] = gk if (buf is None or cfg.momentum == 0) else cfg.momentum * buf + gk
    else:
        d = g
    dir_norm = float(torch.sqrt(sum((v.double() ** 2).sum() for v in d.values())))
    fmodel, buffers = (gmodel, {}) if bn_mode == "batch" else functional_model(br.model, "running")
    mode = resolve_batched(opts.batched, br.model, rt)
    coeffs = torch.tensor(np.concatenate([[0.0], lrs]), dtype=torch.float32)
    batches = [train_batch] + list(heldout)
    bar = ctx.bar(len(batches) if mode == "lr" else len(coeffs), desc) if desc else None
    losses = batch_losses(fmodel, buffers, theta, d, coeffs, batches, rt, mode, opts.chunk_size,
                          on_progress=bar.update if bar else None, plan=plan).double().cpu().numpy()
    if bar:
        bar.close()
    return losses, grad_norm, dir_norm, mode


def row_stats(row: np.ndarray) -> dict[str, float]:
    """mean, std, min, max of one row (NaN propagates, no warning)."""
    with np.errstate(invalid="ignore"):
        return {"mean": float(np.mean(row)), "std": float(np.std(row)), "min": float(np.min(row)),
                "max": float(np.max(row))}


def nanargmin(v: np.ndarray) -> int:
    """Index of the smallest finite value (0 when none is finite)."""
    w = np.where(np.isfinite(v), v, np.inf)
    return int(np.argmin(w))
