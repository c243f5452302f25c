r"""The regime premises of the real-network claims, measured at the branch point and shown with
every verdict.

The paper's claims are about a trajectory that is quasi-stationary and has not fit its training stream
(ImageNet at 75k of 100k steps, loss ~1.8 on a plateau at a fixed lr). A verdict computed elsewhere tests an
artefact, so every real-network verdict carries the premises it needs, each with its value, its rule and
"met" / "not met"; a claim whose premise fails is NOT DECIDED: its value is still computed and shown, with the
failing premise (:mod:`validation.verdict`).

Premises and rules (fixed in code before any measurement):

* ``plateau`` (a), every real-network claim: the mean fresh-batch training loss over the last quarter of the run
  is within 10 % of the mean over the quarter before: :math:`|L_{[3N/4, N)} / L_{[N/2, 3N/4)} - 1| \le 0.1`
  (:data:`PLATEAU_TOL`; ``metrics.csv`` of the run, :func:`realnet.regime.training_plateau`).
* ``not-memorised`` (b), every real-network claim: at the branch step S, the mean loss of 10 fixed held-out
  batches over the mean loss of the 10 fresh training batches of updates S .. S + 9 (batch-statistics BN)
  is < 1.5 (:data:`MEMORISED_MAX`; :func:`realnet.probes.memorisation`).
* ``lemma2-fig7`` and ``lemma2-fig6`` (c), Lemma 2's premise as the paper states it, for fig. 7 and fig. 6: along
  the claim's side-trips a fixed batch is not fit -- its loss at the end is >= 50 % of its loss at the start
  (:data:`FIT_MIN`) -- and its gradient norm changes by less than a factor 2 -- :math:`\max_t \max(r_t, 1/r_t)
  < 2`, :math:`r_t = \|g_t\|/\|g_0\|` (:data:`GRADNORM_FACTOR_MAX`); the worst side-trip decides. fig. 7: the
  alignment side-trip's fixed batch along its constant and linearly decaying lr side-trips; fig. 6: a fixed
  held-out batch along the divergence side-trip's A (lr), B (other batch order) and H (lr/2).

Layout: :class:`Condition` (one rule on one number) and :class:`Premise` (conditions that must all hold, what
it applies to, the numbers behind it) are the typed results; the ``*_premise`` functions build them from the
measurements of :mod:`realnet.regime` and the side-trip results; :func:`attach` stores premises in a verdict's
``details["premises"]`` (a list of dicts, so ``verdicts.json`` and the resume parts carry them) and
:func:`of_verdict` / :func:`not_met` read them back.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from ..verdict import Verdict, decide, premise_entry

__all__ = ["PLATEAU_TOL", "MEMORISED_MAX", "FIT_MIN", "GRADNORM_FACTOR_MAX", "Condition", "Premise",
           "plateau_premise", "memorisation_premise", "lemma2_premise", "batch_range_premise",
           "schedule_effect_premise",
           "lemma1_premise", "Lemma2Window",
           "lemma2_window", "lemma2_window_premise", "alignment_windows", "divergence_windows", "LEMMA2_COS_MIN",
           "LEMMA2_NORM_TOL", "unmeasured", "alignment_changes",
           "divergence_changes", "attach", "of_verdict", "not_met", "ALL_REAL"]

# ---------------------------------------------------------------- thresholds (fixed before measuring)
PLATEAU_TOL = 0.10  # (a) |last quarter / quarter before - 1|
MEMORISED_MAX = 1.5  # (b) held-out / fresh training-batch loss at the branch point
FIT_MIN = 0.5  # (c) fixed-batch loss at the end / at the start of the side-trip
GRADNORM_FACTOR_MAX = 2.0  # (c) largest change max_t max(r_t, 1/r_t) of the fixed batch's gradient norm
# (c') Lemma 2's window, from the paper's evidence (sec. 5, Fig. 7): "the gradient norm changed less than 5%, while
# cos stayed generally above 0.5" -- both numbers taken as written
LEMMA2_COS_MIN = 0.5  # cos(g_b(theta_t), g_b(theta_S)) of the fixed batch
LEMMA2_NORM_TOL = 0.05  # |r_t - 1|, r_t = |g_b(theta_t)| / |g_b(theta_S)|
BATCH_RANGE_LARGEST_MIN = 0.5  # fig. 13: the largest batch reaches half the noise scale (the gap closes there)

ALL_REAL = "every real-network claim"


@dataclass(frozen=True)
class Condition:
    """One rule on one measured number: ``value comparison threshold`` (NaN is never met)."""

    name: str
    description: str
    value: float
    comparison: str
    threshold: float

    @property
    def met(self) -> bool:
        return decide(self.value, self.comparison, self.threshold)

    def to_dict(self) -> dict:
        return {**asdict(self), "met": self.met}


@dataclass(frozen=True)
class Premise:
    """A premise of one or more claims, measured at the branch point: met when every condition is.

    id: ``plateau`` | ``not-memorised`` | ``lemma2-fig7`` | ``lemma2-fig6``. title: the premise in words.
    applies_to: the claim ids (or :data:`ALL_REAL`). conditions: the rules. details: the numbers behind them.
    """

    id: str
    title: str
    applies_to: str
    conditions: tuple[Condition, ...]
    details: dict = field(default_factory=dict)

    @property
    def met(self) -> bool:
        return all(c.met for c in self.conditions)

    def to_dict(self) -> dict:
        from sgdtraj.files import jsonable

        return jsonable({"id": self.id, "title": self.title, "applies_to": self.applies_to, "met": self.met,
                         "conditions": [c.to_dict() for c in self.conditions], "details": self.details},
                        nonfinite="string")

    @classmethod
    def from_dict(cls, d: dict) -> "Premise":
        conds = tuple(Condition(**{k: (_num(v) if k in ("value", "threshold") else v) for k, v in c.items()
                                   if k != "met"}) for c in d["conditions"])
        return cls(id=d["id"], title=d["title"], applies_to=d["applies_to"], conditions=conds,
                   details=dict(d.get("details") or {}))


def _num(x) -> float:
    if x is None:
        return math.nan
    return float(x)


# ======================================================================================= premises
def plateau_premise(p, step: int | None = None) -> Premise:
    """(a) from a :class:`realnet.regime.Plateau` of the run's ``metrics.csv``."""
    return Premise(
        id="plateau", title="(a) plateau: the fresh-batch training loss is quasi-stationary", applies_to=ALL_REAL,
        conditions=(Condition("plateau", f"|mean loss over updates [{3 * p.steps // 4}, {p.steps}) / over "
                                         f"[{p.steps // 2}, {3 * p.steps // 4}) - 1|",
                              abs(p.ratio - 1.0), "<=", PLATEAU_TOL),),
        details=dict(ratio=p.ratio, prev_quarter_loss=p.prev_quarter_loss, last_quarter_loss=p.last_quarter_loss,
                     steps=p.steps, branch_step=step))


