"""``averaging`` (Fig. 1, 5, 10, 14): continue the main trajectory from ``S`` for ``steps`` = K updates at a
constant ``lr`` while tracking averages of it; for every kernel and reported step ``k`` an equivalent side-trip
from ``S`` with the same batches and the schedule ``quadsgd.equivalent_schedule(kernel, [lr]*k)`` (Table 1:
update ``S+i`` gets ``lr * sum_{m<k-i} mu_m``).

``kernels``: quadsgd specs (:func:`quadsgd.kernels.parse_kernel`); ``swa``, ``twopoint`` and ``npoint:n`` take
the reported step ``k`` as their length; also ``swa:W``, ``twopoint:D``, ``npoint:n:D``, ``ema:a`` (started at
``theta_S``), ``last``, ``kernel:w0,w1,...``. A step ``k`` at which a kernel would need an iterate before ``S``
is skipped. Averages are :class:`realnet.averaging.KernelAveragedModel` instances. Templates and the fit rule:
``docs/side-trips.md``.

Outputs (:class:`AveragingResult`):

* ``averaging.csv`` (:class:`AveragingTable`, long format): ``kernel`` (spec, or ``trajectory``), ``kernel_repr``,
  ``k``, ``model`` (``average`` | ``sidetrip`` | ``trajectory``), ``train_loss``, ``train_acc``, ``val_loss``,
  ``val_acc``, ``l2_to_partner`` (average <-> its side-trip; empty for the trajectory), ``l2_from_start``.
* ``trajectory.csv`` (:class:`TrajectoryLosses`): ``step``, ``offset`` (from S), ``lr``, ``train_loss``.
* ``schedules.csv`` (:class:`ScheduleTable`): ``kernel``, ``k``, ``offset`` i (update ``S+i``), ``lr``.
* ``summary.json``: ``step``, ``lr``, ``steps``, ``report_steps``, ``bn_recompute``, ``trajectory`` = [{``k``,
  ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc``, ``l2_from_start``}, ...], ``kernels`` = {spec:
  {``spec``, ``results``: [{``k``, ``kernel``, ``average``: {``train_loss``, ``train_acc``, ``val_loss``,
  ``val_acc``}, ``sidetrip``: {same keys}, ``l2_distance``, ``l2_average_from_start``,
  ``l2_sidetrip_from_start``, ``relative_l2``}, ...], ``skipped``: [k, ...]}}, ``sidetrip_runs``,
  ``sidetrip_updates``.

Resumable (``save_every_s``): the main branch, the averages, the records, the position among the equivalent
side-trips and their results.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

import quadsgd as qs
from quadsgd.kernels import parse_kernel as _parse_quadsgd_kernel

from ..averaging import KernelAveragedModel
from ..config import ConfigError, check_int
from ._results import Metrics, SideTripResult, Table, column
from ._runner import Branch, RunContext, SideTrip, SideTripOptions, dist, flat_params, run_sidetrip

__all__ = ["AveragingOptions", "AveragingResult", "AveragingTable", "TrajectoryLosses", "ScheduleTable",
           "TrajectoryPoint", "KernelPoint", "KernelResults", "BnRecompute", "KernelSpec", "parse_kernel",
           "kernel_at", "averaging_sidetrip", "SIDETRIP"]

_PROBE_LENGTH = 1 << 20  # a length that fills every template when a spec is only validated


# ---------------------------------------------------------------------------------------------
# kernel specs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelSpec:
    """A validated side-trip kernel spec (quadsgd's grammar; templates ``swa``, ``twopoint``, ``npoint:n`` take
    the reported step as their length). :meth:`at` gives the kernel at a reported step."""

    spec: str

    def at(self, k: int) -> qs.AveragingKernel | None:
        """The quadsgd kernel at reported step ``k``; None if it does not fit in ``k`` steps (it would need
        iterates before the checkpoint)."""
        try:
            kernel = _parse_quadsgd_kernel(self.spec, length=int(k))
        except ValueError:  # a template too long for k (npoint:n with k < n-1, twopoint/swa with k = 0)
            return None
        return kernel if _fits(kernel, int(k)) else None


def _fits(kernel: qs.AveragingKernel, k: int) -> bool:
    return kernel.tracking().kind == "geometric" or kernel.support <= k + 1


def parse_kernel(spec: str) -> KernelSpec:
    """Validate a side-trip kernel spec; :class:`ConfigError` (``bad kernel spec ...``) naming the forms otherwise."""
    if not isinstance(spec, str):
        raise ConfigError(f"bad kernel spec {spec!r}: a kernel spec is a string such as 'ema:0.01'")
    try:
        _parse_quadsgd_kernel(spec, length=_PROBE_LENGTH)
    except ValueError as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith("bad kernel spec") else f"bad kernel spec {spec!r}: {msg}") from None
    return KernelSpec(spec)


def kernel_at(spec: str, k: int) -> qs.AveragingKernel | None:
    """The quadsgd kernel that spec ``spec`` denotes at reported step ``k`` (None if it does not fit in
    ``k`` steps, i.e. needs iterates before the checkpoint); :class:`ConfigError` for a bad spec."""
    return parse_kernel(spec).at(k)


# ---------------------------------------------------------------------------------------------
# options, result
# ---------------------------------------------------------------------------------------------


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

    def validate(self, step: int) -> None:
        check_int("steps", self.steps, 1)
        check_int("bn_batches", self.bn_batches, 1)
        check_int("train_eval_samples", self.train_eval_samples, 1)
        check_int("val_samples", self.val_samples, 1)
        if not self.kernels:
            raise ConfigError("kernels must name at least one kernel (e.g. swa, ema:0.01, twopoint, npoint:3)")
        for s in self.kernels:
            parse_kernel(s)
        if len(set(self.kernels)) != len(self.kernels):
            raise ConfigError(f"kernels must be distinct; got {self.kernels}")


@dataclass(frozen=True, eq=False)
class AveragingTable(Table):
    """``averaging.csv``: one row per (kernel, k, model)."""

    kernel: np.ndarray = column("str", "kernel spec, or 'trajectory' for the main trajectory point")
    kernel_repr: np.ndarray = column("str", "the quadsgd kernel at k, e.g. SWA(window=10)")
    k: np.ndarray = column("int", "reported step (offset from S)")
    model: np.ndarray = column("str", "average | sidetrip | trajectory")
    train_loss: np.ndarray = column("float", "training-subset loss (eval mode, BN recomputed)")
    train_acc: np.ndarray = column("float", "training-subset accuracy")
    val_loss: np.ndarray = column("float", "validation loss")
    val_acc: np.ndarray = column("float", "validation accuracy")
    l2_to_partner: np.ndarray = column("float", "||average - its equivalent side-trip|| (empty for the trajectory)")
    l2_from_start: np.ndarray = column("float", "||theta - theta_S||")

    def blank(self):
        return {"l2_to_partner": self.model == "trajectory"}


@dataclass(frozen=True, eq=False)
class TrajectoryLosses(Table):
    """``trajectory.csv``: the batch losses of the continued main trajectory."""

    step: np.ndarray = column("int", "absolute update index")
    offset: np.ndarray = column("int", "offset from S")
    lr: np.ndarray = column("float", "learning rate of the update")
    train_loss: np.ndarray = column("float", "training-batch loss before the update")


@dataclass(frozen=True, eq=False)
class ScheduleTable(Table):
    """``schedules.csv``: the equivalent schedule of every (kernel, k)."""

    kernel: np.ndarray = column("str", "kernel spec")
    k: np.ndarray = column("int", "reported step")
    offset: np.ndarray = column("int", "update S + offset")
    lr: np.ndarray = column("float", "its learning rate")


@dataclass
class TrajectoryPoint:
    """The continued main trajectory at reported step k."""

    k: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    l2_from_start: float


@dataclass
class KernelPoint:
    """One kernel at one reported step: its average vs its equivalent side-trip."""

    k: int
    kernel: str
    average: Metrics
    sidetrip: Metrics
    l2_distance: float
    l2_average_from_start: float
    l2_sidetrip_from_start: float
    relative_l2: float | None


@dataclass
class KernelResults:
    """Everything about one kernel spec: a point per reported step that fits, and the steps skipped."""

    spec: str
    results: list[KernelPoint]
    skipped: list[int]


@dataclass
class BnRecompute:
    method: str
    batches: int
    batch_size: int


@dataclass(eq=False)
class AveragingResult(SideTripResult):
    """Result of :func:`averaging_sidetrip`; see the module docstring."""

    NAME: ClassVar[str] = "averaging"
    TABLES: ClassVar[dict[str, str]] = {"table": "averaging.csv", "trajectory_losses": "trajectory.csv",
                                        "schedules": "schedules.csv"}

    lr: float
    steps: int
    report_steps: list[int]
    bn_recompute: BnRecompute
    train_eval_samples: int
    val_samples: int
    trajectory: list[TrajectoryPoint]
    kernels: dict[str, KernelResults]
    sidetrip_runs: int
    sidetrip_updates: int
    table: AveragingTable
    trajectory_losses: TrajectoryLosses
    schedules: ScheduleTable

    @staticmethod
    def headline_of(summary):
        out = {}
        for spec, v in summary["kernels"].items():
            if v["results"]:
                r = v["results"][-1]
                out[spec] = {"k": r["k"], "avg_val_acc": r["average"]["val_acc"],
                             "side_val_acc": r["sidetrip"]["val_acc"], "avg_train_loss": r["average"]["train_loss"],
                             "side_train_loss": r["sidetrip"]["train_loss"], "rel_l2": r["relative_l2"]}
        return out


def averaging_sidetrip(run_dir, step: int, out_dir, options: AveragingOptions | None = None,
                       **overrides) -> AveragingResult:
    """Averages of the continued trajectory vs their equivalent-schedule side-trips (Fig. 1, 5, 10, 14)."""
    return run_sidetrip(SIDETRIP, run_dir, step, out_dir, options, overrides)


# ---------------------------------------------------------------------------------------------
# the computation
# ---------------------------------------------------------------------------------------------


@dataclass
class _AvgSpec:
    """One (kernel spec, reported step k): the kernel at k, its equivalent schedule, and what was measured."""

    spec: str
    k: int
    kernel: Any
    schedule: np.ndarray
    vec: torch.Tensor | None = None  # parameters of the average at k
    metrics: Metrics | None = None


class _TrajectoryAverages:
    """The averaging internals, in one place: a :class:`realnet.averaging.KernelAveragedModel` per
    (kernel, k) -- the same implementation a user gets for their own loop. The model at construction is
    ``theta_S`` (offset 0); feed ``theta_{S+offset}`` with :meth:`update` for offsets 1, 2, ...;
    :meth:`module` is the average of a spec at its ``k`` once offset ``k`` was fed. Geometric (EMA)
    kernels are kept continuously (``at_step=None``) and shared by all k of one decay; finite kernels are
    evaluated at ``at_step=k`` (a running weighted mean updated at their point times only).
    """

    def __init__(self, model: nn.Module, specs: list[_AvgSpec]):
        self._geometric: dict[str, KernelAveragedModel] = {}
        self._points: dict[int, KernelAveragedModel] = {}  # index of the spec in ``specs`` -> its average
        self._index = {id(sp): i for i, sp in enumerate(specs)}
        for i, sp in enumerate(specs):
            if sp.kernel.tracking().kind == "geometric":
                key = str(sp.kernel)
                if key not in self._geometric:
                    self._geometric[key] = KernelAveragedModel(model, sp.kernel)
                continue
            self._points[i] = KernelAveragedModel(model, sp.kernel, at_step=sp.k)
        self._specs = specs

    def update(self, offset: int, model: nn.Module) -> None:
        """Feed ``theta_{S+offset}`` (the current parameters of ``model``), offset >= 1."""
        for i, avg in self._points.items():
            if self._specs[i].k >= offset:
                avg.update_parameters(model)
        for avg in self._geometric.values():
            avg.update_parameters(model)

    def module(self, sp: _AvgSpec) -> nn.Module:
        """The averaged model of ``sp`` (valid once offset ``sp.k`` was fed)."""
        if sp.kernel.tracking().kind == "geometric":
            return self._geometric[str(sp.kernel)].module
        return self._points[self._index[id(sp)]].module

    def release(self, sp: _AvgSpec) -> None:
        """Free the copy held for ``sp`` (geometric averages are shared and kept)."""
        self._points.pop(self._index[id(sp)], None)

    def state_dict(self) -> dict[str, Any]:
        """Every average still held (``KernelAveragedModel.state_dict``), for the resume state."""
        return {"geometric": {k: a.state_dict() for k, a in self._geometric.items()},
                "points": {i: a.state_dict() for i, a in self._points.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, a in self._geometric.items():
            a.load_state_dict(state["geometric"][k])
        points = {int(i): v for i, v in state["points"].items()}
        for i in list(self._points):
            if i in points:
                self._points[i].load_state_dict(points[i])
            else:  # released before the state was saved
                del self._points[i]


def _plan(kernels: list[str], ks: list[int], lr: float) -> tuple[list[_AvgSpec], dict[str, list[int]]]:
    """Every (spec, k) that fits with its equivalent schedule, and the k skipped per spec."""
    specs: list[_AvgSpec] = []
    skipped: dict[str, list[int]] = {s: [] for s in kernels}
    for s in kernels:
        ks_ = parse_kernel(s)
        for k in ks:
            kern = ks_.at(k)
            if kern is None:
                skipped[s].append(k)
                continue
            specs.append(_AvgSpec(s, k, kern, qs.equivalent_schedule(kern, np.full(k, lr))))
    return specs, skipped


def _share_schedules(specs: list[_AvgSpec], share_prefix: bool) -> list[tuple[np.ndarray, list[_AvgSpec]]]:
    """Equivalent side-trips, grouped: one run serves every spec whose schedule is a prefix of its own."""
    runs: list[tuple[np.ndarray, list[_AvgSpec]]] = []
    for sp in sorted(specs, key=lambda s: -s.k):
        for sched, members in runs:
            if share_prefix and np.array_equal(sched[:sp.k], sp.schedule):
                members.append(sp)
                break
        else:
            runs.append((sp.schedule, [sp]))
    return runs


def _compute(ctx: RunContext, S: int, opts: AveragingOptions) -> AveragingResult:
    K = int(opts.steps)
    lr = ctx.lr(S, opts.lr)
    ks = sorted({int(k) for k in opts.report_steps if 1 <= int(k) <= K} | {K})
    base = ctx.branch(S)
    bn_batches = ctx.bn_batches(opts.bn_batches, opts.bn_batch_size)
    v0 = base.flat()
    specs, skipped = _plan(opts.kernels, ks, lr)

    main = base.clone()
    averages = _TrajectoryAverages(main.model, specs)
    runs = _share_schedules(specs, opts.share_prefix)
    index = {id(sp): i for i, sp in enumerate(specs)}

    # the resume state: first the continued trajectory (main branch, averages, records; j = updates done),
    # then the equivalent side-trips (results by spec index, position {run, i, branch})
    traj_rows, trajectory, side, j0, side_pos = [], [], {}, 0, None
    saved = ctx.state.load()
    if saved is not None:
        j0, traj_rows = int(saved["j"]), saved["traj_rows"]
        trajectory = [TrajectoryPoint(**t) for t in saved["trajectory"]]
        for i, (vec, met) in saved["averaged"].items():
            specs[int(i)].vec, specs[int(i)].metrics = vec.to(v0.device), Metrics(**met)
        if j0 < K:
            main.load_state_dict(saved["main"])
            averages.load_state_dict(saved["averages"])
        else:
            side = {int(i): {**r, "metrics": Metrics(**r["metrics"])} for i, r in saved["side"].items()}
            side_pos = saved["side_pos"]

    def state(j: int, pos: dict | None = None) -> dict:
        st = {"j": j, "traj_rows": traj_rows, "trajectory": [dataclasses.asdict(t) for t in trajectory],
              "averaged": {i: (sp.vec, dataclasses.asdict(sp.metrics)) for i, sp in enumerate(specs)
                           if sp.metrics is not None}}
        if j < K:
            st.update(main=main.state_dict(), averages=averages.state_dict())
        else:
            st.update(side={i: {**r, "metrics": dataclasses.asdict(r["metrics"])} for i, r in side.items()},
                      side_pos=pos)
        return st

    done = j0 + (sum(len(runs[r][0]) for r in range(side_pos["run"])) + side_pos["i"] if side_pos else 0)
    bar = ctx.bar(K + sum(len(s) for s, _ in runs), f"averaging step {S}", initial=done)

    # the continued main trajectory and its averages
    for j, (x, y) in enumerate(ctx.batches(S + j0, S + K), start=j0):
        loss = main.sgd_step(x, y, lr)
        traj_rows.append([S + j, j, lr, float(loss)])
        off = j + 1
        averages.update(off, main.model)
        if off in ks:
            m = ctx.evaluate(main.model, bn_batches, opts)
            trajectory.append(TrajectoryPoint(off, m.train_loss, m.train_acc, m.val_loss, m.val_acc,
                                              dist(main.flat(), v0)))
            for sp in specs:
                if sp.k != off:
                    continue
                module = averages.module(sp)
                sp.vec = flat_params(module)
                sp.metrics = ctx.evaluate(module, bn_batches, opts)
                averages.release(sp)
        bar.update(1)
        ctx.state.save(lambda: state(off, {"run": 0, "i": 0, "branch": None} if off == K else None))
    _equivalent_sidetrips(ctx, S, base, runs, bn_batches, opts, v0, bar, index, side, side_pos,
                          lambda pos: ctx.state.save(lambda: state(K, pos)))
    bar.close()

    # assemble
    kernels_out: dict[str, KernelResults] = {}
    rows, sched_rows = [], []
    for t in trajectory:
        rows.append(["trajectory", "Last()", t.k, "trajectory", t.train_loss, t.train_acc, t.val_loss, t.val_acc,
                     None, t.l2_from_start])
    for s in opts.kernels:
        res = []
        for sp in [p for p in specs if p.spec == s]:
            sr = side[index[id(sp)]]
            a_from = dist(sp.vec, v0)
            res.append(KernelPoint(k=sp.k, kernel=repr(sp.kernel), average=sp.metrics, sidetrip=sr["metrics"],
                                   l2_distance=sr["vec_dist"], l2_average_from_start=a_from,
                                   l2_sidetrip_from_start=sr["from_start"],
                                   relative_l2=sr["vec_dist"] / a_from if a_from > 0 else None))
            for which, met, frm in (("average", sp.metrics, a_from), ("sidetrip", sr["metrics"], sr["from_start"])):
                rows.append([s, repr(sp.kernel), sp.k, which, met.train_loss, met.train_acc, met.val_loss,
                             met.val_acc, sr["vec_dist"], frm])
            sched_rows += [[s, sp.k, i, v] for i, v in enumerate(sp.schedule)]
        kernels_out[s] = KernelResults(spec=s, results=res, skipped=skipped[s])
    return AveragingResult(
        run=str(ctx.run_dir), step=S, lr=lr, steps=K, report_steps=ks,
        bn_recompute=BnRecompute(method="torch.optim.swa_utils.update_bn", batches=len(bn_batches),
                                 batch_size=int(len(bn_batches[0][1]))),
        train_eval_samples=min(opts.train_eval_samples, len(ctx.data.train)),
        val_samples=min(opts.val_samples, len(ctx.data.val)),
        trajectory=trajectory, kernels=kernels_out,
        sidetrip_runs=len(runs), sidetrip_updates=int(sum(len(s) for s, _ in runs)),
        table=AveragingTable(*_columns(rows, 10)), trajectory_losses=TrajectoryLosses(*_columns(traj_rows, 4)),
        schedules=ScheduleTable(*_columns(sched_rows, 4)))


def _columns(rows: list[list], n: int) -> list[list]:
    """Rows -> n columns (n empty columns for no rows)."""
    return [list(c) for c in zip(*rows)] if rows else [[] for _ in range(n)]


def _equivalent_sidetrips(ctx: RunContext, S: int, base: Branch, runs, bn_batches, opts, v0, bar, index: dict,
                          out: dict, resume: dict | None, save) -> dict[int, dict]:
    """Run every equivalent schedule from ``base``; fills ``out`` = {spec index: {vec_dist, from_start,
    metrics}}. ``resume``: the position {run, i, branch state} to continue from (None: the start);
    ``save(position)`` is called after every update (the resume state; it saves when due)."""
    r0 = resume["run"] if resume is not None else 0
    for r in range(r0, len(runs)):
        sched, members = runs[r]
        br = base.clone()
        i0 = 0
        if resume is not None and r == r0 and resume.get("branch") is not None:
            br.load_state_dict(resume["branch"])
            i0 = int(resume["i"])
        by_k: dict[int, list[_AvgSpec]] = {}
        for sp in members:
            by_k.setdefault(sp.k, []).append(sp)
        for i, (x, y) in enumerate(ctx.batches(S + i0, S + len(sched)), start=i0):
            br.sgd_step(x, y, float(sched[i]))
            if (i + 1) in by_k:
                vec = br.flat()
                met = ctx.evaluate(br.model, bn_batches, opts)
                for sp in by_k[i + 1]:
                    out[index[id(sp)]] = {"vec_dist": dist(sp.vec, vec), "from_start": dist(vec, v0), "metrics": met}
            bar.update(1)
            last = i + 1 == len(sched)
            save({"run": r + 1 if last else r, "i": 0 if last else i + 1, "branch": None if last else br.state_dict()})
    return out


SIDETRIP = SideTrip(name="averaging", options=AveragingOptions, compute=_compute, result=AveragingResult,
                    doc="averages of the continued trajectory vs side-trips with their equivalent lr schedules "
                        "(Fig. 1, 5, 10, 14)", function=averaging_sidetrip)
