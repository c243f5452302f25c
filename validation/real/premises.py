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
  is < 1.5 (:data:`MEMORISED_MAX`; :func:`realnet.regime.memorisation`).
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
           "plateau_premise", "memorisation_premise", "lemma2_premise", "unmeasured", "alignment_changes",
           "divergence_changes", "attach", "of_verdict", "not_met", "ALL_REAL"]

# ---------------------------------------------------------------- thresholds (fixed before measuring)
PLATEAU_TOL = 0.10  # (a) |last quarter / quarter before - 1|
MEMORISED_MAX = 1.5  # (b) held-out / fresh training-batch loss at the branch point
FIT_MIN = 0.5  # (c) fixed-batch loss at the end / at the start of the side-trip
GRADNORM_FACTOR_MAX = 2.0  # (c) largest change max_t max(r_t, 1/r_t) of the fixed batch's gradient norm

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
        from quadsgd._files import jsonable

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