def memorisation_premise(m) -> Premise:
    """(b) from a :class:`realnet.regime.Memorisation` at the branch step."""
    return Premise(
        id="not-memorised", title="(b) not memorised: held-out batches are not much worse than fresh training batches",
        applies_to=ALL_REAL,
        conditions=(Condition("heldout_over_fresh", f"mean loss of {m.n_batches} fixed held-out batches / of the "
                                                    f"{m.n_batches} fresh training batches of updates {m.step}.."
                                                    f"{m.step + m.n_batches - 1} (batch-statistics BN)",
                              m.ratio, "<", MEMORISED_MAX),),
        details=m.to_dict())


def lemma2_premise(pid: str, claim_id: str, changes: dict, batch: str) -> Premise:
    """(c) Lemma 2's premise from ``changes`` = {side-trip name: :class:`realnet.regime.FixedBatchChange`} of one
    fixed batch (``batch`` says which); the worst side-trip decides."""
    if not changes:
        raise ValueError(f"{pid}: no fixed-batch records (the side-trip did not track its fixed batch)")
    worst_fit = min(changes, key=lambda k: changes[k].loss_end_over_start)
    worst_gn = max(changes, key=lambda k: changes[k].gradnorm_max_change)
    return Premise(
        id=pid, title=f"(c) Lemma 2's premise for {claim_id}: {batch} is not fit and its gradient norm changes by "
                      f"less than x{GRADNORM_FACTOR_MAX:g}",
        applies_to=claim_id,
        conditions=(
            Condition("not_fit", f"fixed-batch loss at the end / at the start, worst side-trip: {worst_fit}",
                      changes[worst_fit].loss_end_over_start, ">=", FIT_MIN),
            Condition("gradnorm_change", f"its gradient norm's largest change max_t max(r_t, 1/r_t), r_t = |g_t| / "
                                         f"|g_0|, worst side-trip: {worst_gn}",
                      changes[worst_gn].gradnorm_max_change, "<", GRADNORM_FACTOR_MAX)),
        details=dict(batch=batch, sidetrips={k: v.to_dict() for k, v in changes.items()}))


