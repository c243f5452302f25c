r"""Side-trips: experiments that branch off a checkpoint of a main trajectory (paper sec. 3 and 5).

Each side-trip reads a run directory and a checkpointed step ``S``, writes only into its own output
directory (refused if it lies inside the run directory) and returns its summary dict. Python API::

    summary = realnet.lr_sweep(run_dir, step, out_dir, options=None, **overrides)
    # likewise fixed_batch, averaging, alignment, divergence; options are the *Options dataclasses below

CLI: ``python -m realnet sidetrip NAME --run DIR --step S --out OUT [--key=value ...]``.

Conventions shared by all side-trips
-----------------------------------
* ``step`` ``S`` is a checkpoint: the parameters after ``S`` updates, with the momentum buffers of the
  run. "The batch at step t" is the training batch the main trajectory uses for update ``t``
  (:class:`realnet.data.BatchOrder`), so a side-trip from ``S`` that follows the main batch order sees
  exactly the batches of the main trajectory (``t = S, S+1, ...``), including their augmentation.
* SGD side-trip updates use the run's momentum (PyTorch convention) and weight decay; gradient-descent
  steps on a fixed batch (``fixed-batch``) and single steps (``lr-sweep``, ``direction=grad``) use the
  plain loss gradient.
* "Loss on a batch" (lr-sweep, fixed-batch, gradients in alignment) is the cross-entropy with
  BatchNorm normalising by that batch's own statistics (as in training) without touching running
  statistics, unless ``bn_mode=running`` (lr-sweep only: eval-mode BN with the checkpoint's running stats).
* Train / validation loss and accuracy of a *model* (averaging, divergence) are computed in eval mode
  after recomputing the BatchNorm statistics with ``torch.optim.swa_utils.update_bn`` on a fixed set of
  ``bn_batches`` training batches -- for averages, side-trip end points and trajectory points alike, so
  that differences reflect the parameters only. "train" = a fixed subset of ``train_eval_samples``
  training examples (no augmentation); "val" = up to ``val_samples`` examples of the validation split.
* L2 distances are over all trainable parameters (not BatchNorm buffers), in float64.
* Every output directory holds ``config.json`` (side-trip name, run, step, options, run config),
  ``run_info.json`` (time, command, seed, package versions, git hash), ``summary.json`` and CSV files.
  Non-finite numbers are ``null`` in JSON and ``nan``/``inf`` in CSV.

Outputs per side-trip
---------------------
``lr-sweep`` (Fig. 2, 12, 13): one step ``theta - lr * d`` from ``S`` for ``lr`` on a log grid, ``d``
the gradient of the training batch at ``S`` (``direction=grad``; ``sgd``: the momentum update with
weight decay that the optimizer would apply), with ``batch_size`` selectable.

* ``lr_sweep.csv``: ``lr`` (first row ``0`` = start point), ``train_loss`` (the batch ``d`` was computed
  on), ``heldout_mean``, ``heldout_std``, ``heldout_min``, ``heldout_max`` (over the held-out batches).
* ``lr_sweep_heldout.csv``: ``lr``, ``batch``, ``loss`` -- every held-out batch separately.
* ``summary.json``: ``train_start_loss``, ``train_min_loss``, ``best_lr_train``, ``heldout_start_loss``,
  ``heldout_min_loss``, ``best_lr_heldout``, ``train_loss_at_best_heldout_lr``,
  ``heldout_loss_at_best_train_lr``, ``heldout_to_train_min_ratio``, ``grad_norm``, ``direction_norm``,
  ``batch_size``, ``n_heldout_batches``, ``n_forward_passes``, ``wall_s``, ``batched``.

``fixed-batch`` (Fig. 3): from checkpoints ``S`` and ``step2``, ``gd_steps`` steps of gradient descent
on one fixed training batch (the batch at step ``S``) with learning rate ``lr`` (``None``: the best
single-step lr on that batch from ``S``); losses along ``(1-alpha) P1_j + alpha P2_j``.

* ``fixed_batch.csv``: ``gd_step`` j, ``alpha``, ``train_loss``, ``heldout_mean``, ``heldout_std``,
  ``heldout_min``, ``heldout_max``.
* ``fixed_batch_endpoints.csv``: ``gd_step``, ``checkpoint`` (S or step2), ``train_loss``,
  ``heldout_mean``, ``distance_between`` (``||P1_j - P2_j||``), ``distance_from_start``.
* ``summary.json``: ``lr``, ``gd_steps``, ``train_loss_first``/``train_loss_second`` (per j),
  ``heldout_loss_first``/``heldout_loss_second``, ``train_barrier``/``heldout_barrier`` (per j:
  max over alpha in [0, 1] minus the larger end point), ``distance_between`` (per j).

``averaging`` (Fig. 1, 5, 10, 14): continue the main trajectory from ``S`` for ``steps`` = K updates at a
constant ``lr`` while tracking averages with ``torch.optim.swa_utils.AveragedModel``; for every kernel
and reported step ``k`` an equivalent side-trip from ``S`` with the same batches and the schedule
``quadsgd.equivalent_schedule(kernel, [lr]*k)`` (Table 1: update ``S+i`` gets ``lr * sum_{m<k-i} mu_m``).
Kernel specs (``kernels``), for a reported step ``k`` (offsets from ``S``; ``theta_S`` is offset 0):

* ``swa``: ``SWA(window=k)`` -- mean of ``theta_{S+1..S+k}`` (Table 1's ``lr (k+1-i)/k``);
  ``swa:W``: the last ``W`` iterates (``W <= k+1``).
* ``ema:a``: EMA with weight ``a`` on the newest iterate, started at ``theta_S``
  (``qs.EMA(a)``; PyTorch's ``get_ema_multi_avg_fn(decay=1-a)``); schedule ``lr (1-(1-a)^r)``.
* ``twopoint``: ``(theta_S + theta_{S+k}) / 2`` (``TwoPoint(delta=k)``, schedule ``lr/2``);
  ``twopoint:D``: ``(theta_{S+k-D} + theta_{S+k}) / 2``.
* ``npoint:n``: ``n`` points spaced ``k // (n-1)`` ending at ``S+k``; ``npoint:n:D``: spacing ``D``.

Outputs:

* ``averaging.csv`` (long format): ``kernel`` (the spec, or ``trajectory`` for the main trajectory point
  ``theta_{S+k}``), ``kernel_repr`` (e.g. ``SWA(window=10)``), ``k``, ``model`` (``average`` |
  ``sidetrip`` | ``trajectory``), ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc``,
  ``l2_to_partner`` (average <-> its equivalent side-trip end point), ``l2_from_start``
  (``||theta - theta_S||``).
* ``trajectory.csv``: ``step`` (absolute), ``offset`` (from S), ``lr``, ``train_loss`` -- the batch losses
  of the continued main trajectory.
* ``schedules.csv``: ``kernel``, ``k``, ``offset`` i (update ``S+i``), ``lr`` -- the equivalent schedules.
* ``summary.json``: ``step``, ``lr``, ``steps``, ``report_steps``, ``bn_recompute``,
  ``trajectory`` = [{``k``, ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc``}, ...] and
  ``kernels`` = {spec: {``spec``, ``results``: [{``k``, ``kernel``, ``average``: {``train_loss``,
  ``train_acc``, ``val_loss``, ``val_acc``}, ``sidetrip``: {same keys}, ``l2_distance``,
  ``l2_average_from_start``, ``l2_sidetrip_from_start``, ``relative_l2``}, ...], ``skipped``: [k, ...]}}.

``alignment`` (Fig. 7): two side-trips from ``S`` over the main batch order for ``steps`` = K updates,
constant ``lr`` and linearly decaying ``lr (K-t)/K``; gradients of one fixed batch along both.

* ``alignment.csv`` (one row per recorded ``t``): ``t``, ``step``, ``lr_constant``, ``lr_linear``,
  ``cos_start_constant``/``cos_start_linear`` (``cos(g_b(theta_t), g_b(theta_S))``),
  ``norm_ratio_constant``/``norm_ratio_linear`` (``||g_b(theta_t)|| / ||g_b(theta_S)||``),
  ``cos_between_schedules``, ``norm_ratio_between_schedules`` (linear / constant),
  ``cos_train_vs_fixed_constant``/``_linear`` (gradient of the training batch of update ``t`` vs the
  fixed batch's, same point), ``fixed_loss_constant``/``_linear``, ``train_loss_constant``/``_linear``,
  ``distance_between_schedules``.
* ``summary.json``: final and extreme values of the above, and ``different_batches`` =
  {``cos_mean``, ``cos_std``, ``cos_abs_max``, ``n_pairs``}: cosines between gradients of different
  training batches at ``S`` (the reference for "nearly orthogonal").

``divergence`` (Fig. 6, 8): from ``S`` three side-trips of ``steps`` = K updates: ``A`` (main batch
order, lr), ``B`` (batch order with data seed ``other_seed``, lr) and ``H`` (main order, lr/2); lr is
constant (``schedule=constant``) or the run's own schedule (``schedule=run``).

* ``divergence.csv`` (per recorded ``t``): ``t``, ``step``, ``lr``, ``dist_A_B``, ``dist_twopoint_H``
  (``||(theta^A_S + theta^A_t)/2 - theta^H_t||``), ``dist_A_H``, ``dist_A_start``, ``dist_B_start``,
  ``dist_H_start``, ``dist_twopoint_start``.
* ``divergence_losses.csv``: ``t``, ``model`` (A | B | H | twopoint), ``train_loss``, ``train_acc``,
  ``val_loss``, ``val_acc`` at ``eval_steps``.
* ``endpoint_distances.csv``: ``t``, ``step``, ``dist_to_B_end``, ``dist_to_A_end`` for snapshots of A
  (the trajectory's points vs an independently trained end point, Fig. 8).
* ``checkpoint_distances.csv``: ``step`` (the run's own checkpoints), ``dist_to_B_end``, ``dist_to_A_end``.
* ``summary.json``: final distances, ``twopoint_to_half_vs_A_B`` ratio and the losses at the last eval step.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, replace_all_batch_norm_modules_, vmap
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn
from tqdm import tqdm

import quadsgd as qs

from .checkpoint import find_checkpoint, list_checkpoints, load_checkpoint
from .config import ConfigError, TrainConfig, build_options
from .data import BatchOrder, DataBundle, build_data
from .files import provenance, write_csv, write_json
from .trainer import (Runtime, build_model, build_optimizer, deterministic_mode, evaluate, load_config, lr_at,
                      make_runtime, restore_checkpoint, train_step)

__all__ = [
    "SideTripOptions", "LrSweepOptions", "FixedBatchOptions", "AveragingOptions", "AlignmentOptions",
    "DivergenceOptions", "lr_sweep", "fixed_batch", "averaging", "alignment", "divergence", "SIDETRIPS",
    "RunContext", "Branch", "parse_kernel", "kernel_at", "batch_losses", "headline", "BN_SEED", "HELDOUT_SEED",
]

BN_SEED = 7_000_003  # seed of the fixed training batches used by update_bn
HELDOUT_SEED = 1_000_003  # seed of the fixed held-out batches


# ---------------------------------------------------------------------------------------------
# options
# ---------------------------------------------------------------------------------------------


@dataclass
class SideTripOptions:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 autocast on cuda, fp32 on cpu) | fp32 | bf16
    data_dir: str | None = None  # override the run's data_dir (if the data moved)
    threads: int = 0  # torch.set_num_threads (0 = torch default)
    deterministic: bool | None = None  # torch.use_deterministic_algorithms (None = auto: on CPU)
    progress: bool = True  # tqdm progress bars
    eval_batch_size: int = 256  # batch size of evaluation passes


@dataclass
class LrSweepOptions(SideTripOptions):
    batch_size: int = 0  # training/held-out batch size (0 = the run's batch size)
    lr_min: float = 1e-4  # smallest step size of the log grid
    lr_max: float = 100.0  # largest step size of the log grid
    num_lrs: int = 49  # points of the log grid (plus lr = 0)
    heldout_batches: int = 10  # fixed held-out batches (>= 10 in the paper)
    direction: str = "grad"  # grad (the batch gradient) | sgd (momentum update incl. weight decay)
    bn_mode: str = "batch"  # batch (each batch's own statistics, as in training) | running (eval mode)
    batched: str = "auto"  # auto | lr (vmap over step sizes) | batches (vmap over held-out batches) | loop
    chunk_size: int = 16  # step sizes per vmapped forward (batched=lr)


@dataclass
class FixedBatchOptions(SideTripOptions):
    step2: int = -1  # the second checkpoint (required)
    gd_steps: int = 9  # gradient-descent steps on the fixed batch from each checkpoint (paper: 9)
    lr: float | None = None  # GD learning rate (None = best single-step lr on the batch from the first checkpoint)
    batch_size: int = 0  # fixed/held-out batch size (0 = the run's)
    num_alphas: int = 21  # interpolation points
    alpha_min: float = 0.0  # interpolation range start (0 = first checkpoint's point)
    alpha_max: float = 1.0  # interpolation range end (1 = second checkpoint's point)
    heldout_batches: int = 10  # fixed held-out batches
    batched: str = "auto"  # see LrSweepOptions.batched
    chunk_size: int = 16


@dataclass
class AveragingOptions(SideTripOptions):
    steps: int = 1000  # K: updates of the continued main trajectory
    report_steps: list[int] = field(default_factory=lambda: [1, 10, 100, 1000])  # k values (<= K; K is added)
    lr: float | None = None  # constant lr of the continuation (None = the run's lr at the checkpoint)
    kernels: list[str] = field(default_factory=lambda: ["swa", "ema:0.01", "twopoint", "npoint:3"])  # see module doc
    bn_batches: int = 10  # fixed training batches for update_bn
    bn_batch_size: int = 0  # their size (0 = the run's batch size)
    train_eval_samples: int = 2048  # training examples for train loss/accuracy
    val_samples: int = 10000  # validation examples for val loss/accuracy
    share_prefix: bool = True  # reuse one side-trip for kernels whose schedules are prefixes of each other


@dataclass
class AlignmentOptions(SideTripOptions):
    steps: int = 1000  # K: length of both side-trips
    lr: float | None = None  # constant lr / start of the linear decay (None = the run's lr at the checkpoint)
    record_every: int = 10  # record gradients every N steps (plus a log-spaced set of early steps)
    fixed_batch: str = "train"  # where the fixed batch b comes from: train | heldout
    batch_size: int = 0  # fixed-batch size (0 = the run's)
    batch_pairs: int = 10  # reference: gradients of batch_pairs + 1 different training batches at S


@dataclass
class DivergenceOptions(SideTripOptions):
    steps: int = 1000  # K: length of the side-trips
    lr: float | None = None  # lr of A and B, H uses lr/2 (None = the run's lr at the checkpoint)
    schedule: str = "constant"  # constant | run (follow the run's schedule from the checkpoint; H: half of it)
    other_seed: int | None = None  # data seed of B's batch order (None = run data_seed + 1)
    record_every: int = 10  # record distances every N steps (plus a log-spaced set)
    eval_steps: list[int] = field(default_factory=lambda: [0, 10, 100, 1000])  # steps with loss/accuracy (<= K)
    snapshots: int = 12  # stored points of A for distances to the end points
    max_checkpoints: int = 50  # run checkpoints compared with the end points (evenly thinned)
    bn_batches: int = 10
    bn_batch_size: int = 0
    train_eval_samples: int = 2048
    val_samples: int = 10000


def _options(cls, options, overrides: dict[str, Any]):
    if options is None:
        return build_options(cls, overrides=overrides)
    if not isinstance(options, cls):
        raise TypeError(f"options must be a {cls.__name__}; got {type(options).__name__}")
    return build_options(cls, overrides=overrides, base=options) if overrides else options


# ---------------------------------------------------------------------------------------------
# run context, branches
# ---------------------------------------------------------------------------------------------


class RunContext:
    """A run directory opened for side-trips: its config, data, batch order and runtime."""

    def __init__(self, run_dir: str | Path, opts: SideTripOptions):
        self.run_dir = Path(run_dir)
        if not self.run_dir.is_dir():
            raise FileNotFoundError(f"run directory not found: {str(self.run_dir)!r}")
        cfg = load_config(self.run_dir)
        if opts.data_dir is not None:
            cfg = dataclasses.replace(cfg, data_dir=opts.data_dir)
        cfg = dataclasses.replace(cfg, num_workers=min(cfg.num_workers, 4))
        self.cfg: TrainConfig = cfg
        self.rt: Runtime = make_runtime(opts.device, opts.precision, None, distributed=False)
        data = build_data(cfg)
        self.order = BatchOrder(len(data.train), cfg.batch_size, cfg.data_seed)
        self.data: DataBundle = data.to(self.rt.device)
        self.progress = opts.progress

    def branch(self, step: int) -> "Branch":
        """Model + optimizer (with momentum buffers) restored from the checkpoint at ``step``."""
        path = find_checkpoint(self.run_dir, step)
        ckpt = load_checkpoint(path, map_location=self.rt.device)
        with torch.random.fork_rng(devices=[]):
            model = build_model(self.cfg, self.data.num_classes).to(self.rt.device)
        if self.rt.channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = build_optimizer(model, self.cfg)
        restore_checkpoint(ckpt, model, opt, rng=False)
        return Branch(self, model, opt, int(step))

    def batches(self, start: int, stop: int, order: BatchOrder | None = None):
        """Training batches of updates ``start .. stop-1`` (main order unless ``order`` is given)."""
        return self.data.train_batches(order or self.order, start, stop, self.rt.device, augment=self.cfg.augment)

    def batch_at(self, step: int, batch_size: int | None = None):
        """The training batch of update ``step``; with another ``batch_size``, the same slot of an order
        with that batch size and the run's data seed."""
        order = self.order
        if batch_size and batch_size != self.cfg.batch_size:
            order = BatchOrder(len(self.data.train), batch_size, self.cfg.data_seed)
        return self.data.batch_at(order, step, self.rt.device, augment=self.cfg.augment)

    def heldout(self, n: int, batch_size: int):
        return self.data.fixed_batches("heldout", n, batch_size, HELDOUT_SEED, self.rt.device)

    def bn_batches(self, n: int, batch_size: int):
        bs = batch_size or self.cfg.batch_size
        bs = min(bs, len(self.data.train))
        return [(self.rt.prep(x), y) for x, y in
                self.data.fixed_batches("train", n, bs, BN_SEED, self.rt.device, augment=self.cfg.augment)]

    def bar(self, total: int, desc: str):
        return tqdm(total=total, desc=desc, disable=not self.progress, dynamic_ncols=True, mininterval=1.0)


