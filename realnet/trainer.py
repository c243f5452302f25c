"""The main trajectory: a small, flat SGD runner (torchvision-reference / nanoGPT style).

``train(cfg, out_dir)`` writes into ``out_dir``:

* ``config.json``  -- the resolved :class:`~realnet.config.TrainConfig` (all ``auto`` values filled in);
* ``run_info.json`` -- provenance per session (time, command, seed, package versions, ``git`` commit and
  ``git_dirty``, device; :func:`sgdtraj.provenance.provenance`);
* ``metrics.csv``  -- one row per update: ``step`` (0-based update index; the loss is the training
  batch's loss at the parameters *before* the update), ``epoch``, ``lr`` (used by that update),
  ``train_loss``, ``train_acc`` (of that global batch), ``time_s`` (wall time of the session);
* ``evals.csv``    -- ``step`` (parameters after ``step`` updates), ``val_loss``, ``val_acc``;
* ``checkpoints/step_#########.pt`` -- see :mod:`realnet.checkpoint` (step 0, every
  ``checkpoint_every`` steps, ``checkpoint_steps`` and the last step);
* ``summary.json`` -- final numbers;
* ``.sgd-trajectories.json`` -- the ownership marker (kind ``run``, identity = the resolved config without
  :data:`~realnet.config.RUNTIME_FIELDS`) and ``.lock``, held while training (:func:`sgdtraj.outputs.claim_output`).

Re-running on an existing directory continues from its last checkpoint (same result as one
uninterrupted run; bit-identical on CPU); a config that differs in anything but
:data:`~realnet.config.RUNTIME_FIELDS` is refused, and so is a directory that holds anything but a run
(a side-trip, a sweep, a report, other files) -- before anything is written. Run directories written
before markers existed are recognised by ``config.json`` + ``checkpoints/`` and adopted. A second
``train`` on a directory being trained exits with the holder's pid. A finished run re-run with the same
``steps`` writes nothing (it returns the stored summary); ``config.json`` is rewritten only when the run is
really continued with changed runtime fields, and the change is recorded in that session's entry of
``run_info.json`` (``config_changes``). Training stops with :class:`DivergenceError` at the first
non-finite training loss (checked when metrics are flushed, every ``log_every`` steps) or non-finite
parameters (checked before every checkpoint): metrics up to the bad step are kept, no checkpoint after
the last good one is written. A damaged latest checkpoint is reported with the previous good step.

Multi-GPU: launch with ``torchrun --nproc_per_node=N -m realnet train ...`` (env:// rendezvous,
DistributedDataParallel, each rank takes an equal share of the global batch and of the evaluation batches,
rank 0 writes). A single
GPU trains with bf16 autocast and channels_last by default; otherwise the CPU is used (fp32).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from sgdtraj.files import atomic_write_text, read_json, write_json
from sgdtraj.outputs import OutputError, claim_output, describe_diff, register_kind
from sgdtraj.provenance import provenance

from .checkpoint import (
    CheckpointWriter,
    RetentionRule,
    capture_rng_state,
    checkpoint_path,
    list_checkpoints,
    load_run_checkpoint,
    plan_disk,
    restore_rng_state,
    save_checkpoint,
)
from .config import RUNTIME_FIELDS, ConfigError, TrainConfig, build_options, config_diff, resolve_config
from .data import BatchOrder, build_data
from .models import create_model

__all__ = [
    "Runtime", "make_runtime", "lr_at", "lr_schedule_array", "build_model", "build_optimizer",
    "train_step", "evaluate", "batch_sums", "train", "load_config", "restore_checkpoint", "checkpoint_payload",
    "deterministic_mode", "METRICS_COLUMNS", "EVAL_COLUMNS", "DivergenceError", "run_identity", "all_finite",
    "retention_rule", "checkpoint_size_estimate",
]

#: the output-directory kind of a run (``realnet train --out``)
RUN_KIND = register_kind("run", "a realnet run")

METRICS_COLUMNS = ["step", "epoch", "lr", "train_loss", "train_acc", "time_s"]
EVAL_COLUMNS = ["step", "val_loss", "val_acc"]


class DivergenceError(RuntimeError):
    """SGD reached a non-finite loss or non-finite parameters (the message names the step, the loss and the
    lr); nothing after the last good state was written."""


def all_finite(model: nn.Module) -> bool:
    """Every parameter of ``model`` is finite (one host sync)."""
    flags = [torch.isfinite(p.detach()).all() for p in model.parameters()]
    return bool(torch.stack(flags).all()) if flags else True


def run_identity(cfg: TrainConfig) -> dict[str, Any]:
    """What makes two runs the same trajectory: the resolved config without :data:`RUNTIME_FIELDS`."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUNTIME_FIELDS}


