"""``divergence`` (Fig. 6, 8, eq. 13): from ``S`` three side-trips of ``steps`` = K updates: ``A`` (main batch
order, lr), ``B`` (batch order with data seed ``other_seed``, lr) and ``H`` (main order, lr/2); lr is
constant (``schedule=constant``) or the run's own schedule (``schedule=run``). Optionally a fixed held-out batch
along them (Lemma 2's premise) and pairs of batch orders at ``lr * f`` (eq. 13); details: ``docs/side-trips.md``.

Outputs (:class:`DivergenceResult`):

* ``divergence.csv`` (:class:`DivergenceDistances`, per recorded ``t``): ``t``, ``step``, ``lr`` (empty at
  ``t = K``), ``dist_A_B``, ``dist_twopoint_H`` (``||(theta^A_S + theta^A_t)/2 - theta^H_t||``), ``dist_A_H``,
  ``dist_A_start``, ``dist_B_start``, ``dist_H_start``, ``dist_twopoint_start``.
* ``divergence_losses.csv`` (:class:`DivergenceEvaluations`): ``t``, ``model`` (A | B | H | twopoint),
  ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc`` at ``eval_steps``.
* ``endpoint_distances.csv`` (:class:`EndpointDistances`): ``t``, ``step``, ``dist_to_B_end``, ``dist_to_A_end``.
* ``checkpoint_distances.csv`` (:class:`CheckpointDistances`): ``step`` (the run's checkpoints), ``dist_to_B_end``,
  ``dist_to_A_end``.
* ``divergence_fixed_batch.csv`` (:class:`DivergenceFixedBatch`, when ``fixed_batch_every`` > 0): ``t``, ``model``
  (A | B | H), ``loss``, ``grad_norm``, ``cos_start`` (cosine of its gradient with the gradient at theta_S) of one
  fixed held-out batch (seed ``fixed_batch_seed``): Lemma 2's premise.
* ``pair_distances.csv`` (:class:`PairDistances`, when ``pair_factors`` is not empty): ``t``, ``factor``, ``lr``,
  ``dist`` (weights), ``dist_function`` (rms L2 difference of log-probabilities on ``function_samples`` held-out
  examples; NaN off the ``function_points`` steps).
* ``summary.json``: final distances, ``twopoint_to_half_vs_A_B``, the losses at the last eval step,
  ``fixed_batch`` (:class:`realnet.regime.FixedBatchChange` per model), ``pairs_end``,
  ``pair_train_loss_quarters``, ``timing`` (wall and CPU seconds of ``pairs`` and ``fixed_batch``).

Resumable (``save_every_s``): the branches (A, B, H and the pairs' members), the records and the snapshots.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

from sgdtraj.timing import Stopwatch

from ..checkpoint import find_checkpoint, list_checkpoints, load_checkpoint
from ..config import ConfigError, check_choice, check_int
from ..data import BatchOrder
from ..regime import FixedBatchChange, fixed_batch_change
from ..trainer import lr_at
from ._losses import batch_grad, functional_model, grad_vector
from ._results import Metrics, SideTripResult, Table, column
from ._runner import RunContext, SideTrip, SideTripOptions, dist, record_points, run_sidetrip, set_flat_params

__all__ = ["DivergenceOptions", "DivergenceResult", "DivergenceDistances", "DivergenceEvaluations",
           "EndpointDistances", "CheckpointDistances", "DivergenceFixedBatch", "PairDistances", "divergence",
           "SIDETRIP", "FIXED_BATCH_SEED", "FUNCTION_SEED"]

FIXED_BATCH_SEED = 424_242  # the fixed held-out batch of Lemma 2's premise (the alignment side-trip's fixed-batch seed)
FUNCTION_SEED = 777  # held-out examples of the pairs' function-space distance


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
    fixed_batch_every: int = 10  # record the fixed held-out batch along A, B, H every N steps (+ log-spaced; 0 = off)
    fixed_batch_seed: int = FIXED_BATCH_SEED  # seed of that batch (from the held-out split)
    fixed_batch_size: int = 0  # its size (0 = the run's batch size, capped by the held-out split)
    pair_factors: list[float] = field(default_factory=list)  # lr factors of extra batch-order pairs (e.g. [0.5, 0.25])
    function_points: int = 6  # log-spaced steps (plus K) with the pairs' function-space distance
    function_samples: int = 256  # held-out examples of the function-space distance

    def validate(self, step: int) -> None:
        check_int("steps", self.steps, 1)
        check_int("fixed_batch_every", self.fixed_batch_every, 0)
        check_int("fixed_batch_size", self.fixed_batch_size, 0)
        check_int("function_points", self.function_points, 1)
        check_int("function_samples", self.function_samples, 1)
        for f in self.pair_factors:
            if not (isinstance(f, (int, float)) and 0 < f < 1):
                raise ConfigError(f"pair_factors must be numbers in (0, 1) (f = 1 is the pair A, B); got {f!r}")
        if len(set(self.pair_factors)) != len(self.pair_factors):
            raise ConfigError(f"pair_factors must be distinct; got {self.pair_factors}")
        check_int("record_every", self.record_every, 1)
        check_int("snapshots", self.snapshots, 2)
        check_int("max_checkpoints", self.max_checkpoints, 0)
        check_int("bn_batches", self.bn_batches, 1)
        check_choice("schedule", self.schedule, ("constant", "run"))
        if self.schedule == "run" and self.lr is not None:
            raise ConfigError("lr cannot be combined with schedule=run")


@dataclass(frozen=True, eq=False)
class DivergenceDistances(Table):
    """``divergence.csv``: distances between the side-trips A (lr), B (other batch order) and H (lr/2)."""

    t: np.ndarray = column("int", "updates since S")
    step: np.ndarray = column("int", "absolute step S + t")
    lr: np.ndarray = column("float", "lr of update t of A and B (NaN, written empty, at t = K)")
    dist_A_B: np.ndarray = column("float", "||theta^A_t - theta^B_t||")
    dist_twopoint_H: np.ndarray = column("float", "||(theta^A_S + theta^A_t)/2 - theta^H_t||")
    dist_A_H: np.ndarray = column("float", "||theta^A_t - theta^H_t||")
    dist_A_start: np.ndarray = column("float", "||theta^A_t - theta_S||")
    dist_B_start: np.ndarray = column("float", "||theta^B_t - theta_S||")
    dist_H_start: np.ndarray = column("float", "||theta^H_t - theta_S||")
    dist_twopoint_start: np.ndarray = column("float", "||(theta^A_S + theta^A_t)/2 - theta_S||")

    def blank(self):
        return {"lr": np.isnan(self.lr)}


@dataclass(frozen=True, eq=False)
class DivergenceEvaluations(Table):
    """``divergence_losses.csv``: loss and accuracy of A, B, H and the two-point average at ``eval_steps``."""

    t: np.ndarray = column("int", "updates since S")
    model: np.ndarray = column("str", "A | B | H | twopoint")
    train_loss: np.ndarray = column("float", "training-subset loss (eval mode, BN recomputed)")
    train_acc: np.ndarray = column("float", "training-subset accuracy")
    val_loss: np.ndarray = column("float", "validation loss")
    val_acc: np.ndarray = column("float", "validation accuracy")


@dataclass(frozen=True, eq=False)
class EndpointDistances(Table):
    """``endpoint_distances.csv``: snapshots of A vs the end points of B and A."""

    t: np.ndarray = column("int", "updates since S")
    step: np.ndarray = column("int", "absolute step")
    dist_to_B_end: np.ndarray = column("float", "||theta^A_t - theta^B_K||")
    dist_to_A_end: np.ndarray = column("float", "||theta^A_t - theta^A_K||")


@dataclass(frozen=True, eq=False)
class CheckpointDistances(Table):
    """``checkpoint_distances.csv``: the run's own checkpoints vs the end points of B and A."""

    step: np.ndarray = column("int", "checkpoint step of the run")
    dist_to_B_end: np.ndarray = column("float", "||theta_step - theta^B_K||")
    dist_to_A_end: np.ndarray = column("float", "||theta_step - theta^A_K||")


