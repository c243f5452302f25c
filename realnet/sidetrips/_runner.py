"""The one side-trip runner, the run context and branches shared by every side-trip.

:func:`run_sidetrip` is what every public side-trip function calls; in this order it

1. builds the options (dataclass defaults < ``options`` < keyword overrides) and validates them
   (:class:`ConfigError` naming the key; unknown keys refused);
2. checks the run directory and every checkpoint the side-trip needs, and refuses an output directory inside
   the run -- before anything is written;
3. claims the output directory (:func:`sgdtraj.outputs.claim_output`, kind ``sidetrip``, identity
   :func:`sidetrip_identity`: name, run, step, options but :data:`RUNTIME_OPTIONS`): anything else there is
   refused naming ``--out``; the same side-trip finished is read back (:meth:`SideTripResult.load`),
   interrupted is resumed;
4. opens the run (:class:`RunContext`) under the side-trip's thread count and determinism setting;
5. writes ``config.json`` and ``run_info.json`` (a resumed side-trip appends its provenance to ``resumed``);
6. times ``trip.compute(ctx, step, options)``, saves the typed result and removes the resume state.

On failure a directory it created is removed unless a resume state was saved; on divergence
(:class:`realnet.trainer.DivergenceError` from :meth:`Branch.sgd_step`) it is removed even then.
Resume state: ``OUT/.resume-state.pt`` (:class:`ResumeState`, written atomically at most every ``save_every_s``
seconds); a resumed run is bit-identical to an uninterrupted one on CPU. Details: ``docs/side-trips.md``.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import update_bn
from tqdm import tqdm

from sgdtraj.files import read_json, write_json
from sgdtraj.outputs import claim_output, register_kind
from sgdtraj.provenance import provenance

from ..checkpoint import CheckpointError, find_checkpoint, load_checkpoint, load_run_checkpoint, save_checkpoint
from ..config import ConfigError, TrainConfig, build_options, check_int
from ..data import BatchOrder, DataBundle, build_data
from ..pipeline import auto_workers
from ..trainer import (
    DivergenceError,
    Runtime,
    build_model,
    build_optimizer,
    deterministic_mode,
    evaluate,
    load_config,
    lr_at,
    make_runtime,
    restore_checkpoint,
    train_step,
)
from ._losses import BatchPlan
from ._results import Metrics, SideTripResult

__all__ = ["SideTripOptions", "SideTrip", "run_sidetrip", "RunContext", "Branch", "BN_SEED", "HELDOUT_SEED",
           "ResumeState", "RUNTIME_OPTIONS", "sidetrip_identity"]

#: the output-directory kind of a side-trip (``realnet sidetrip NAME --out``)
SIDETRIP_KIND = register_kind("sidetrip", "a realnet side-trip")

#: option keys that do not change a side-trip's result (left out of its identity: a resume may change them)
RUNTIME_OPTIONS = frozenset({"progress", "threads", "data_dir", "save_every_s", "micro_batch"})

BN_SEED = 7_000_003  # seed of the fixed training batches used by update_bn
HELDOUT_SEED = 1_000_003  # seed of the fixed held-out batches
_SEED_STRIDE = 1_000_000_007  # RunContext.seeded: base + stride * seed


@dataclass
class SideTripOptions:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 autocast on cuda, fp32 on cpu) | fp32 | bf16
    data_dir: str | None = None  # override the run's data_dir (if the data moved)
    threads: int = 0  # torch.set_num_threads (0 = torch default)
    deterministic: bool | None = None  # torch.use_deterministic_algorithms (None = auto: on CPU)
    progress: bool = True  # tqdm progress bars
    eval_batch_size: int = 256  # batch size of evaluation passes
    save_every_s: float = 300.0  # save the resume state of long side-trips at most this often (seconds; 0 = every step)
    micro_batch: int = 0  # most examples per forward pass of the batch evaluations (memory bound; 0 = none);
    #   BatchNorm groups (the run's per-rank batch) are never split
    seed: int = 0  # side-trip seed: 0 = the fixed batches' own seeds (held-out, BatchNorm, fixed and reference
    #   batches); another value draws all of them anew (independent replicates of a side-trip)

    def validate(self, step: int) -> None:
        """Refuse invalid values with a :class:`ConfigError` naming the key (subclasses extend it)."""

    def checkpoints(self, step: int) -> tuple[int, ...]:
        """The run's checkpoints the side-trip branches from (checked before anything is written)."""
        return (int(step),)