# ---------------------------------------------------------------------------------------------
# runtime: device, precision, distributed
# ---------------------------------------------------------------------------------------------


@dataclass
class Runtime:
    """Where and how tensors are computed."""

    device: torch.device
    amp_dtype: torch.dtype | None = None  # autocast dtype (None = fp32)
    channels_last: bool = False
    rank: int = 0
    world: int = 1

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def prep(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _dist_env() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, world, local


def make_runtime(device: str = "auto", precision: str = "auto", channels_last: bool | None = None,
                 distributed: bool = False) -> Runtime:
    """Resolve ``device`` / ``precision`` / ``channels_last``; with ``distributed`` and torchrun's env
    variables, initialise the process group (env://, nccl on CUDA, gloo on CPU)."""
    rank, world, local = _dist_env() if distributed else (0, 1, 0)
    if device == "auto":
        dev = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N; got {device!r}") from None
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise ConfigError(f"device {device!r} requested but CUDA is not available (use --device=cpu)")
            if dev.index is None:
                dev = torch.device(f"cuda:{local}")
        elif dev.type != "cpu":
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N; got {device!r}")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"precision must be auto, fp32 or bf16; got {precision!r}")
    amp = torch.bfloat16 if (precision == "bf16" or (precision == "auto" and dev.type == "cuda")) else None
    cl = (dev.type == "cuda") if channels_last is None else bool(channels_last)
    if world > 1 and distributed:
        import torch.distributed as dist
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", init_method="env://")
    return Runtime(dev, amp, cl, rank, world)


@contextlib.contextmanager
def deterministic_mode(enabled: bool, threads: int = 0):
    """Temporarily ``torch.use_deterministic_algorithms(enabled)`` (and ``set_num_threads``); restored on exit."""
    prev = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_threads = torch.get_num_threads()
    prev_bench = torch.backends.cudnn.benchmark
    try:
        torch.use_deterministic_algorithms(bool(enabled))
        torch.backends.cudnn.benchmark = not enabled
        if threads > 0:
            torch.set_num_threads(threads)
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)
        torch.backends.cudnn.benchmark = prev_bench
        if threads > 0:
            torch.set_num_threads(prev_threads)