@dataclass(frozen=True)
class Lemma2Window:
    """Steps from the branch point over which a fixed batch's gradient stays in Lemma 2's cone along one side-trip:
    the longest prefix of recorded steps with cos >= :data:`LEMMA2_COS_MIN` and |r - 1| <= :data:`LEMMA2_NORM_TOL`.
    ``steps``: its last recorded step (0: it breaks at the first record); ``broken_at``: the first recorded step
    outside (None: it holds to the end, ``horizon``); ``cos_min`` / ``norm_change_max`` over the whole side-trip."""

    steps: int
    broken_at: int | None
    horizon: int
    cos_min: float
    norm_change_max: float

    def to_dict(self) -> dict:
        return asdict(self)


def lemma2_window(t, cos, norm_ratio) -> Lemma2Window:
    """:class:`Lemma2Window` from a fixed batch's records along a side-trip: steps ``t`` (t[0] = 0, increasing),
    the cosine of its gradient with the start's and its norm ratio to the start's (equal-length 1-D)."""
    import numpy as np

    t, c, r = (np.asarray(a, dtype=float).ravel() for a in (t, cos, norm_ratio))
    if not (t.size == c.size == r.size) or t.size < 1:
        raise ValueError(f"t, cos, norm_ratio must be 1-D of equal length >= 1; got {t.size}, {c.size}, {r.size}")
    ok = (c >= LEMMA2_COS_MIN) & (np.abs(r - 1.0) <= LEMMA2_NORM_TOL)
    ok[t == 0] = True  # the start itself
    bad = np.flatnonzero(~ok)
    end = int(t[bad[0] - 1]) if bad.size else int(t[-1])
    return Lemma2Window(steps=end if bad.size == 0 or bad[0] > 0 else 0,
                        broken_at=int(t[bad[0]]) if bad.size else None, horizon=int(t[-1]),
                        cos_min=float(np.nanmin(c)), norm_change_max=float(np.nanmax(np.abs(r - 1.0))))


def lemma2_window_premise(pid: str, claim_id: str, windows: dict, needed: int, batch: str, why: str) -> Premise:
    """Lemma 2's premise as the paper states it: along every side-trip of ``windows`` ({name:
    :class:`Lemma2Window`}) the fixed batch's gradient stays in the cone (cos >= 0.5, norm within 5 %) for at least
    ``needed`` steps (``why``: what those steps are); the shortest window decides."""
    if not windows:
        raise ValueError(f"{pid}: no fixed-batch records (the side-trip did not track its fixed batch)")
    worst = min(windows, key=lambda k: windows[k].steps)
    return Premise(
        id=pid, title=f"(c) Lemma 2's premise for {claim_id}: {batch} keeps its gradient within cos >= "
                      f"{LEMMA2_COS_MIN:g} and {LEMMA2_NORM_TOL:.0%} of its norm over the steps judged",
        applies_to=claim_id,
        conditions=(Condition("window_steps", f"steps over which cos(g_t, g_S) >= {LEMMA2_COS_MIN:g} and "
                                              f"| |g_t|/|g_S| - 1 | <= {LEMMA2_NORM_TOL:g}, shortest side-trip: "
                                              f"{worst} (needed: {why})", windows[worst].steps, ">=", needed),),
        details=dict(batch=batch, needed_steps=needed, window_steps=windows[worst].steps,
                     windows={k: w.to_dict() for k, w in windows.items()}))


def batch_range_premise(batch_sizes, b_noise: float, typical_max: float) -> Premise:
    """Fig. 13's batch sizes cover the paper's range in units of the measured noise scale: the smallest is
    typical (<= ``typical_max`` B_noise) and the largest reaches half of B_noise (where the gap should close)."""
    b = sorted(batch_sizes)
    return Premise(
        id="batch-range", title="fig. 13's batch sizes span the typical range and reach the noise scale",
        applies_to="fig13-batch-size",
        conditions=(Condition("smallest_typical", f"smallest batch {b[0]} / B_noise", b[0] / b_noise, "<=",
                              typical_max),
                    Condition("largest_near_noise_scale", f"largest batch {b[-1]} / B_noise", b[-1] / b_noise, ">=",
                              BATCH_RANGE_LARGEST_MIN)),
        details=dict(batch_sizes=b, b_noise=b_noise))


def schedule_effect_premise(claim_id: str, effect: dict, minimum: float) -> Premise:
    """Fig. 5's comparison is defined: every kernel's equivalent schedule moves the validation loss by at least
    ``minimum`` (relative): ``effect`` = {kernel: |L(trajectory) - L(side-trip)| / L(side-trip)}."""
    worst = min(effect, key=lambda k: effect[k] if math.isfinite(effect[k]) else -math.inf)
    return Premise(
        id="schedule-effect", title="the equivalent schedules move the validation loss measurably",
        applies_to=claim_id, conditions=(Condition(
            "effect", f"smallest over kernels of |L(trajectory) - L(side-trip)| / L(side-trip) ({worst})",
            effect[worst], ">=", minimum),), details=dict(effect=dict(effect)))