@dataclass(frozen=True)
class SideTrip:
    """What a side-trip is: the registry entry of :data:`realnet.sidetrips.SIDETRIPS`.

    name: the CLI name (``lr-sweep``). options: its options dataclass. compute: ``(ctx, step, options) ->
    result`` (the computation, called by :func:`run_sidetrip`). result: its :class:`SideTripResult` class
    (``result.load(dir)`` reads a saved one). doc: one line. function: the public function
    ``fn(run_dir, step, out_dir, options=None, **overrides) -> result``.
    """

    name: str
    options: type
    compute: Callable[..., SideTripResult]
    result: type
    doc: str
    function: Callable[..., SideTripResult]

    def __call__(self, run_dir, step: int, out_dir, options=None, **overrides) -> SideTripResult:
        return run_sidetrip(self, run_dir, step, out_dir, options, overrides)


def resolve_options(cls, options, overrides: dict[str, Any] | None):
    """``cls`` from its defaults, or ``options`` (an instance of ``cls``), updated by ``overrides``."""
    overrides = overrides or {}
    if options is None:
        return build_options(cls, overrides=overrides)
    if not isinstance(options, cls):
        raise TypeError(f"options must be a {cls.__name__}; got {type(options).__name__}")
    return build_options(cls, overrides=overrides, base=options) if overrides else options


def prepare_out(run_dir, out_dir) -> Path:
    """``out_dir`` resolved; ValueError naming ``--out`` and ``--run`` if it is (inside) the run directory.
    Writes nothing (:func:`run_sidetrip` claims the directory)."""
    run = Path(run_dir).resolve()
    out = Path(out_dir).resolve()
    if out == run or run in out.parents:
        raise ValueError(f"side-trip output (--out) {str(out)!r} must not be inside the run directory (--run) "
                         f"{str(run)!r} (side-trips never modify their parent run)")
    return out


def sidetrip_identity(name: str, run_dir, step: int, opts) -> dict[str, Any]:
    """What makes two side-trips the same job: name, run (resolved), step and every option but
    :data:`RUNTIME_OPTIONS`."""
    return {"sidetrip": name, "run": str(Path(run_dir).resolve()), "step": int(step),
            "options": {k: v for k, v in dataclasses.asdict(opts).items() if k not in RUNTIME_OPTIONS}}