# ---------------------------------------------------------------------------------------------
# schedule, model, optimizer
# ---------------------------------------------------------------------------------------------


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate of update ``step`` (0-based) under the resolved config's schedule."""
    T = cfg.schedule_steps
    if cfg.lr_schedule == "constant":
        base = cfg.lr
    elif cfg.lr_schedule == "step":
        base = cfg.lr * cfg.lr_gamma ** (step // cfg.lr_step_size)
    elif cfg.lr_schedule == "linear":
        base = cfg.lr_min + (cfg.lr - cfg.lr_min) * (1.0 - min(step, T) / T)
    elif cfg.lr_schedule == "cosine":
        base = cfg.lr_min + (cfg.lr - cfg.lr_min) * 0.5 * (1.0 + math.cos(math.pi * min(step, T) / T))
    else:  # pragma: no cover - resolve_config validates
        raise ConfigError(f"unknown lr_schedule {cfg.lr_schedule!r}")
    if cfg.warmup_steps and step < cfg.warmup_steps:
        base *= (step + 1) / cfg.warmup_steps
    return float(base)


def lr_schedule_array(cfg: TrainConfig, start: int, stop: int):
    import numpy as np
    return np.array([lr_at(cfg, s) for s in range(start, stop)], dtype=np.float64)


def build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """Create the config's model, initialised from ``cfg.seed`` (the global RNG is re-seeded)."""
    torch.manual_seed(cfg.seed)
    return create_model(cfg.model, num_classes, small_stem=bool(cfg.small_stem), width=cfg.width)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    """SGD with momentum (PyTorch convention) and coupled weight decay on all parameters."""
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, lr: float,
               rt: Runtime | None = None, label_smoothing: float = 0.0,
               bn_groups: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD update on batch ``(x, y)`` with learning rate ``lr`` (train-mode BatchNorm).

    ``bn_groups`` > 1: the update of a DDP run of that many ranks without SyncBN -- BatchNorm normalises each
    rank's share separately (rank ``r`` takes positions ``r, r + bn_groups, ...``, as the data loader deals
    them), the gradient is the mean of the shares' gradients (running statistics: updated once per share).
    Returns the batch loss and the number of correct predictions (detached tensors; no host sync).
    """
    for g in optimizer.param_groups:
        g["lr"] = lr
    model.train()
    ctx = rt.autocast() if rt is not None else contextlib.nullcontext()
    if rt is not None:
        x = rt.prep(x)
    optimizer.zero_grad(set_to_none=True)
    if bn_groups > 1:
        if len(y) % bn_groups:
            raise ValueError(f"a batch of {len(y)} cannot be split into {bn_groups} equal BatchNorm groups")
        losses, correct = [], []
        for xk, yk in ((x[r::bn_groups], y[r::bn_groups]) for r in range(bn_groups)):
            with ctx:
                out = model(xk)
                lk = F.cross_entropy(out.float(), yk, label_smoothing=label_smoothing)
            (lk / bn_groups).backward()
            losses.append(lk.detach())
            correct.append((out.detach().argmax(1) == yk).sum())
        optimizer.step()
        return torch.stack(losses).mean(), torch.stack(correct).sum()
    with ctx:
        out = model(x)
        loss = F.cross_entropy(out.float(), y, label_smoothing=label_smoothing)
    loss.backward()
    optimizer.step()
    return loss.detach(), (out.detach().argmax(1) == y).sum()


@torch.no_grad()
def batch_sums(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], rt: Runtime | None = None,
               train_mode_bn: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """Per batch: summed cross-entropy (float32 0-d tensor), correct predictions (0-d tensor) and examples, with
    eval-mode BatchNorm unless ``train_mode_bn`` (each batch's own statistics, running statistics untouched)."""
    was = model.training
    ctx = rt.autocast() if rt is not None else contextlib.nullcontext()
    saved = [(b, b.clone()) for b in model.buffers()] if train_mode_bn else None
    model.train(train_mode_bn)
    try:
        for x, y in batches:
            if rt is not None:
                x = rt.prep(x)
            with ctx:
                out = model(x)
            yield F.cross_entropy(out.float(), y, reduction="sum"), (out.argmax(1) == y).sum(), len(y)
    finally:
        model.train(was)
        if saved is not None:
            for b, v in saved:
                b.copy_(v)


def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], rt: Runtime | None = None,
             train_mode_bn: bool = False) -> dict[str, float]:
    """Mean cross-entropy loss and accuracy over ``batches`` (eval-mode BatchNorm unless ``train_mode_bn``).

    Returns ``{"loss", "acc", "n"}``. ``train_mode_bn`` normalises with each batch's own statistics
    without touching the running statistics.
    """
    total = correct = n = None
    for l, c, k in batch_sums(model, batches, rt, train_mode_bn):
        total = l if total is None else total + l  # float32, in batch order (as _run_eval adds the ranks' shares)
        correct = c if correct is None else correct + c
        n = k if n is None else n + k
    if not n:
        return {"loss": float("nan"), "acc": float("nan"), "n": 0}
    return {"loss": float(total) / n, "acc": float(correct) / n, "n": int(n)}


# ---------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------


def checkpoint_payload(step: int, cfg: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer,
                       order: BatchOrder, world: int = 1) -> dict[str, Any]:
    return {
        "step": int(step),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": {"name": cfg.lr_schedule, "lr": cfg.lr, "schedule_steps": cfg.schedule_steps,
                     "lr_step_size": cfg.lr_step_size, "lr_gamma": cfg.lr_gamma, "lr_min": cfg.lr_min,
                     "warmup_steps": cfg.warmup_steps, "next_lr": lr_at(cfg, step)},
        "rng": capture_rng_state(),
        "data_order": order.state(step),
        "config": dataclasses.asdict(cfg),
        "world_size": int(world),
    }


def restore_checkpoint(ckpt: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                       rng: bool = True) -> int:
    """Load model / optimizer (momentum buffers) / RNG states from a loaded checkpoint; returns its step."""
    model.load_state_dict(ckpt["model"])
    if optimizer is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if rng:
        restore_rng_state(ckpt["rng"])
    return int(ckpt["step"])