def lemma1_premise(claim_id: str, growth: dict, n_lrs: int, growth_max: float, min_lrs: int,
                   exponent: dict | None = None) -> Premise:
    """(d) Lemma 1's stationary regime for eq. 13: every lr pair's distance has levelled off (``growth`` = {factor:
    mean over the last quarter / over the quarter before} <= ``growth_max``) and the fit has ``min_lrs`` lrs."""
    worst = max(growth, key=lambda k: growth[k] if math.isfinite(growth[k]) else math.inf)
    return Premise(
        id="lemma1-stationary", title=f"(d) Lemma 1's premise: the pairs' distances have levelled off, and the fit "
                                      f"has >= {min_lrs - 2} residual degrees of freedom",
        applies_to=claim_id, conditions=(
            Condition("pairs_levelled", f"largest pair distance growth, mean over the last quarter / over the "
                                        f"quarter before (pair at lr x {worst})", growth[worst], "<=", growth_max),
            Condition("enough_lrs", "learning rates in the fit", n_lrs, ">=", min_lrs)),
        details=dict(growth=dict(growth), time_exponent=dict(exponent or {})))


def unmeasured(pid: str, title: str, error: str) -> Premise:
    """A premise whose measurement failed: one NaN condition (never met), the error in ``details``."""
    return Premise(id=pid, title=title, applies_to=ALL_REAL,
                   conditions=(Condition("measured", "measurement", math.nan, "<", math.inf),),
                   details=dict(error=error))


def alignment_changes(result) -> dict:
    """The fixed batch of an alignment result along its two side-trips: {"constant lr", "linear decay"}."""
    from realnet.regime import fixed_batch_change

    r = result.records
    return {"constant lr": fixed_batch_change(r.fixed_loss_constant, r.norm_ratio_constant),
            "linear decay": fixed_batch_change(r.fixed_loss_linear, r.norm_ratio_linear)}


def alignment_windows(result) -> dict:
    """Lemma 2's window of the alignment side-trip's fixed batch along its constant-lr and linear-decay side-trips."""
    r = result.records
    return {"constant lr": lemma2_window(r.t, r.cos_start_constant, r.norm_ratio_constant),
            "linear decay": lemma2_window(r.t, r.cos_start_linear, r.norm_ratio_linear)}


def divergence_windows(result) -> dict:
    """Lemma 2's window of the divergence side-trip's fixed held-out batch along A (lr), B and H (lr/2)."""
    names = {"A": "A (lr)", "B": "B (lr, other batch order)", "H": "H (lr/2)"}
    tr = result.fixed_batch_track
    out = {}
    for m in ("A", "B", "H"):
        sel = tr.model == m
        if sel.any():
            g = tr.grad_norm[sel]
            out[names[m]] = lemma2_window(tr.t[sel], tr.cos_start[sel], g / g[0])
    return out


def divergence_changes(result) -> dict:
    """The fixed held-out batch of a divergence result along A (lr), B (other order) and H (lr/2)."""
    names = {"A": "A (lr)", "B": "B (lr, other batch order)", "H": "H (lr/2)"}
    return {names.get(k, k): v for k, v in result.fixed_batch.items()}


# ======================================================================================= verdicts
def attach(verdict: Verdict, premises) -> Verdict:
    """Store ``premises`` in the verdict: one ``{name, value, rule, met}`` entry per condition in
    ``verdict.premises`` (name ``"<premise id>: <condition>"``; they decide the state: a condition not met makes
    it NOT DECIDED), and the full premises (titles, details) in ``details["premises"]``."""
    ps = list(premises)
    verdict.details["premises"] = [p.to_dict() for p in ps]
    verdict.details["premises_met"] = all(p.met for p in ps)
    verdict.premises = [premise_entry(f"{p.id}: {c.name}", c.value, c.comparison, c.threshold)
                        for p in ps for c in p.conditions]
    verdict.__post_init__()
    return verdict


def of_verdict(verdict: Verdict) -> list[Premise]:
    """The premises stored in a verdict (empty for claims without premises, e.g. the synthetic ones)."""
    return [Premise.from_dict(d) for d in (verdict.details or {}).get("premises") or []]


def not_met(verdict: Verdict) -> list[str]:
    """Ids of the verdict's premises that are not met."""
    return [p.id for p in of_verdict(verdict) if not p.met]