def _check_run(run_dir) -> Path:
    """The run directory (FileNotFoundError / ConfigError naming ``--run`` when it is none)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory not found: {str(run)!r}")
    load_config(run)  # FileNotFoundError "no config.json ... (not a realnet run?)"
    return run


def run_sidetrip(trip: SideTrip, run_dir, step: int, out_dir, options=None,
                 overrides: dict[str, Any] | None = None) -> SideTripResult:
    """Run side-trip ``trip`` from checkpoint ``step`` of ``run_dir`` into ``out_dir``; returns its result
    (also saved there). See the module docstring for what it does in which order."""
    opts = resolve_options(trip.options, options, overrides)
    step = int(step)
    opts.validate(step)
    check_int("seed", opts.seed, 0)
    run = _check_run(run_dir)
    prepare_out(run, out_dir)
    for s in opts.checkpoints(step):
        find_checkpoint(run, s)  # ValueError naming the available steps
    claim = claim_output(out_dir, SIDETRIP_KIND, sidetrip_identity(trip.name, run, step, opts),
                         holder=f"side-trip {trip.name}")
    out = claim.path
    try:
        if claim.resumed and (out / "summary.json").is_file():
            return trip.result.load(out)  # the same side-trip, finished: nothing to do
        result = _run_claimed(trip, run, step, out, opts, claim)
    except DivergenceError:
        claim.abandon(force=True)  # its resume states lead to the same divergence
        raise
    except BaseException:
        claim.abandon()  # a new directory without a resume state is removed again
        raise
    finally:
        claim.release()
    return result


def _run_claimed(trip: SideTrip, run: Path, step: int, out: Path, opts, claim) -> SideTripResult:
    state = ResumeState(out, opts.save_every_s, on_save=claim.keep)
    with deterministic_mode(False, opts.threads):
        ctx = RunContext(run, opts, state=state)
        det = ctx.rt.device.type == "cpu" if opts.deterministic is None else opts.deterministic
        with deterministic_mode(det):
            config, run_info = write_meta(out, trip.name, ctx, step, opts, resumed=state.exists())
            t0 = time.perf_counter()
            result = trip.compute(ctx, step, opts)
            result.wall_s = time.perf_counter() - t0 + state.elapsed_before()
    result.config, result.run_info = config, run_info
    result.save(out)
    claim.keep()
    state.clear()
    return result


def write_meta(out: Path, name: str, ctx: "RunContext", step: int, opts, resumed: bool = False) -> tuple[dict, dict]:
    """Write ``config.json`` and ``run_info.json``; returns their contents. A resumed side-trip keeps both
    and appends this session's provenance to ``run_info["resumed"]``."""
    cfg = {"sidetrip": name, "run": str(ctx.run_dir.resolve()), "step": int(step),
           "options": dataclasses.asdict(opts), "run_config": dataclasses.asdict(ctx.cfg)}
    info = provenance(seed=ctx.cfg.seed, config=cfg, data_seed=ctx.cfg.data_seed, device=str(ctx.rt.device),
                      precision="bf16" if ctx.rt.amp_dtype else "fp32")
    cfg_path, info_path = out / "config.json", out / "run_info.json"
    if resumed and cfg_path.is_file() and info_path.is_file():
        cfg, first = read_json(cfg_path), read_json(info_path)
        first.setdefault("resumed", []).append(info)
        write_json(info_path, first)
        return cfg, first
    write_json(cfg_path, cfg)
    write_json(info_path, info)
    return cfg, info