def load_config(run_dir: str | Path) -> TrainConfig:
    """The resolved :class:`TrainConfig` stored in ``run_dir/config.json``."""
    p = Path(run_dir) / "config.json"
    if not p.is_file():
        raise FileNotFoundError(f"no config.json in run directory {str(Path(run_dir))!r} (not a realnet run?)")
    return build_options(TrainConfig, overrides=read_json(p))


def retention_rule(cfg: TrainConfig) -> RetentionRule:
    """The config's :class:`~realnet.checkpoint.RetentionRule` (checkpoint_every, checkpoint_keep_every,
    checkpoint_steps, branch_steps, branch_window, steps)."""
    return RetentionRule(cfg.checkpoint_every, cfg.checkpoint_keep_every, frozenset(cfg.checkpoint_steps),
                         frozenset(cfg.branch_steps), cfg.branch_window, cfg.steps)


def checkpoint_size_estimate(model: nn.Module) -> int:
    """Bytes of one checkpoint of ``model``: its state (weights, BatchNorm buffers), one momentum buffer per
    parameter and 64 KiB of the rest (config, RNG states, schedule)."""
    state = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    momentum = sum(p.numel() * p.element_size() for p in model.parameters())
    return int(state + momentum + 65536)


# ---------------------------------------------------------------------------------------------
# the runner
# ---------------------------------------------------------------------------------------------


def _truncate_csv(path: Path, columns: list[str], keep) -> None:
    """Rewrite ``path`` atomically keeping the header and well-formed rows whose step satisfies ``keep``."""
    lines = [",".join(columns)]
    if path.is_file():
        with open(path, encoding="utf-8") as fh:
            rows = fh.read().split("\n")
        for line in rows[1:]:
            parts = line.split(",")
            if len(parts) != len(columns):
                continue
            try:
                step = int(parts[0])
            except ValueError:
                continue
            if keep(step):
                lines.append(line)
    atomic_write_text(path, "\n".join(lines) + "\n")


def _config_refusal(out: Path, diff: dict, old: dict, lines: str) -> ConfigError:
    hint = ""
    if set(diff) <= {"schedule_steps", "lr_step_size"}:
        hint = (f" -- the lr schedule horizon was fixed when the run started; pass "
                f"--schedule-steps={old.get('schedule_steps')} to extend it with the same schedule")
    return ConfigError(f"run directory {str(out)!r} holds a different config ({lines}){hint}; "
                       f"use the same settings or a new --out")


def _claim_run(cfg: TrainConfig, out: Path):
    """Claim ``out`` for ``cfg`` (:func:`sgdtraj.outputs.claim_output`); a different config of the same run is a
    :class:`ConfigError` naming the keys (with the schedule-horizon hint), anything else an OutputError."""
    try:
        return claim_output(out, RUN_KIND, run_identity(cfg), holder="realnet train")
    except OutputError as e:
        if e.reason != "identity":
            raise
        old = {k: a for k, (a, _) in e.diff.items()}
        raise _config_refusal(out, e.diff, old, describe_diff(e.diff)) from None


def _prepare_run_dir(cfg: TrainConfig, out: Path) -> int | None:
    """Validate ``out`` against ``cfg``; return the step to resume from (None for a fresh run)."""
    cfg_path = out / "config.json"
    steps = list_checkpoints(out)
    if cfg_path.is_file():
        old = dataclasses.asdict(load_config(out))
        diff = config_diff(old, dataclasses.asdict(cfg))
        if diff:
            lines = "; ".join(f"{k}: {a!r} (stored) != {b!r} (now)" for k, (a, b) in diff.items())
            raise _config_refusal(out, diff, old, lines)
        if not steps:
            return None
        if steps[-1] > cfg.steps:
            raise ValueError(f"run directory {str(out)!r} already has checkpoints up to step {steps[-1]} > "
                             f"steps={cfg.steps}; use --steps >= {steps[-1]}")
        return steps[-1]
    if steps:
        raise ValueError(f"run directory {str(out)!r} has checkpoints but no config.json; refusing to reuse it")
    return None


def _diverged(out: Path, what: str) -> DivergenceError:
    ck = list_checkpoints(out)
    last = f"checkpoint step {ck[-1]}" if ck else "no checkpoint"
    return DivergenceError(f"{what}; the run directory {str(out)!r} keeps everything up to {last} (no later "
                           f"checkpoint was written); lower --lr and use a new --out")