@dataclass(frozen=True, eq=False)
class DivergenceFixedBatch(Table):
    """``divergence_fixed_batch.csv``: a fixed held-out batch along A, B and H (Lemma 2's premise)."""

    t: np.ndarray = column("int", "updates since S")
    model: np.ndarray = column("str", "A | B | H")
    loss: np.ndarray = column("float", "the fixed batch's loss (batch-statistics BN)")
    grad_norm: np.ndarray = column("float", "the norm of its loss gradient")
    cos_start: np.ndarray = column("float", "cosine of its loss gradient with the gradient at theta_S")


@dataclass(frozen=True, eq=False)
class PairDistances(Table):
    """``pair_distances.csv``: distance between the two members (main / other batch order) of each lr pair."""

    t: np.ndarray = column("int", "updates since S")
    factor: np.ndarray = column("float", "lr factor f of the pair (lr * f)")
    lr: np.ndarray = column("float", "the pair's constant lr")
    dist: np.ndarray = column("float", "||theta^main_t - theta^other_t|| (weights)")
    dist_function: np.ndarray = column("float", "rms L2 difference of log-probabilities (NaN if not computed)")


def _empty(table):
    return lambda: table(*([[]] * len(table.columns())))


@dataclass(eq=False)
class DivergenceResult(SideTripResult):
    """Result of :func:`divergence`; ``final`` holds the last record's distances, ``losses`` the
    evaluations at ``losses_at`` (the last eval step) per model."""

    NAME: ClassVar[str] = "divergence"
    TABLES: ClassVar[dict[str, str]] = {"distances": "divergence.csv", "evaluations": "divergence_losses.csv",
                                        "endpoint_distances": "endpoint_distances.csv",
                                        "checkpoint_distances": "checkpoint_distances.csv",
                                        "fixed_batch_track": "divergence_fixed_batch.csv",
                                        "pair_distances": "pair_distances.csv"}

    steps: int
    schedule: str
    lr: float | None
    other_seed: int
    final: dict[str, float]
    twopoint_to_half_vs_A_B: float | None
    losses_at: int
    losses: dict[str, Metrics]
    endpoint_distance_first_last: list[float] | None
    distances: DivergenceDistances
    evaluations: DivergenceEvaluations
    endpoint_distances: EndpointDistances
    checkpoint_distances: CheckpointDistances
    # Lemma 2's premise and the lr pairs (absent from results saved before they existed: loaded as empty)
    fixed_batch_seed: int = FIXED_BATCH_SEED
    fixed_batch_size: int = 0
    fixed_batch: dict[str, FixedBatchChange] = field(default_factory=dict)
    pair_factors: list[float] = field(default_factory=list)
    pairs_end: dict[str, float] = field(default_factory=dict)
    pair_train_loss_quarters: dict[str, list[float]] = field(default_factory=dict)
    timing: dict = field(default_factory=dict)  # sgdtraj.timing.Stopwatch.as_dict() of pairs, fixed_batch
    fixed_batch_track: DivergenceFixedBatch = field(default_factory=_empty(DivergenceFixedBatch))
    pair_distances: PairDistances = field(default_factory=_empty(PairDistances))

    @staticmethod
    def headline_of(summary):
        return {"final": summary["final"], "twopoint_to_half_vs_A_B": summary["twopoint_to_half_vs_A_B"]}