class ResumeState:
    """The resume state of a side-trip: ``OUT/.resume-state.pt`` (:mod:`realnet.checkpoint` format: atomic,
    checksummed, loaded with ``weights_only=True`` -- tensors, numbers, strings, lists and dicts only).

    ``load()`` returns the dict saved last (None: start from the beginning); ``save(make)`` writes ``make()``
    when ``every_s`` seconds passed since the last save (or with ``force``); ``clear()`` removes the file once
    the result is saved. A disabled state (``directory=None``) never saves.
    """

    FILE = ".resume-state.pt"

    def __init__(self, directory: Path | None, every_s: float = 300.0, on_save: Callable[[], None] | None = None):
        self.path = None if directory is None else Path(directory) / self.FILE
        self.every_s = float(every_s)
        self.on_save = on_save
        self._last = time.monotonic()
        self._t0 = time.perf_counter()
        self._elapsed = 0.0

    def exists(self) -> bool:
        return self.path is not None and self.path.is_file()

    def load(self) -> dict[str, Any] | None:
        if not self.exists():
            return None
        try:
            payload = load_checkpoint(self.path, map_location="cpu")
        except CheckpointError as e:
            print(f"warning: ignoring a damaged resume state, starting the side-trip over: {e}", file=sys.stderr)
            return None
        self._elapsed = float(payload.get("elapsed_s", 0.0))
        return payload["state"]

    def elapsed_before(self) -> float:
        """Compute seconds of the sessions before this one (from the loaded state)."""
        return self._elapsed

    def save(self, make: Callable[[], dict[str, Any]], force: bool = False) -> bool:
        if self.path is None or (not force and time.monotonic() - self._last < self.every_s):
            return False
        elapsed = self._elapsed + time.perf_counter() - self._t0
        save_checkpoint(self.path, {"state": make(), "elapsed_s": elapsed})
        self._last = time.monotonic()
        if self.on_save is not None:
            self.on_save()
        return True

    def clear(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# run context, branches
# ---------------------------------------------------------------------------------------------


class RunContext:
    """A run directory opened for side-trips: its config, data, batch order, runtime and the side-trip's
    :class:`ResumeState` (``ctx.state``; disabled when the context is used outside :func:`run_sidetrip`)."""

    def __init__(self, run_dir: str | Path, opts: SideTripOptions, state: ResumeState | None = None):
        self.run_dir = Path(run_dir)
        self.state = state if state is not None else ResumeState(None)
        if not self.run_dir.is_dir():
            raise FileNotFoundError(f"run directory not found: {str(self.run_dir)!r}")
        cfg = load_config(self.run_dir)
        if opts.data_dir is not None:
            cfg = dataclasses.replace(cfg, data_dir=opts.data_dir)
        cfg = dataclasses.replace(cfg, num_workers=auto_workers(1))  # this machine's cores, not the run's
        self.cfg: TrainConfig = cfg
        self.rt: Runtime = make_runtime(opts.device, opts.precision, None, distributed=False)
        data = build_data(cfg)
        self.order = BatchOrder(len(data.train), cfg.batch_size, cfg.data_seed)
        self.data: DataBundle = data.to(self.rt.device)
        self.progress = opts.progress
        self.seed = int(getattr(opts, "seed", 0) or 0)  # the side-trip seed (:meth:`seeded`)
        self.world_size = 1  # ranks of the run (read from the checkpoint a branch starts at)

    @property
    def bn_world(self) -> int:
        """Ranks whose per-rank batches BatchNorm normalised separately in the run (1 with SyncBN)."""
        return 1 if self.cfg.sync_bn else self.world_size

    def batch_plan(self, opts) -> BatchPlan:
        """The :class:`~realnet.sidetrips._losses.BatchPlan` of this run and the options' memory bound."""
        return BatchPlan(self.bn_world, int(getattr(opts, "micro_batch", 0) or 0))

    def ghost_groups(self, batches):
        """``batches`` cut into the run's BatchNorm groups (unchanged for a one-process or SyncBN run)."""
        plan = BatchPlan(self.bn_world)
        return [(xk, yk) for x, y in batches for xk, yk, _ in plan.parts(x, y, True)]

    def branch(self, step: int) -> "Branch":
        """Model + optimizer (with momentum buffers) restored from the checkpoint at ``step``."""
        find_checkpoint(self.run_dir, step)
        ckpt = load_run_checkpoint(self.run_dir, step, map_location=self.rt.device,
                                   use="branch from it with --step {step}")
        with torch.random.fork_rng(devices=[]):
            model = build_model(self.cfg, self.data.num_classes).to(self.rt.device)
        if self.rt.channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = build_optimizer(model, self.cfg)
        restore_checkpoint(ckpt, model, opt, rng=False)
        self.world_size = int(ckpt.get("world_size", 1) or 1)
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

    def seeded(self, base: int) -> int:
        """The seed of a fixed batch whose own seed is ``base``, under this side-trip's ``seed`` option (``base``
        itself for seed 0; disjoint streams for other seeds)."""
        return int(base) if self.seed == 0 else int(base) + _SEED_STRIDE * self.seed

    def heldout(self, n: int, batch_size: int):
        """``n`` fixed held-out batches (seed :data:`HELDOUT_SEED`, :meth:`seeded`)."""
        return self.data.fixed_batches("heldout", n, batch_size, self.seeded(HELDOUT_SEED), self.rt.device)

    def bn_batches(self, n: int, batch_size: int):
        """``n`` fixed training batches for ``update_bn`` (seed :data:`BN_SEED`; 0 = the run's batch size)."""
        bs = batch_size or self.cfg.batch_size
        bs = min(bs, len(self.data.train))
        return [(self.rt.prep(x), y) for x, y in
                self.data.fixed_batches("train", n, bs, self.seeded(BN_SEED), self.rt.device,
                                        augment=self.cfg.augment)]

    def lr(self, step: int, lr: float | None) -> float:
        """``lr``, or the run's lr at ``step`` when None; ConfigError unless finite and > 0."""
        if lr is None:
            lr = lr_at(self.cfg, step)
            if lr <= 0:
                raise ValueError(f"the run's lr at step {step} is {lr}; pass lr > 0 explicitly")
        if not (lr > 0 and math.isfinite(lr)):
            raise ConfigError(f"lr must be a finite number > 0; got {lr!r}")
        return float(lr)

    def evaluate(self, model: nn.Module, bn_batches, opts) -> Metrics:
        """Train / val loss and accuracy of a copy of ``model`` after ``update_bn`` on ``bn_batches``."""
        m = copy.deepcopy(model)
        update_bn(self.ghost_groups(bn_batches), m)  # running statistics of per-rank batches, as the run's
        rt, data = self.rt, self.data
        tr = evaluate(m, data.eval_batches("train", opts.train_eval_samples, opts.eval_batch_size, rt.device), rt)
        va = evaluate(m, data.eval_batches("val", opts.val_samples, opts.eval_batch_size, rt.device), rt)
        return Metrics(train_loss=tr["loss"], train_acc=tr["acc"], val_loss=va["loss"], val_acc=va["acc"])

    def bar(self, total: int, desc: str, initial: int = 0):
        """A tqdm progress bar (disabled with ``progress=False``), starting at ``initial`` (a resumed side-trip)."""
        return tqdm(total=total, desc=desc, initial=initial, disable=not self.progress, dynamic_ncols=True,
                    mininterval=1.0)


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
        """One SGD update; :class:`DivergenceError` (naming the step, the loss and the lr) when the batch's
        loss is not finite."""
        loss, _ = train_step(self.model, self.optimizer, x, y, lr, self.ctx.rt, self.ctx.cfg.label_smoothing,
                             bn_groups=self.ctx.bn_world)
        if not bool(torch.isfinite(loss)):
            raise DivergenceError(f"the side-trip diverged at step {self.step}: train_loss = {float(loss)!r} "
                                  f"(lr = {lr:g}); use a smaller lr")
        self.step += 1
        return loss

    def state_dict(self) -> dict[str, Any]:
        """Model, optimizer (momentum buffers) and step, for :class:`ResumeState`."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> "Branch":
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        return self

    def flat(self) -> torch.Tensor:
        return flat_params(self.model)

    def grad_flat(self) -> torch.Tensor:
        """The loss gradient left in ``.grad`` by the last :meth:`sgd_step` (at the pre-update point)."""
        return torch.cat([p.grad.reshape(-1).float() for p in self.model.parameters()])


# ---------------------------------------------------------------------------------------------
# small shared helpers
# ---------------------------------------------------------------------------------------------


def flat_params(model: nn.Module) -> torch.Tensor:
    """All trainable parameters as one float32 vector (BatchNorm buffers excluded)."""
    return torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])


def set_flat_params(model: nn.Module, vec: torch.Tensor) -> None:
    i = 0
    with torch.no_grad():
        for p in model.parameters():
            n = p.numel()
            p.copy_(vec[i:i + n].view_as(p).to(p.dtype))
            i += n


def dist(a: torch.Tensor, b: torch.Tensor) -> float:
    """L2 distance in float64."""
    return float((a.double() - b.double()).norm())


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine in float64 (NaN for a zero vector)."""
    a, b = a.double(), b.double()
    den = float(a.norm() * b.norm())
    return float(a @ b) / den if den > 0 else float("nan")


def record_points(K: int, every: int, extra=()) -> list[int]:
    """Steps 0..K to record: every ``every``-th, 0 and K, ``extra``, and a log-spaced set of early steps."""
    pts = set(range(0, K + 1, max(1, every))) | {0, K} | {t for t in extra if 0 <= t <= K}
    if K >= 1:
        pts |= set(int(v) for v in np.unique(np.round(np.geomspace(1, K, num=min(K, 25)))))
    return sorted(pts)


def check_lr(value: float | None) -> None:
    """An explicit lr option (None = auto) must be finite and > 0."""
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"lr must be a finite number > 0 (or None for auto); got {value!r}")