def train(cfg: TrainConfig, out_dir: str | Path) -> dict[str, Any]:
    """Run (or continue) the main trajectory of ``cfg`` in ``out_dir``; returns the summary dict."""
    cfg = resolve_config(cfg)
    out = Path(out_dir)
    # the run directory is checked and claimed first (rank 0 writes), before any heavy setup
    claim = _claim_run(cfg, out) if _dist_env()[0] == 0 else None
    try:
        rt = make_runtime(cfg.device, cfg.precision, cfg.channels_last, distributed=True)
        if cfg.batch_size % rt.world:
            raise ConfigError(f"batch_size={cfg.batch_size} must be divisible by the number of ranks ({rt.world})")
        if cfg.sync_bn and rt.world > 1 and rt.device.type != "cuda":
            raise ConfigError(f"sync_bn needs CUDA devices (torch's SyncBatchNorm runs on GPUs only); got device "
                              f"{str(rt.device)!r} with {rt.world} ranks: drop --sync-bn (each rank then normalises "
                              f"its own share, which side-trips reproduce)")
        det = (rt.device.type == "cpu") if cfg.deterministic is None else cfg.deterministic
        with deterministic_mode(det, cfg.threads):
            return _train_claimed(cfg, out, rt, claim)
    except BaseException:
        if claim is not None:
            claim.abandon()  # a new directory that holds no checkpoint yet is removed again
        raise
    finally:
        if claim is not None:
            claim.release()


def _barrier(rt: Runtime) -> None:
    if rt.world > 1:
        import torch.distributed as dist
        dist.barrier()


def _finished_summary(cfg: TrainConfig, out: Path, start: int | None) -> dict[str, Any] | None:
    """The stored summary of a run already trained to ``cfg.steps`` (None: there is work to do)."""
    p = out / "summary.json"
    if start != cfg.steps or not p.is_file():
        return None
    try:
        summary = read_json(p)
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and summary.get("steps") == cfg.steps else None


class _Start(NamedTuple):
    """Where this session starts, as rank 0 found the run directory (broadcast to every rank)."""

    step: int | None  # the checkpoint step to resume from (None: a fresh run)
    finished: dict[str, Any] | None  # the stored summary of a run already trained to ``cfg.steps``


class _Pending(NamedTuple):
    """One update whose loss and accuracy are still on the device (written at the next flush)."""

    step: int  # 0-based update index
    epoch: int  # step // steps_per_epoch
    lr: float  # the learning rate the update used
    loss: torch.Tensor  # 0-d, this rank's batch loss at the parameters before the update
    correct: torch.Tensor  # 0-d, this rank's number of correct predictions
    time_s: float  # session wall time when the update was queued, seconds


@dataclass
class _Session:
    """Everything one training session works on (built by :func:`_build_session`)."""

    cfg: TrainConfig  # the resolved config
    out: Path  # the run directory
    rt: Runtime  # device, precision, ranks
    data: Any  # the DataBundle, on the device
    order: BatchOrder  # the batch order of the main trajectory
    model: nn.Module  # the plain model (what checkpoints hold)
    optimizer: torch.optim.Optimizer  # SGD with momentum over ``model``'s parameters
    train_module: nn.Module  # what the updates run through (SyncBN / DDP / compile wrapped ``model``)
    start: int  # the first update of this session
    resumed: bool  # continued from a checkpoint
    rule: RetentionRule  # which checkpoints are written and kept
    writer: CheckpointWriter | None = None  # rank 0's checkpoint writer (None on the other ranks)
    t0: float = 0.0  # perf_counter at the start of the training loop

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.csv"

    @property
    def evals_path(self) -> Path:
        return self.out / "evals.csv"


def _agree_start(cfg: TrainConfig, out: Path, rt: Runtime) -> _Start:
    """Rank 0 checks the run directory (resume step, finished run); every rank gets its answer."""
    start = _Start(None, None)
    if rt.is_main:
        step = _prepare_run_dir(cfg, out)
        start = _Start(step, _finished_summary(cfg, out, step))
    if rt.world > 1:
        import torch.distributed as dist
        box = list(start)
        dist.broadcast_object_list(box, src=0)
        start = _Start(*box)
    return start