class Branch:
    """A side-trip's state: model and SGD optimizer (run's momentum and weight decay), absolute step."""

    def __init__(self, ctx: RunContext, model: nn.Module, optimizer: torch.optim.Optimizer, step: int):
        self.ctx, self.model, self.optimizer, self.step = ctx, model, optimizer, step

    def clone(self) -> "Branch":
        model = copy.deepcopy(self.model)
        opt = build_optimizer(model, self.ctx.cfg)
        opt.load_state_dict(copy.deepcopy(self.optimizer.state_dict()))
        return Branch(self.ctx, model, opt, self.step)

    def sgd_step(self, x, y, lr: float) -> torch.Tensor:
        loss, _ = train_step(self.model, self.optimizer, x, y, lr, self.ctx.rt, self.ctx.cfg.label_smoothing)
        self.step += 1
        return loss

    def flat(self) -> torch.Tensor:
        return _flat(self.model)

    def grad_flat(self) -> torch.Tensor:
        """The loss gradient left in ``.grad`` by the last :meth:`sgd_step` (at the pre-update point)."""
        return torch.cat([p.grad.reshape(-1).float() for p in self.model.parameters()])


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])


def _dist(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm())


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    den = float(a.norm() * b.norm())
    return float(a @ b) / den if den > 0 else float("nan")