def divergence(run_dir, step: int, out_dir, options: DivergenceOptions | None = None, **overrides) -> DivergenceResult:
    """Distances between side-trips with different batch orders / half lr / end points (Fig. 6, 8)."""
    return run_sidetrip(SIDETRIP, run_dir, step, out_dir, options, overrides)


def _compute(ctx: RunContext, S: int, opts: DivergenceOptions) -> DivergenceResult:
    K = int(opts.steps)
    cfg = ctx.cfg
    rt = ctx.rt
    if opts.schedule == "constant":
        lr = ctx.lr(S, opts.lr)
        lrs = np.full(K, lr)
    else:
        lr = None
        lrs = np.array([lr_at(cfg, S + j) for j in range(K)])
    other = cfg.data_seed + 1 if opts.other_seed is None else int(opts.other_seed)
    if other == cfg.data_seed:
        raise ConfigError(f"other_seed must differ from the run's data_seed ({cfg.data_seed})")
    order_b = BatchOrder(len(ctx.data.train), cfg.batch_size, other)
    base = ctx.branch(S)
    bn_batches = ctx.bn_batches(opts.bn_batches, opts.bn_batch_size)
    A, Bb, H = base.clone(), base.clone(), base.clone()
    v0 = base.flat()
    eval_steps = sorted({int(t) for t in opts.eval_steps if 0 <= int(t) <= K} | {K})
    rec = set(record_points(K, opts.record_every, eval_steps))
    snap_pts = set(int(v) for v in np.unique(np.round(np.geomspace(1, max(K, 1), opts.snapshots - 1)))) | {0, K}
    snaps: dict[int, torch.Tensor] = {}
    rows, loss_rows = [], []
    twop = copy.deepcopy(base.model)

    # Lemma 2's premise: one fixed held-out batch along A, B, H
    sw = Stopwatch()  # phases timed apart: the fixed-batch records and the extra pairs
    fb_rec: set[int] = set(record_points(K, opts.fixed_batch_every)) if opts.fixed_batch_every else set()
    fb_size = min(opts.fixed_batch_size or cfg.batch_size, len(ctx.data.heldout))
    fb_rows: list[list] = []
    if fb_rec:
        fixed = ctx.data.fixed_batches("heldout", 1, fb_size, ctx.seeded(opts.fixed_batch_seed), rt.device)[0]
        fmodel, _ = functional_model(base.model, "batch")
        plan = ctx.batch_plan(opts)  # the run's per-rank BatchNorm groups and the memory bound
        g_start = grad_vector(batch_grad(fmodel, dict(base.model.named_parameters()), *fixed, rt, plan=plan)[1])
        g_start = g_start.double()

    # lr pairs (eq. 13): (main order, other order) at lr * f; f = 1 is (A, B), f = 0.5 reuses H as the main member
    pairs: dict[float, tuple] = {}
    if opts.pair_factors:
        pairs[1.0] = (A, Bb)
        for f in sorted(opts.pair_factors, reverse=True):
            pairs[float(f)] = (H if f == 0.5 else base.clone(), base.clone())
        probe_x = ctx.data.fixed_batches("heldout", 1, min(opts.function_samples, len(ctx.data.heldout)),
                                         ctx.seeded(FUNCTION_SEED), rt.device)[0][0]
        pmodel, _ = functional_model(base.model, "batch")
        fn_pts = set(int(v) for v in np.unique(np.round(np.geomspace(1, max(K, 1), opts.function_points)))) | {K}
    else:
        fn_pts = set()
    pair_rec = rec | fn_pts
    pair_rows: list[list] = []
    pair_losses: dict[float, list] = {f: [] for f in pairs}

    @torch.no_grad()
    def logp(model):
        with rt.autocast():
            out = functional_call(pmodel, dict(model.named_parameters()), (rt.prep(probe_x),))
        return F.log_softmax(out.double(), 1)

    extra = {f: (m1, m2) for f, (m1, m2) in pairs.items() if f != 1.0}  # members other than A, B, H

    def state():
        return {"t": t + 1, "A": A.state_dict(), "B": Bb.state_dict(), "H": H.state_dict(),
                "pairs": {str(f): [m.state_dict() if m is not H else None for m in ms] for f, ms in extra.items()},
                "rows": rows, "loss_rows": loss_rows, "snaps": snaps, "fb_rows": fb_rows, "pair_rows": pair_rows,
                "pair_losses": {str(f): v for f, v in pair_losses.items()},
                "timing": sw.as_dict()}

    t0 = 0
    saved = ctx.state.load()  # resume: the branches, the records and snapshots so far, the next t
    if saved is not None:
        A.load_state_dict(saved["A"])
        Bb.load_state_dict(saved["B"])
        H.load_state_dict(saved["H"])
        for f, ms in extra.items():
            for m, sd in zip(ms, saved["pairs"][str(f)]):
                if sd is not None:
                    m.load_state_dict(sd)
        rows, loss_rows, t0 = saved["rows"], saved["loss_rows"], int(saved["t"])
        snaps = {int(k): v for k, v in saved["snaps"].items()}
        fb_rows, pair_rows = saved["fb_rows"], saved["pair_rows"]
        pair_losses = {float(f): v for f, v in saved["pair_losses"].items()}
        sw = Stopwatch.from_dict(saved["timing"])
    bar = ctx.bar(K + 1, f"divergence step {S}", initial=t0)
    itA, itB = ctx.batches(S + t0, S + K), ctx.batches(S + t0, S + K, order_b)
    for t in range(t0, K + 1):
        if t in rec or t in snap_pts or t in eval_steps:
            va, vb, vh = A.flat(), Bb.flat(), H.flat()
            vt = (v0 + va) / 2
            if t in rec:
                rows.append([t, S + t, float(lrs[t]) if t < K else None, dist(va, vb), dist(vt, vh), dist(va, vh),
                             dist(va, v0), dist(vb, v0), dist(vh, v0), dist(vt, v0)])
            if t in snap_pts:
                snaps[t] = va.cpu()
            if t in eval_steps:
                set_flat_params(twop, vt)
                for name, model in (("A", A.model), ("B", Bb.model), ("H", H.model), ("twopoint", twop)):
                    m = ctx.evaluate(model, bn_batches, opts)
                    loss_rows.append([t, name, m.train_loss, m.train_acc, m.val_loss, m.val_acc])
        if t in fb_rec:
            with sw.phase("fixed_batch"):
                for name, br in (("A", A), ("B", Bb), ("H", H)):
                    loss, g = batch_grad(fmodel, dict(br.model.named_parameters()), *fixed, rt, plan=plan)
                    gv = grad_vector(g).double()
                    cos = float(gv @ g_start / (gv.norm() * g_start.norm()))
                    fb_rows.append([t, name, float(loss), float(gv.norm()), cos])
        if pairs and t in pair_rec:
            with sw.phase("pairs"):
                for f, (m1, m2) in pairs.items():
                    if t == 0:
                        dfun = 0.0  # both members are theta_S
                    elif t in fn_pts:
                        dfun = float((logp(m1.model) - logp(m2.model)).pow(2).sum(1).mean().sqrt())
                    else:
                        dfun = None
                    pair_rows.append([t, f, float(lrs[min(t, K - 1)]) * f, dist(m1.flat(), m2.flat()), dfun])
        if t < K:
            xa, ya = next(itA)
            xb, yb = next(itB)
            la = A.sgd_step(xa, ya, float(lrs[t]))
            lh = H.sgd_step(xa, ya, float(lrs[t]) / 2)
            lb = Bb.sgd_step(xb, yb, float(lrs[t]))
            if pairs:
                with sw.phase("pairs"):
                    for f, (m1, m2) in pairs.items():
                        if f == 1.0:
                            pair_losses[f].append((la + lb) / 2)
                            continue
                        l1 = lh if m1 is H else m1.sgd_step(xa, ya, float(lrs[t]) * f)
                        pair_losses[f].append((l1 + m2.sgd_step(xb, yb, float(lrs[t]) * f)) / 2)
        bar.update(1)
        if t < K:
            ctx.state.save(state)
    bar.close()
    a_end, b_end = A.flat().cpu(), Bb.flat().cpu()
    ep_rows = [[t, S + t, dist(v, b_end), dist(v, a_end)] for t, v in sorted(snaps.items())]
    ck = list_checkpoints(ctx.run_dir)
    if opts.max_checkpoints and len(ck) > opts.max_checkpoints:
        ck = [ck[int(i)] for i in np.unique(np.round(np.linspace(0, len(ck) - 1, opts.max_checkpoints)))]
    elif not opts.max_checkpoints:
        ck = []
    ck_rows = []
    for c in ck:
        sd = load_checkpoint(find_checkpoint(ctx.run_dir, c), map_location="cpu")["model"]
        v = torch.cat([sd[k].reshape(-1).float() for k, _ in base.model.named_parameters()])
        ck_rows.append([c, dist(v, b_end), dist(v, a_end)])
    distances = DivergenceDistances(*zip(*rows))
    evaluations = DivergenceEvaluations(*(zip(*loss_rows) if loss_rows else [[]] * 6))
    last = {c: getattr(distances, c)[-1].item() for c in distances.columns()[3:]}
    at = eval_steps[-1]
    final_losses = {r[1]: Metrics(*r[2:]) for r in loss_rows if r[0] == at}
    track = DivergenceFixedBatch(*(zip(*fb_rows) if fb_rows else [[]] * 5))
    fixed_summary = {}
    for name in ("A", "B", "H") if fb_rows else ():
        sel = track.model == name
        fixed_summary[name] = fixed_batch_change(track.loss[sel], track.grad_norm[sel])
    pair_table = PairDistances(*(zip(*pair_rows) if pair_rows else [[]] * 5))
    pairs_end = {str(f): float(pair_table.dist[(pair_table.factor == f) & (pair_table.t == K)][0]) for f in pairs}
    quarters = {str(f): [float(torch.stack(c).mean()) for c in _quarters(v)] for f, v in pair_losses.items() if v}
    return DivergenceResult(
        run=str(ctx.run_dir), step=S, steps=K, schedule=opts.schedule, lr=lr, other_seed=other, final=last,
        twopoint_to_half_vs_A_B=last["dist_twopoint_H"] / last["dist_A_B"] if last["dist_A_B"] > 0 else None,
        losses_at=at, losses=final_losses,
        endpoint_distance_first_last=[ep_rows[0][2], ep_rows[-1][2]] if ep_rows else None,
        distances=distances, evaluations=evaluations, endpoint_distances=EndpointDistances(*zip(*ep_rows)),
        checkpoint_distances=CheckpointDistances(*(zip(*ck_rows) if ck_rows else [[]] * 3)),
        fixed_batch_seed=int(opts.fixed_batch_seed), fixed_batch_size=int(fb_size) if fb_rows else 0,
        fixed_batch=fixed_summary, pair_factors=sorted(pairs, reverse=True), pairs_end=pairs_end,
        pair_train_loss_quarters=quarters,
        timing=sw.as_dict(),
        fixed_batch_track=track, pair_distances=pair_table)


def _quarters(values: list) -> list[list]:
    """``values`` split into 4 consecutive, nearly equal parts (fewer when there are fewer than 4 values)."""
    n = len(values)
    edges = [round(i * n / 4) for i in range(5)]
    return [values[a:b] for a, b in zip(edges, edges[1:]) if b > a]


SIDETRIP = SideTrip(name="divergence", options=DivergenceOptions, compute=_compute, result=DivergenceResult,
                    doc="side-trips with another batch order and half the lr from a checkpoint: distances, the "
                        "two-point average vs lr/2, distances to independent end points (Fig. 6, 8)",
                    function=divergence)