def _build_session(cfg: TrainConfig, out: Path, rt: Runtime, start: int | None) -> _Session:
    """Data, model and optimizer on the device, restored from the checkpoint at ``start`` if given.

    The checkpoint is read into host memory (``map_location='cpu'``): ``load_state_dict`` copies the tensors
    to the model's and the optimizer's device and the RNG states are host data on every device."""
    data = build_data(cfg)
    order = BatchOrder(len(data.train), cfg.batch_size, cfg.data_seed)
    data = data.to(rt.device)
    model = build_model(cfg, data.num_classes).to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg)
    resumed = start is not None
    if resumed:
        ckpt = load_run_checkpoint(out, start, map_location="cpu",
                                   use="move the damaged file away (e.g. mv {path} {path}.damaged) and re-run to "
                                       "resume from step {step}")
        restore_checkpoint(ckpt, model, optimizer, rng=True)
        del ckpt
    train_module: nn.Module = model
    if cfg.sync_bn and rt.world > 1:
        train_module = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if rt.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        train_module = DDP(train_module, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    if cfg.compile:
        train_module = torch.compile(train_module)
    writer = CheckpointWriter(out, retention_rule(cfg), background=cfg.background_save) if rt.is_main else None
    return _Session(cfg, out, rt, data, order, model, optimizer, train_module, start if resumed else 0, resumed,
                    retention_rule(cfg), writer)


def _checkpoint_plan(s: _Session) -> tuple[str | None, str]:
    """Rank 0's check of the retention rule against the run directory and of the projected disk use against
    the free space: (refusal or None, the plan's one-line description)."""
    cfg, rule = s.cfg, s.rule
    have = set(list_checkpoints(s.out))
    for b in sorted(cfg.branch_steps):
        if b > s.start:
            continue
        lost = [t for t in range(max(0, b - cfg.branch_window), min(s.start, b + cfg.branch_window) + 1)
                if rule.writes(t) and t not in have]
        if lost:
            shown = ", ".join(map(str, lost[:8])) + (" ..." if len(lost) > 8 else "")
            return (f"branch_steps: step {b} (window {cfg.branch_window}) needs checkpoints {shown}, which this run "
                    f"no longer has (removed by an earlier retention rule or never written); a side-trip could not "
                    f"branch there: choose branch steps after {s.start} or among the kept steps"), ""
    size = checkpoint_size_estimate(s.model)
    plan = plan_disk(rule, s.start, cfg.steps, size, s.out)
    if not s.resumed:  # the step-0 checkpoint comes on top
        plan = plan._replace(written=plan.written + 1, kept=plan.kept + 1, peak_bytes=plan.peak_bytes + size)
    line = plan.line(s.out)
    if plan.peak_bytes > plan.free_bytes:
        return (f"not enough disk for the checkpoints: {line}; raise checkpoint_keep_every (now "
                f"{cfg.checkpoint_keep_every}) or checkpoint_every (now {cfg.checkpoint_every}), narrow branch_window, "
                f"or use an --out with more free space"), line
    return None, line


def _open_session(s: _Session, claim) -> None:
    """Rank 0 records the session (run_info.json, config.json), trims the logs to ``s.start`` and writes the
    step-0 checkpoint of a fresh run; every rank waits for it."""
    cfg, out, rt = s.cfg, s.out, s.rt
    box = list(_checkpoint_plan(s)) if rt.is_main else [None, ""]
    if rt.world > 1:
        import torch.distributed as dist
        dist.broadcast_object_list(box, src=0)
    refusal, plan_line = box
    if refusal is not None:
        raise ConfigError(refusal)
    if rt.is_main:
        if cfg.progress:  # beside the progress bar; run_info.json records it in any case
            print(plan_line, file=sys.stderr)
        cfg_path = out / "config.json"
        stored = read_json(cfg_path) if cfg_path.is_file() else None
        changes = config_diff(stored, dataclasses.asdict(cfg), ignore=()) if stored is not None else {}
        info_path = out / "run_info.json"
        info = read_json(info_path) if (s.resumed and info_path.is_file()) else {"sessions": []}
        session = provenance(seed=cfg.seed, config=cfg, data_seed=cfg.data_seed,
                             resumed_from=s.start if s.resumed else None, device=str(rt.device), world_size=rt.world,
                             precision="bf16" if rt.amp_dtype else "fp32",
                             deterministic=torch.are_deterministic_algorithms_enabled())
        session["checkpoint_plan"] = plan_line
        if changes:  # the history of the recorded config: what this session changed (runtime fields only)
            session["config_changes"] = {k: [a, b] for k, (a, b) in changes.items()}
        info["sessions"].append(session)
        write_json(info_path, info)
        if stored is None or changes:
            write_json(cfg_path, dataclasses.asdict(cfg))
        _truncate_csv(s.metrics_path, METRICS_COLUMNS, lambda step: step < s.start)
        _truncate_csv(s.evals_path, EVAL_COLUMNS, lambda step: step < s.start)
        if not s.resumed:
            payload = checkpoint_payload(0, cfg, s.model, s.optimizer, s.order, rt.world)
            save_checkpoint(checkpoint_path(out, 0), payload)
        if claim is not None:
            claim.keep()  # a checkpoint exists: the directory stays even if training fails later
    _barrier(rt)


def _run_eval(s: _Session, step: int) -> dict[str, float] | None:
    """Validation loss/accuracy after ``step`` updates; rank 0 appends them to evals.csv.

    With several ranks every rank takes rank 0's BatchNorm buffers, the evaluation batches are dealt out (rank r
    takes batches r, r + world, ...), their
    per-batch sums are gathered by one all_reduce and added in batch order in float32 as :func:`evaluate` adds
    them: the numbers of one process evaluating everything, bit for bit where the batches' forward passes are.
    """
    cfg, rt = s.cfg, s.rt
    if rt.world == 1:
        res = evaluate(s.model, s.data.eval_batches("val", cfg.eval_samples, cfg.eval_batch_size, rt.device), rt)
    else:
        import torch.distributed as dist

        for b in s.model.buffers():  # rank 0's BatchNorm statistics (what it checkpoints; DDP's next forward
            dist.broadcast(b, 0)  # broadcasts them too): without SyncBN each rank's own differ
        n_val = min(cfg.eval_samples, len(s.data.val))
        table = torch.zeros(-(-n_val // cfg.eval_batch_size), 3, dtype=torch.float64, device=rt.device)
        mine = s.data.eval_batches("val", cfg.eval_samples, cfg.eval_batch_size, rt.device, rank=rt.rank,
                                   world=rt.world)
        for (l, c, n), k in zip(batch_sums(s.model, mine, rt), range(rt.rank, len(table), rt.world)):
            table[k, 0], table[k, 1], table[k, 2] = l.double(), c.double(), float(n)
        dist.all_reduce(table)
        table = table.cpu()
        total = None
        for v in table[:, 0].float():
            total = v if total is None else total + v
        n = int(table[:, 2].sum())
        res = ({"loss": float(total) / n, "acc": float(table[:, 1].sum()) / n, "n": n} if n else
               {"loss": float("nan"), "acc": float("nan"), "n": 0})
    if rt.is_main:
        with open(s.evals_path, "a", encoding="utf-8") as fh:
            fh.write(f"{step},{res['loss']!r},{res['acc']!r}\n")
    _barrier(rt)
    return res if rt.is_main else None


class _MetricsLog:
    """Queued updates (:class:`_Pending`) brought to the host and appended to metrics.csv in blocks."""

    def __init__(self, s: _Session):
        self.s = s
        self.pending: list[_Pending] = []
        self.last_loss = float("nan")  # the global-batch loss of the last flushed update

    def add(self, rec: _Pending) -> None:
        self.pending.append(rec)

    def __len__(self) -> int:
        return len(self.pending)

    def flush(self) -> None:
        """Write the queued rows (global-batch loss and accuracy); :class:`DivergenceError` at the first
        non-finite loss, after writing the rows before it."""
        s, pending = self.s, self.pending
        if not pending:
            return
        stats = torch.stack([torch.stack([p.loss.float(), p.correct.float()]) for p in pending])  # (n, 2)
        if s.rt.world > 1:  # global-batch loss (mean of equal shares) and accuracy
            import torch.distributed as dist
            dist.all_reduce(stats)
            stats[:, 0] /= s.rt.world
        losses, corrects = stats[:, 0].cpu().tolist(), stats[:, 1].cpu().tolist()
        bad = next((i for i, l in enumerate(losses) if not math.isfinite(l)), None)
        good = len(losses) if bad is None else bad
        if s.rt.is_main:
            with open(s.metrics_path, "a", encoding="utf-8") as fh:
                for p, l, c in zip(pending[:good], losses[:good], corrects[:good]):
                    fh.write(f"{p.step},{p.epoch},{p.lr!r},{l!r},{c / s.cfg.batch_size!r},{p.time_s:.3f}\n")
        if bad is not None:
            p = pending[bad]
            _settle(s)
            raise _diverged(s.out, f"training diverged at step {p.step}: train_loss = {losses[bad]!r} "
                                   f"(lr = {p.lr:g})")
        self.last_loss = losses[-1]
        pending.clear()


def _save_step(s: _Session, log: _MetricsLog, done: int, lr: float) -> None:
    """Checkpoint after ``done`` updates: flush the log, check the parameters are finite, rank 0 writes."""
    log.flush()
    if not all_finite(s.model):
        _settle(s)
        raise _diverged(s.out, f"training diverged: the parameters are not finite after update {done - 1} "
                               f"(train_loss = {log.last_loss!r}, lr = {lr:g})")
    if s.writer is not None:
        s.writer.submit(done, checkpoint_payload(done, s.cfg, s.model, s.optimizer, s.order, s.rt.world))
    _barrier(s.rt)


def _settle(s: _Session) -> None:
    """Let the checkpoint in flight reach the disk (before a message names the last checkpoint)."""
    if s.writer is not None:
        s.writer.close(raise_errors=False)


def _train_loop(s: _Session) -> float:
    """Updates ``s.start .. cfg.steps - 1`` with evaluations, logging and checkpoints; returns the last
    flushed training loss (NaN when this session trained nothing)."""
    cfg, rt = s.cfg, s.rt
    log = _MetricsLog(s)
    s.t0 = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=s.start, desc=f"train {s.out.name}",
               disable=not (cfg.progress and rt.is_main), dynamic_ncols=True, mininterval=1.0)
    batches = s.data.train_batches(s.order, s.start, cfg.steps, rt.device, rt.rank, rt.world, augment=cfg.augment)
    try:
        for step, (x, y) in zip(range(s.start, cfg.steps), batches):
            if cfg.eval_every and step % cfg.eval_every == 0:
                _run_eval(s, step)
            lr = lr_at(cfg, step)
            loss, correct = train_step(s.train_module, s.optimizer, x, y, lr, rt, cfg.label_smoothing)
            log.add(_Pending(step, step // s.order.steps_per_epoch, lr, loss, correct, time.perf_counter() - s.t0))
            done = step + 1
            if len(log) >= cfg.log_every:
                log.flush()
                bar.set_postfix(loss=f"{log.last_loss:.4f}", lr=f"{lr:.4g}", refresh=False)
            if s.rule.writes(done):
                _save_step(s, log, done, lr)
            bar.update(1)
        log.flush()
        if s.writer is not None:
            s.writer.close()
    finally:
        bar.close()
        _settle(s)  # a checkpoint in flight when training failed is completed: it is a good one
    return log.last_loss


def _last_logged_loss(s: _Session) -> float:
    """The training loss of the last row of metrics.csv (rank 0; NaN without rows)."""
    if not (s.rt.is_main and s.metrics_path.is_file()):
        return float("nan")
    with open(s.metrics_path, encoding="utf-8") as fh:
        rows = [r for r in fh.read().split("\n")[1:] if r]
    return float(rows[-1].split(",")[3]) if rows else float("nan")


def _close_session(s: _Session, last_loss: float) -> dict[str, Any]:
    """Final evaluation and summary.json (rank 0); returns the summary."""
    cfg = s.cfg
    final_eval = _run_eval(s, cfg.steps)
    if last_loss != last_loss:  # nothing trained in this session
        last_loss = _last_logged_loss(s)
    wall = time.perf_counter() - s.t0
    summary = {
        "steps": cfg.steps, "resumed_from": s.start if s.resumed else None, "final_train_loss": last_loss,
        "val_loss": final_eval["loss"] if final_eval else None, "val_acc": final_eval["acc"] if final_eval else None,
        "checkpoints": list_checkpoints(s.out) if s.rt.is_main else None,
        "session_wall_s": wall,
        "steps_per_s": (cfg.steps - s.start) / max(wall, 1e-9),
    }
    if s.rt.is_main:
        write_json(s.out / "summary.json", summary)
    _barrier(s.rt)
    return summary


def _train_claimed(cfg: TrainConfig, out: Path, rt: Runtime, claim) -> dict[str, Any]:
    start = _agree_start(cfg, out, rt)
    if start.finished is not None:  # nothing to train: the run stays exactly as it is
        return start.finished
    s = _build_session(cfg, out, rt, start.step)
    _open_session(s, claim)
    last_loss = _train_loop(s)
    return _close_session(s, last_loss)