def _set_flat(model: nn.Module, vec: torch.Tensor) -> None:
    i = 0
    with torch.no_grad():
        for p in model.parameters():
            n = p.numel()
            p.copy_(vec[i:i + n].view_as(p).to(p.dtype))
            i += n


def _prepare_out(run_dir, out_dir) -> Path:
    run = Path(run_dir).resolve()
    out = Path(out_dir).resolve()
    if out == run or run in out.parents:
        raise ValueError(f"side-trip output {str(out)!r} must not be inside the run directory {str(run)!r} "
                         f"(side-trips never modify their parent run)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _write_meta(out: Path, name: str, ctx: RunContext, step: int, opts) -> None:
    cfg = {"sidetrip": name, "run": str(ctx.run_dir.resolve()), "step": int(step),
           "options": dataclasses.asdict(opts), "run_config": dataclasses.asdict(ctx.cfg)}
    write_json(out / "config.json", cfg)
    write_json(out / "run_info.json", provenance(seed=ctx.cfg.seed, config=cfg, data_seed=ctx.cfg.data_seed,
                                                 device=str(ctx.rt.device),
                                                 precision="bf16" if ctx.rt.amp_dtype else "fp32"))


def _run_lr(ctx: RunContext, step: int, lr: float | None) -> float:
    if lr is None:
        lr = lr_at(ctx.cfg, step)
        if lr <= 0:
            raise ValueError(f"the run's lr at step {step} is {lr}; pass lr > 0 explicitly")
    if not (lr > 0 and math.isfinite(lr)):
        raise ConfigError(f"lr must be a finite number > 0; got {lr!r}")
    return float(lr)


def _positive(name: str, value: int, low: int = 1) -> None:
    if int(value) < low:
        raise ConfigError(f"{name} must be an integer >= {low}; got {value!r}")


def _choice(name: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def _record_points(K: int, every: int, extra=()) -> list[int]:
    pts = set(range(0, K + 1, max(1, every))) | {0, K} | {t for t in extra if 0 <= t <= K}
    if K >= 1:
        pts |= set(int(v) for v in np.unique(np.round(np.geomspace(1, K, num=min(K, 25)))))
    return sorted(pts)


# ---------------------------------------------------------------------------------------------
# batched loss evaluation along a line in parameter space
# ---------------------------------------------------------------------------------------------


def _functional_model(model: nn.Module, bn_mode: str) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A copy of ``model`` for ``functional_call``: BN with batch statistics (no running stats), or
    eval-mode BN with the model's running statistics (returned as the buffers dict)."""
    fm = copy.deepcopy(model)
    if bn_mode == "batch":
        replace_all_batch_norm_modules_(fm)
        fm.train()
        return fm, {}
    fm.eval()
    return fm, {k: v.detach() for k, v in fm.named_buffers()}


def batch_grad(fmodel: nn.Module, params: dict[str, torch.Tensor], x, y, rt: Runtime):
    """Loss and gradient (dict) of batch ``(x, y)`` at ``params`` through a batch-statistics ``fmodel``."""
    p = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    with rt.autocast():
        out = functional_call(fmodel, p, (rt.prep(x),))
    loss = F.cross_entropy(out.float(), y)
    grads = torch.autograd.grad(loss, list(p.values()))
    return loss.detach(), {k: g.detach() for k, g in zip(p, grads)}


def _resolve_batched(mode: str, model: nn.Module, rt: Runtime) -> str:
    _choice("batched", mode, ("auto", "lr", "batches", "loop"))
    if mode != "auto":
        return mode
    n = sum(p.numel() for p in model.parameters())
    if n < 2_000_000:
        return "lr"
    return "batches" if rt.device.type == "cuda" else "loop"


@torch.no_grad()
def batch_losses(fmodel: nn.Module, buffers: dict, theta: dict[str, torch.Tensor], direction: dict[str, torch.Tensor],
                 coeffs: torch.Tensor, batches: list[tuple[torch.Tensor, torch.Tensor]], rt: Runtime,
                 mode: str = "lr", chunk_size: int = 16, on_progress: Callable[[int], Any] | None = None
                 ) -> torch.Tensor:
    """Losses at ``theta - c * direction`` for every coefficient ``c`` and batch; shape (len(coeffs), len(batches)).

    mode ``lr`` vmaps over coefficients (``chunk_size`` per forward), ``batches`` vmaps over the
    batches (which must share a shape), ``loop`` runs one forward per (coefficient, batch).
    ``on_progress(n)`` is called after each batch (mode ``lr``) or coefficient (other modes).
    """
    tick = on_progress or (lambda n: None)
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
        X, Y = torch.stack(xs), torch.stack(ys)
        for i, c in enumerate(coeffs):
            out[i] = vmap(lambda x, y: loss_at(c, x, y))(X, Y)
            tick(1)
    else:
        for i, c in enumerate(coeffs):
            for j, (x, y) in enumerate(zip(xs, ys)):
                out[i, j] = loss_at(c, x, y)
            tick(1)
    return out


def _stats(row: np.ndarray) -> dict[str, float]:
    with np.errstate(invalid="ignore"):
        return {"mean": float(np.mean(row)), "std": float(np.std(row)), "min": float(np.min(row)),
                "max": float(np.max(row))}


def _nanargmin(v: np.ndarray) -> int:
    w = np.where(np.isfinite(v), v, np.inf)
    return int(np.argmin(w))


# ---------------------------------------------------------------------------------------------
# 1. lr-sweep
# ---------------------------------------------------------------------------------------------


def lr_sweep(run_dir, step: int, out_dir, options: LrSweepOptions | None = None, **overrides) -> dict[str, Any]:
    """Single SGD step of many sizes from checkpoint ``step`` (Fig. 2, 12, 13); see the module docstring."""
    opts = _options(LrSweepOptions, options, overrides)
    _choice("direction", opts.direction, ("grad", "sgd"))
    _choice("bn_mode", opts.bn_mode, ("batch", "running"))
    _positive("num_lrs", opts.num_lrs)
    _positive("heldout_batches", opts.heldout_batches)
    if not (0 < opts.lr_min <= opts.lr_max and math.isfinite(opts.lr_max)):
        raise ConfigError(f"need 0 < lr_min <= lr_max < inf; got lr_min={opts.lr_min}, lr_max={opts.lr_max}")
    out = _prepare_out(run_dir, out_dir)
    with deterministic_mode(False, opts.threads):
        ctx = RunContext(run_dir, opts)
        with deterministic_mode(ctx.rt.device.type == "cpu" if opts.deterministic is None else opts.deterministic):
            return _lr_sweep(ctx, int(step), out, opts)


def _sweep_core(ctx: RunContext, br: Branch, train_batch, heldout, lrs: np.ndarray, opts, direction: str = "grad",
                bn_mode: str = "batch", desc: str | None = None):
    rt = ctx.rt
    gmodel, _ = _functional_model(br.model, "batch")
    theta = {k: v.detach() for k, v in br.model.named_parameters()}
    _, g = batch_grad(gmodel, theta, *train_batch, rt)
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
    fmodel, buffers = (gmodel, {}) if bn_mode == "batch" else _functional_model(br.model, "running")
    mode = _resolve_batched(opts.batched, br.model, rt)
    coeffs = torch.tensor(np.concatenate([[0.0], lrs]), dtype=torch.float32)
    batches = [train_batch] + list(heldout)
    bar = ctx.bar(len(batches) if mode == "lr" else len(coeffs), desc) if desc else None
    losses = batch_losses(fmodel, buffers, theta, d, coeffs, batches, rt, mode, opts.chunk_size,
                          on_progress=bar.update if bar else None).double().cpu().numpy()
    if bar:
        bar.close()
    return losses, grad_norm, dir_norm, mode


def _lr_sweep(ctx: RunContext, step: int, out: Path, opts: LrSweepOptions) -> dict[str, Any]:
    t0 = time.perf_counter()
    br = ctx.branch(step)
    B = opts.batch_size or ctx.cfg.batch_size
    _positive("batch_size", B)
    train_batch = ctx.batch_at(step, B)
    heldout = ctx.heldout(opts.heldout_batches, B)
    _write_meta(out, "lr-sweep", ctx, step, opts)
    lrs = np.geomspace(opts.lr_min, opts.lr_max, opts.num_lrs)
    losses, gnorm, dnorm, mode = _sweep_core(ctx, br, train_batch, heldout, lrs, opts, opts.direction, opts.bn_mode,
                                             desc=f"lr-sweep step {step}")
    grid = np.concatenate([[0.0], lrs])
    tr, ho = losses[:, 0], losses[:, 1:]
    with np.errstate(invalid="ignore"):
        ho_mean = ho.mean(1)
    rows = []
    for i, lr in enumerate(grid):
        s = _stats(ho[i])
        rows.append([lr, tr[i], s["mean"], s["std"], s["min"], s["max"]])
    write_csv(out / "lr_sweep.csv", ["lr", "train_loss", "heldout_mean", "heldout_std", "heldout_min", "heldout_max"],
              rows)
    write_csv(out / "lr_sweep_heldout.csv", ["lr", "batch", "loss"],
              [[grid[i], j, ho[i, j]] for i in range(len(grid)) for j in range(ho.shape[1])])
    it, ih = _nanargmin(tr), _nanargmin(ho_mean)
    summary = {
        "sidetrip": "lr-sweep", "run": str(ctx.run_dir), "step": step, "batch_size": B,
        "n_heldout_batches": len(heldout), "direction": opts.direction, "bn_mode": opts.bn_mode,
        "train_start_loss": tr[0], "train_min_loss": tr[it], "best_lr_train": grid[it],
        "heldout_start_loss": ho_mean[0], "heldout_min_loss": ho_mean[ih], "best_lr_heldout": grid[ih],
        "train_loss_at_best_heldout_lr": tr[ih], "heldout_loss_at_best_train_lr": ho_mean[it],
        "heldout_to_train_min_ratio": ho_mean[ih] / tr[it] if tr[it] > 0 else None,
        "grad_norm": gnorm, "direction_norm": dnorm, "lr_grid": [opts.lr_min, opts.lr_max, opts.num_lrs],
        "n_forward_passes": int(len(grid) * (1 + len(heldout))), "batched": mode,
        "wall_s": time.perf_counter() - t0,
    }
    write_json(out / "summary.json", summary)
    return summary


# ---------------------------------------------------------------------------------------------
# 2. fixed-batch
# ---------------------------------------------------------------------------------------------


def fixed_batch(run_dir, step: int, out_dir, options: FixedBatchOptions | None = None, **overrides) -> dict[str, Any]:
    """Gradient descent on one fixed batch from two checkpoints; losses along the interpolations (Fig. 3)."""
    opts = _options(FixedBatchOptions, options, overrides)
    if opts.step2 < 0:
        raise ConfigError("fixed-batch needs step2 (the second checkpoint), e.g. --step2=600")
    if opts.step2 == step:
        raise ConfigError(f"step2 must differ from step ({step})")
    _positive("gd_steps", opts.gd_steps, 0)
    _positive("num_alphas", opts.num_alphas, 2)
    _positive("heldout_batches", opts.heldout_batches)
    if opts.lr is not None and not (opts.lr > 0 and math.isfinite(opts.lr)):
        raise ConfigError(f"lr must be a finite number > 0 (or None for auto); got {opts.lr!r}")
    out = _prepare_out(run_dir, out_dir)
    with deterministic_mode(False, opts.threads):
        ctx = RunContext(run_dir, opts)
        with deterministic_mode(ctx.rt.device.type == "cpu" if opts.deterministic is None else opts.deterministic):
            return _fixed_batch(ctx, int(step), out, opts)


def _fixed_batch(ctx: RunContext, step: int, out: Path, opts: FixedBatchOptions) -> dict[str, Any]:
    rt = ctx.rt
    t0 = time.perf_counter()
    br1, br2 = ctx.branch(step), ctx.branch(opts.step2)
    B = opts.batch_size or ctx.cfg.batch_size
    batch = ctx.batch_at(step, B)
    heldout = ctx.heldout(opts.heldout_batches, B)
    _write_meta(out, "fixed-batch", ctx, step, opts)
    mode = _resolve_batched(opts.batched, br1.model, rt)
    lr = opts.lr
    if lr is None:
        grid = np.geomspace(1e-3, 1e2, 31)
        losses, *_ = _sweep_core(ctx, br1, batch, [], grid, dataclasses.replace(opts, batched=mode))
        lr = float(np.concatenate([[0.0], grid])[_nanargmin(losses[:, 0])]) or float(grid[0])
    fmodel, _ = _functional_model(br1.model, "batch")
    P = []
    for br in (br1, br2):
        p = {k: v.detach().clone() for k, v in br.model.named_parameters()}
        pts = [p]
        for _ in range(opts.gd_steps):
            _, g = batch_grad(fmodel, pts[-1], *batch, rt)
            pts.append({k: pts[-1][k] - lr * g[k] for k in p})
        P.append(pts)
    alphas = np.linspace(opts.alpha_min, opts.alpha_max, opts.num_alphas)
    if not np.any(np.isclose(alphas, 0.0)):
        alphas = np.sort(np.concatenate([alphas, [0.0]]))
    if not np.any(np.isclose(alphas, 1.0)):
        alphas = np.sort(np.concatenate([alphas, [1.0]]))
    coeffs = torch.tensor(alphas, dtype=torch.float32)
    rows, ends = [], []
    summ = {k: [] for k in ("train_loss_first", "train_loss_second", "heldout_loss_first", "heldout_loss_second",
                            "train_barrier", "heldout_barrier", "distance_between")}
    bar = ctx.bar(opts.gd_steps + 1, "fixed-batch")
    start = torch.cat([v.reshape(-1).float() for v in P[0][0].values()])
    start2 = torch.cat([v.reshape(-1).float() for v in P[1][0].values()])
    for j in range(opts.gd_steps + 1):
        p1, p2 = P[0][j], P[1][j]
        d = {k: p1[k] - p2[k] for k in p1}  # theta(alpha) = p1 - alpha * (p1 - p2)
        L = batch_losses(fmodel, {}, p1, d, coeffs, [batch] + list(heldout), rt, mode,
                         opts.chunk_size).double().cpu().numpy()
        tr, ho = L[:, 0], L[:, 1:]
        ho_mean = ho.mean(1)
        for i, a in enumerate(alphas):
            s = _stats(ho[i])
            rows.append([j, a, tr[i], s["mean"], s["std"], s["min"], s["max"]])
        i0, i1 = int(np.argmin(np.abs(alphas))), int(np.argmin(np.abs(alphas - 1.0)))
        inside = (alphas >= 0) & (alphas <= 1)
        f1 = torch.cat([v.reshape(-1).float() for v in p1.values()])
        f2 = torch.cat([v.reshape(-1).float() for v in p2.values()])
        dist = _dist(f1, f2)
        summ["train_loss_first"].append(tr[i0])
        summ["train_loss_second"].append(tr[i1])
        summ["heldout_loss_first"].append(ho_mean[i0])
        summ["heldout_loss_second"].append(ho_mean[i1])
        summ["train_barrier"].append(float(np.max(tr[inside]) - max(tr[i0], tr[i1])))
        summ["heldout_barrier"].append(float(np.max(ho_mean[inside]) - max(ho_mean[i0], ho_mean[i1])))
        summ["distance_between"].append(dist)
        ends.append([j, step, tr[i0], ho_mean[i0], dist, _dist(f1, start)])
        ends.append([j, opts.step2, tr[i1], ho_mean[i1], dist, _dist(f2, start2)])
        bar.update(1)
    bar.close()
    write_csv(out / "fixed_batch.csv", ["gd_step", "alpha", "train_loss", "heldout_mean", "heldout_std", "heldout_min",
                                        "heldout_max"], rows)
    write_csv(out / "fixed_batch_endpoints.csv", ["gd_step", "checkpoint", "train_loss", "heldout_mean",
                                                  "distance_between", "distance_from_start"], ends)
    summary = {"sidetrip": "fixed-batch", "run": str(ctx.run_dir), "step": step, "step2": opts.step2, "lr": lr,
               "lr_auto": opts.lr is None, "gd_steps": opts.gd_steps, "batch_size": B,
               "n_heldout_batches": len(heldout), "alphas": alphas, **summ, "batched": mode,
               "wall_s": time.perf_counter() - t0}
    write_json(out / "summary.json", summary)
    return summary


# ---------------------------------------------------------------------------------------------
# 3. averaging
# ---------------------------------------------------------------------------------------------


def parse_kernel(spec: str) -> tuple[str, tuple]:
    """Parse a kernel spec (``swa``, ``swa:W``, ``ema:a``, ``twopoint``, ``twopoint:D``, ``npoint:n``,
    ``npoint:n:D``) into (kind, args); :class:`ConfigError` for anything else."""
    forms = "swa, swa:W, ema:a, twopoint, twopoint:D, npoint:n, npoint:n:D"
    parts = spec.strip().lower().split(":")
    kind, args = parts[0], parts[1:]
    try:
        if kind == "swa" and len(args) <= 1:
            vals = tuple(int(a) for a in args)
            if vals and vals[0] < 1:
                raise ValueError
            return kind, vals
        if kind == "ema" and len(args) == 1:
            a = float(args[0])
            if not (0 < a <= 1):
                raise ValueError
            return kind, (a,)
        if kind == "twopoint" and len(args) <= 1:
            vals = tuple(int(a) for a in args)
            if vals and vals[0] < 1:
                raise ValueError
            return kind, vals
        if kind == "npoint" and 1 <= len(args) <= 2:
            vals = tuple(int(a) for a in args)
            if vals[0] < 2 or (len(vals) == 2 and vals[1] < 1):
                raise ValueError
            return kind, vals
    except ValueError:
        pass
    raise ConfigError(f"bad kernel spec {spec!r}; use one of: {forms} (W, D >= 1 integers, n >= 2, 0 < a <= 1)")


def kernel_at(spec: str, k: int):
    """The quadsgd kernel that spec ``spec`` denotes at reported step ``k`` (None if it does not fit in
    ``k`` steps, i.e. needs iterates before the checkpoint)."""
    kind, args = parse_kernel(spec)
    if kind == "swa":
        W = args[0] if args else k
        return qs.SWA(W) if W <= k + 1 else None
    if kind == "ema":
        return qs.EMA(args[0])
    if kind == "twopoint":
        D = args[0] if args else k
        return qs.TwoPoint(D) if D <= k else None
    n = args[0]
    if len(args) == 2:
        D = args[1]
    else:
        D = k // (n - 1)
        if D < 1:
            return None
    return qs.NPoint(n, D) if (n - 1) * D <= k else None


def _weighted_avg_fn(weights_chron: np.ndarray) -> Callable:
    cum = np.cumsum(weights_chron)

    def fn(avg: torch.Tensor, cur: torch.Tensor, n_averaged) -> torch.Tensor:
        i = int(n_averaged)
        return avg + (cur - avg) * float(weights_chron[i] / cum[i])
    return fn


@dataclass
class _AvgSpec:
    spec: str
    k: int
    kernel: Any
    schedule: np.ndarray
    avg: AveragedModel | None = None  # finite kernels: fed at `offsets`
    offsets: list[int] = field(default_factory=list)
    vec: torch.Tensor | None = None  # parameters of the average at k
    metrics: dict | None = None


def averaging(run_dir, step: int, out_dir, options: AveragingOptions | None = None, **overrides) -> dict[str, Any]:
    """Averages of the continued trajectory vs their equivalent-schedule side-trips (Fig. 1, 5, 10, 14)."""
    opts = _options(AveragingOptions, options, overrides)
    _positive("steps", opts.steps)
    _positive("bn_batches", opts.bn_batches)
    _positive("train_eval_samples", opts.train_eval_samples)
    _positive("val_samples", opts.val_samples)
    if not opts.kernels:
        raise ConfigError("kernels must name at least one kernel (e.g. swa, ema:0.01, twopoint, npoint:3)")
    for s in opts.kernels:
        parse_kernel(s)
    if len(set(opts.kernels)) != len(opts.kernels):
        raise ConfigError(f"kernels must be distinct; got {opts.kernels}")
    out = _prepare_out(run_dir, out_dir)
    with deterministic_mode(False, opts.threads):
        ctx = RunContext(run_dir, opts)
        with deterministic_mode(ctx.rt.device.type == "cpu" if opts.deterministic is None else opts.deterministic):
            return _averaging(ctx, int(step), out, opts)


def _eval_model(ctx: RunContext, model: nn.Module, bn_batches, opts) -> dict[str, float]:
    m = copy.deepcopy(model)
    update_bn(bn_batches, m)
    tr = evaluate(m, ctx.data.eval_batches("train", opts.train_eval_samples, opts.eval_batch_size, ctx.rt.device), ctx.rt)
    va = evaluate(m, ctx.data.eval_batches("val", opts.val_samples, opts.eval_batch_size, ctx.rt.device), ctx.rt)
    return {"train_loss": tr["loss"], "train_acc": tr["acc"], "val_loss": va["loss"], "val_acc": va["acc"]}


def _averaging(ctx: RunContext, S: int, out: Path, opts: AveragingOptions) -> dict[str, Any]:
    t0 = time.perf_counter()
    K = int(opts.steps)
    lr = _run_lr(ctx, S, opts.lr)
    ks = sorted({int(k) for k in opts.report_steps if 1 <= int(k) <= K} | {K})
    base = ctx.branch(S)
    bn_batches = ctx.bn_batches(opts.bn_batches, opts.bn_batch_size)
    _write_meta(out, "averaging", ctx, S, opts)
    v0 = base.flat()

    specs: list[_AvgSpec] = []
    skipped: dict[str, list[int]] = {s: [] for s in opts.kernels}
    for s in opts.kernels:
        for k in ks:
            kern = kernel_at(s, k)
            if kern is None:
                skipped[s].append(k)
                continue
            specs.append(_AvgSpec(s, k, kern, qs.equivalent_schedule(kern, np.full(k, lr))))
    # trackers on the continued main trajectory
    main = base.clone()
    feed: dict[int, list[_AvgSpec]] = {}
    ema: dict[float, AveragedModel] = {}
    for sp in specs:
        if isinstance(sp.kernel, qs.EMA):
            a = sp.kernel.decay
            if a not in ema:
                ema[a] = AveragedModel(main.model, multi_avg_fn=get_ema_multi_avg_fn(1.0 - a))
            continue
        lags = np.arange(len(sp.kernel.point_weights)) * sp.kernel.stride
        sp.offsets = sorted(int(sp.k - lag) for lag in lags)  # chronological
        w_chron = np.asarray(sp.kernel.point_weights, dtype=np.float64)[::-1]
        sp.avg = AveragedModel(main.model, avg_fn=_weighted_avg_fn(w_chron))
        for o in sp.offsets:
            feed.setdefault(o, []).append(sp)

    def feed_at(offset: int):
        for sp in feed.get(offset, []):
            sp.avg.update_parameters(main.model)
        for avg in ema.values():
            avg.update_parameters(main.model)

    # equivalent side-trips, grouped: one run serves every spec whose schedule is a prefix of its own
    runs: list[tuple[np.ndarray, list[_AvgSpec]]] = []
    for sp in sorted(specs, key=lambda s: -s.k):
        for sched, members in runs:
            if opts.share_prefix and np.array_equal(sched[:sp.k], sp.schedule):
                members.append(sp)
                break
        else:
            runs.append((sp.schedule, [sp]))

    traj_rows, traj_metrics = [], []
    bar = ctx.bar(K + sum(len(s) for s, _ in runs), f"averaging step {S}")
    feed_at(0)
    for j, (x, y) in enumerate(ctx.batches(S, S + K)):
        loss = main.sgd_step(x, y, lr)
        traj_rows.append([S + j, j, lr, loss])
        off = j + 1
        feed_at(off)
        if off in ks:
            m = _eval_model(ctx, main.model, bn_batches, opts)
            traj_metrics.append({"k": off, **m, "l2_from_start": _dist(main.flat(), v0)})
            for sp in specs:
                if sp.k != off:
                    continue
                module = ema[sp.kernel.decay].module if isinstance(sp.kernel, qs.EMA) else sp.avg.module
                sp.vec = _flat(module)
                sp.metrics = _eval_model(ctx, module, bn_batches, opts)
                if sp.avg is not None:
                    sp.avg = None  # free the copy
        bar.update(1)
    traj_rows = [[s, o, l_, float(v)] for s, o, l_, v in traj_rows]

    side_results: dict[int, dict] = {}
    for sched, members in runs:
        br = base.clone()
        by_k: dict[int, list[_AvgSpec]] = {}
        for sp in members:
            by_k.setdefault(sp.k, []).append(sp)
        for i, (x, y) in enumerate(ctx.batches(S, S + len(sched))):
            br.sgd_step(x, y, float(sched[i]))
            if (i + 1) in by_k:
                vec = br.flat()
                met = _eval_model(ctx, br.model, bn_batches, opts)
                for sp in by_k[i + 1]:
                    side_results[id(sp)] = {"vec_dist": _dist(sp.vec, vec), "from_start": _dist(vec, v0),
                                            "metrics": met}
            bar.update(1)
    bar.close()

    kernels_out: dict[str, Any] = {}
    rows, sched_rows = [], []
    for m in traj_metrics:
        rows.append(["trajectory", "Last()", m["k"], "trajectory", m["train_loss"], m["train_acc"], m["val_loss"],
                     m["val_acc"], None, m["l2_from_start"]])
    for s in opts.kernels:
        res = []
        for sp in [p for p in specs if p.spec == s]:
            sr = side_results[id(sp)]
            a_from = _dist(sp.vec, v0)
            res.append({"k": sp.k, "kernel": repr(sp.kernel), "average": sp.metrics, "sidetrip": sr["metrics"],
                        "l2_distance": sr["vec_dist"], "l2_average_from_start": a_from,
                        "l2_sidetrip_from_start": sr["from_start"],
                        "relative_l2": sr["vec_dist"] / a_from if a_from > 0 else None})
            for which, met, frm in (("average", sp.metrics, a_from), ("sidetrip", sr["metrics"], sr["from_start"])):
                rows.append([s, repr(sp.kernel), sp.k, which, met["train_loss"], met["train_acc"], met["val_loss"],
                             met["val_acc"], sr["vec_dist"], frm])
            sched_rows += [[s, sp.k, i, v] for i, v in enumerate(sp.schedule)]
        kernels_out[s] = {"spec": s, "results": res, "skipped": skipped[s]}
    write_csv(out / "averaging.csv", ["kernel", "kernel_repr", "k", "model", "train_loss", "train_acc", "val_loss",
                                      "val_acc", "l2_to_partner", "l2_from_start"], rows)
    write_csv(out / "trajectory.csv", ["step", "offset", "lr", "train_loss"], traj_rows)
    write_csv(out / "schedules.csv", ["kernel", "k", "offset", "lr"], sched_rows)
    summary = {
        "sidetrip": "averaging", "run": str(ctx.run_dir), "step": S, "lr": lr, "steps": K, "report_steps": ks,
        "bn_recompute": {"method": "torch.optim.swa_utils.update_bn", "batches": len(bn_batches),
                         "batch_size": int(len(bn_batches[0][1]))},
        "train_eval_samples": min(opts.train_eval_samples, len(ctx.data.train)),
        "val_samples": min(opts.val_samples, len(ctx.data.val)),
        "trajectory": traj_metrics, "kernels": kernels_out,
        "sidetrip_runs": len(runs), "sidetrip_updates": int(sum(len(s) for s, _ in runs)),
        "wall_s": time.perf_counter() - t0,
    }
    write_json(out / "summary.json", summary)
    return summary


# ---------------------------------------------------------------------------------------------
# 4. alignment
# ---------------------------------------------------------------------------------------------


def alignment(run_dir, step: int, out_dir, options: AlignmentOptions | None = None, **overrides) -> dict[str, Any]:
    """Gradient alignment of a fixed batch along constant / linearly decaying lr side-trips (Fig. 7)."""
    opts = _options(AlignmentOptions, options, overrides)
    _positive("steps", opts.steps)
    _positive("record_every", opts.record_every)
    _positive("batch_pairs", opts.batch_pairs)
    _choice("fixed_batch", opts.fixed_batch, ("train", "heldout"))
    out = _prepare_out(run_dir, out_dir)
    with deterministic_mode(False, opts.threads):
        ctx = RunContext(run_dir, opts)
        with deterministic_mode(ctx.rt.device.type == "cpu" if opts.deterministic is None else opts.deterministic):
            return _alignment(ctx, int(step), out, opts)


def _gvec(g: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.reshape(-1).float() for v in g.values()])


def _alignment(ctx: RunContext, S: int, out: Path, opts: AlignmentOptions) -> dict[str, Any]:
    rt = ctx.rt
    t0 = time.perf_counter()
    K = int(opts.steps)
    lr = _run_lr(ctx, S, opts.lr)
    B = opts.batch_size or ctx.cfg.batch_size
    base = ctx.branch(S)
    _write_meta(out, "alignment", ctx, S, opts)
    fb = ctx.data.fixed_batches(opts.fixed_batch, 1, B, 424_242, rt.device)[0]
    fmodel, _ = _functional_model(base.model, "batch")

    def fixed_grad(br: Branch, batch=fb):
        loss, g = batch_grad(fmodel, dict(br.model.named_parameters()), *batch, rt)
        return float(loss), _gvec(g)

    # reference: gradients of different training batches at S
    ref = ctx.data.fixed_batches("train", opts.batch_pairs + 1, B, 515_151, rt.device)
    gs = [fixed_grad(base, b)[1] for b in ref]
    pair_cos = [_cos(gs[i], gs[j]) for i in range(len(gs)) for j in range(i + 1, len(gs))]

    _, g0 = fixed_grad(base)
    n0 = float(g0.double().norm())
    bc, bl = base.clone(), base.clone()
    rec = set(_record_points(K, opts.record_every))
    rows = []
    bar = ctx.bar(K + 1, f"alignment step {S}")
    it = ctx.batches(S, S + K + 1)
    for t in range(K + 1):
        x, y = next(it)
        lr_c, lr_l = lr, lr * (K - t) / K
        if t in rec:
            fl_c, gc = fixed_grad(bc)
            fl_l, gl = fixed_grad(bl)
            dist_cl = _dist(bc.flat(), bl.flat())
        if t < K:
            tl_c = float(bc.sgd_step(x, y, lr_c))
            tg_c = bc.grad_flat() if t in rec else None
            tl_l = float(bl.sgd_step(x, y, lr_l))
            tg_l = bl.grad_flat() if t in rec else None
        elif t in rec:
            l_, g_ = batch_grad(fmodel, dict(bc.model.named_parameters()), x, y, rt)
            tl_c, tg_c = float(l_), _gvec(g_)
            l_, g_ = batch_grad(fmodel, dict(bl.model.named_parameters()), x, y, rt)
            tl_l, tg_l = float(l_), _gvec(g_)
        if t in rec:
            rows.append({
                "t": t, "step": S + t, "lr_constant": lr_c, "lr_linear": lr_l,
                "cos_start_constant": _cos(gc, g0), "cos_start_linear": _cos(gl, g0),
                "norm_ratio_constant": float(gc.double().norm()) / n0, "norm_ratio_linear": float(gl.double().norm()) / n0,
                "cos_between_schedules": _cos(gc, gl),
                "norm_ratio_between_schedules": float(gl.double().norm()) / max(float(gc.double().norm()), 1e-300),
                "cos_train_vs_fixed_constant": _cos(tg_c, gc), "cos_train_vs_fixed_linear": _cos(tg_l, gl),
                "fixed_loss_constant": fl_c, "fixed_loss_linear": fl_l,
                "train_loss_constant": tl_c, "train_loss_linear": tl_l,
                "distance_between_schedules": dist_cl,
            })
        bar.update(1)
    bar.close()
    cols = ["t", "step", "lr_constant", "lr_linear", "cos_start_constant", "cos_start_linear", "norm_ratio_constant",
            "norm_ratio_linear", "cos_between_schedules", "norm_ratio_between_schedules", "cos_train_vs_fixed_constant",
            "cos_train_vs_fixed_linear", "fixed_loss_constant", "fixed_loss_linear", "train_loss_constant",
            "train_loss_linear", "distance_between_schedules"]
    write_csv(out / "alignment.csv", cols, rows)
    last = rows[-1]
    pc = np.asarray(pair_cos)
    summary = {
        "sidetrip": "alignment", "run": str(ctx.run_dir), "step": S, "lr": lr, "steps": K, "batch_size": B,
        "fixed_batch": opts.fixed_batch, "fixed_grad_norm_start": n0,
        "final": {c: last[c] for c in cols[4:]},
        "min_cos_start_constant": min(r["cos_start_constant"] for r in rows),
        "min_cos_start_linear": min(r["cos_start_linear"] for r in rows),
        "mean_cos_train_vs_fixed": float(np.nanmean([r["cos_train_vs_fixed_constant"] for r in rows])),
        "different_batches": {"cos_mean": float(pc.mean()), "cos_std": float(pc.std()),
                              "cos_abs_max": float(np.abs(pc).max()), "n_pairs": int(len(pc))},
        "wall_s": time.perf_counter() - t0,
    }
    write_json(out / "summary.json", summary)
    return summary


# ---------------------------------------------------------------------------------------------
# 5. divergence
# ---------------------------------------------------------------------------------------------


def divergence(run_dir, step: int, out_dir, options: DivergenceOptions | None = None, **overrides) -> dict[str, Any]:
    """Distances between side-trips with different batch orders / half lr / end points (Fig. 6, 8)."""
    opts = _options(DivergenceOptions, options, overrides)
    _positive("steps", opts.steps)
    _positive("record_every", opts.record_every)
    _positive("snapshots", opts.snapshots, 2)
    _positive("max_checkpoints", opts.max_checkpoints, 0)
    _positive("bn_batches", opts.bn_batches)
    _choice("schedule", opts.schedule, ("constant", "run"))
    out = _prepare_out(run_dir, out_dir)
    with deterministic_mode(False, opts.threads):
        ctx = RunContext(run_dir, opts)
        with deterministic_mode(ctx.rt.device.type == "cpu" if opts.deterministic is None else opts.deterministic):
            return _divergence(ctx, int(step), out, opts)


def _divergence(ctx: RunContext, S: int, out: Path, opts: DivergenceOptions) -> dict[str, Any]:
    t0 = time.perf_counter()
    K = int(opts.steps)
    cfg = ctx.cfg
    if opts.schedule == "constant":
        lr = _run_lr(ctx, S, opts.lr)
        lrs = np.full(K, lr)
    else:
        lr = None
        lrs = np.array([lr_at(cfg, S + j) for j in range(K)])
        if opts.lr is not None:
            raise ConfigError("lr cannot be combined with schedule=run")
    other = cfg.data_seed + 1 if opts.other_seed is None else int(opts.other_seed)
    if other == cfg.data_seed:
        raise ConfigError(f"other_seed must differ from the run's data_seed ({cfg.data_seed})")
    order_b = BatchOrder(len(ctx.data.train), cfg.batch_size, other)
    base = ctx.branch(S)
    bn_batches = ctx.bn_batches(opts.bn_batches, opts.bn_batch_size)
    _write_meta(out, "divergence", ctx, S, opts)
    A, Bb, H = base.clone(), base.clone(), base.clone()
    v0 = base.flat()
    eval_steps = sorted({int(t) for t in opts.eval_steps if 0 <= int(t) <= K} | {K})
    rec = set(_record_points(K, opts.record_every, eval_steps))
    snap_pts = set(int(v) for v in np.unique(np.round(np.geomspace(1, max(K, 1), opts.snapshots - 1)))) | {0, K}
    snaps: dict[int, torch.Tensor] = {}
    rows, loss_rows = [], []
    twop = copy.deepcopy(base.model)
    bar = ctx.bar(K + 1, f"divergence step {S}")
    itA, itB = ctx.batches(S, S + K), ctx.batches(S, S + K, order_b)
    for t in range(K + 1):
        if t in rec or t in snap_pts or t in eval_steps:
            va, vb, vh = A.flat(), Bb.flat(), H.flat()
            vt = (v0 + va) / 2
            if t in rec:
                rows.append({"t": t, "step": S + t, "lr": float(lrs[t]) if t < K else None,
                             "dist_A_B": _dist(va, vb), "dist_twopoint_H": _dist(vt, vh), "dist_A_H": _dist(va, vh),
                             "dist_A_start": _dist(va, v0), "dist_B_start": _dist(vb, v0),
                             "dist_H_start": _dist(vh, v0), "dist_twopoint_start": _dist(vt, v0)})
            if t in snap_pts:
                snaps[t] = va.cpu()
            if t in eval_steps:
                _set_flat(twop, vt)
                for name, model in (("A", A.model), ("B", Bb.model), ("H", H.model), ("twopoint", twop)):
                    loss_rows.append({"t": t, "model": name, **_eval_model(ctx, model, bn_batches, opts)})
        if t < K:
            xa, ya = next(itA)
            xb, yb = next(itB)
            A.sgd_step(xa, ya, float(lrs[t]))
            H.sgd_step(xa, ya, float(lrs[t]) / 2)
            Bb.sgd_step(xb, yb, float(lrs[t]))
        bar.update(1)
    bar.close()
    a_end, b_end = A.flat().cpu(), Bb.flat().cpu()
    ep_rows = [[t, S + t, _dist(v, b_end), _dist(v, a_end)] for t, v in sorted(snaps.items())]
    ck = list_checkpoints(ctx.run_dir)
    if opts.max_checkpoints and len(ck) > opts.max_checkpoints:
        ck = [ck[int(i)] for i in np.unique(np.round(np.linspace(0, len(ck) - 1, opts.max_checkpoints)))]
    elif not opts.max_checkpoints:
        ck = []
    ck_rows = []
    for c in ck:
        sd = load_checkpoint(find_checkpoint(ctx.run_dir, c), map_location="cpu")["model"]
        v = torch.cat([sd[k].reshape(-1).float() for k, _ in base.model.named_parameters()])
        ck_rows.append([c, _dist(v, b_end), _dist(v, a_end)])
    cols = ["t", "step", "lr", "dist_A_B", "dist_twopoint_H", "dist_A_H", "dist_A_start", "dist_B_start",
            "dist_H_start", "dist_twopoint_start"]
    write_csv(out / "divergence.csv", cols, rows)
    write_csv(out / "divergence_losses.csv", ["t", "model", "train_loss", "train_acc", "val_loss", "val_acc"], loss_rows)
    write_csv(out / "endpoint_distances.csv", ["t", "step", "dist_to_B_end", "dist_to_A_end"], ep_rows)
    write_csv(out / "checkpoint_distances.csv", ["step", "dist_to_B_end", "dist_to_A_end"], ck_rows)
    last = rows[-1]
    final_losses = {r["model"]: {k: r[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc")}
                    for r in loss_rows if r["t"] == eval_steps[-1]}
    summary = {
        "sidetrip": "divergence", "run": str(ctx.run_dir), "step": S, "steps": K, "schedule": opts.schedule,
        "lr": lr, "other_seed": other, "final": {c: last[c] for c in cols[3:]},
        "twopoint_to_half_vs_A_B": last["dist_twopoint_H"] / last["dist_A_B"] if last["dist_A_B"] > 0 else None,
        "losses_at": eval_steps[-1], "losses": final_losses,
        "endpoint_distance_first_last": [ep_rows[0][2], ep_rows[-1][2]] if ep_rows else None,
        "wall_s": time.perf_counter() - t0,
    }
    write_json(out / "summary.json", summary)
    return summary


# ---------------------------------------------------------------------------------------------

SIDETRIPS: dict[str, tuple[Callable, type]] = {
    "lr-sweep": (lr_sweep, LrSweepOptions),
    "fixed-batch": (fixed_batch, FixedBatchOptions),
    "averaging": (averaging, AveragingOptions),
    "alignment": (alignment, AlignmentOptions),
    "divergence": (divergence, DivergenceOptions),
}


def headline(name: str, summary: dict[str, Any]) -> dict[str, Any]:
    """A few key numbers of a side-trip summary (what the CLI prints)."""
    if name == "lr-sweep":
        keys = ["train_start_loss", "train_min_loss", "best_lr_train", "heldout_start_loss", "heldout_min_loss",
                "best_lr_heldout"]
        return {k: summary[k] for k in keys}
    if name == "fixed-batch":
        return {"lr": summary["lr"], "train_loss_first": summary["train_loss_first"][-1],
                "train_barrier": summary["train_barrier"][-1], "heldout_barrier": summary["heldout_barrier"][-1]}
    if name == "averaging":
        out = {}
        for spec, v in summary["kernels"].items():
            if v["results"]:
                r = v["results"][-1]
                out[spec] = {"k": r["k"], "avg_val_acc": r["average"]["val_acc"],
                             "side_val_acc": r["sidetrip"]["val_acc"], "avg_train_loss": r["average"]["train_loss"],
                             "side_train_loss": r["sidetrip"]["train_loss"], "rel_l2": r["relative_l2"]}
        return out
    if name == "alignment":
        return {"final": {k: summary["final"][k] for k in ("cos_start_constant", "cos_start_linear",
                                                            "cos_between_schedules")},
                "different_batches_cos_mean": summary["different_batches"]["cos_mean"]}
    if name == "divergence":
        return {"final": summary["final"], "twopoint_to_half_vs_A_B": summary["twopoint_to_half_vs_A_B"]}
    return summary
