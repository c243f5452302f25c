"""The real-network claims in report order: :data:`REAL_CLAIMS` (id -> :class:`.context.RealClaim`).

Each is evaluated on every replicate's context (:meth:`.context.RealContext.replica`), with the regime premises
(a), (b) at that replicate's branch point put before its own premises, and the replicate verdicts combined into one
(:func:`.replication.combine`: the mean with its t interval, the state decided on the interval)."""
from __future__ import annotations

from dataclasses import replace

from ..verdict import Verdict
from . import premises
from .context import RealClaim, RealContext
from .distance_saturation import FIG8
from .gradient_alignment import FIG7
from .linear_model import LINEAR_MODEL_FIT
from .posthoc_merge import POSTHOC_MERGE
from .replication import combine
from .same_basin import FIG3
from .schedule_equivalence import FIG5, FIG6
from .single_step import FIG2, FIG13
from .stationary_radius import EQ13_REAL

__all__ = ["REAL_CLAIMS", "REPLICATE_CLAIMS", "with_regime", "replicated"]


def with_regime(claim: RealClaim) -> RealClaim:
    """``claim`` whose verdict carries the regime premises (a), (b) before its own premises."""
    def evaluate(ctx: RealContext) -> Verdict:
        v = claim.evaluate(ctx)
        try:
            regime = ctx.regime()
        except Exception as exc:  # noqa: BLE001 - the premise reads "not met" with the error
            regime = [premises.unmeasured("regime", "(a), (b) regime at the branch point could not be measured",
                                          f"{type(exc).__name__}: {exc}")]
        return premises.attach(v, regime + premises.of_verdict(v))

    return replace(claim, evaluate=evaluate)


def replicated(claim: RealClaim) -> RealClaim:
    """``claim`` evaluated on every replicate of the job's context and combined; its requests are every replicate's
    (as the job's context runs them: :meth:`.context.RealContext.request`). A replicate whose evaluation raises
    gives a verdict with its error (the combined verdict is then NOT DECIDED, the error named)."""
    def evaluate(ctx: RealContext) -> Verdict:
        reps = ctx.replicates
        verdicts = []
        for rep in reps:
            rctx = ctx.replica(rep)
            try:
                v = claim.evaluate(rctx)
            except Exception as exc:  # noqa: BLE001 - reported in the combined verdict
                v = Verdict(id=claim.id, claim="(not evaluated)", statistic="-", value=float("nan"),
                            comparison="<", threshold=float("nan"), error=f"{type(exc).__name__}: {exc}",
                            source="realnet")
            if v.figure:
                v.figure = f"{rctx.out.name}/{v.figure}"  # relative to the report directory
            verdicts.append(v)
        ok = [v for v in verdicts if v.error is None]
        if ok:  # the rule of a replicate that could not be evaluated is the others'
            ref = ok[0]
            for v in verdicts:
                if v.error is not None:
                    v.claim, v.statistic, v.comparison, v.threshold = (ref.claim, ref.statistic, ref.comparison,
                                                                       ref.threshold)
        v = combine(reps, verdicts, scale=claim.scale)
        if claim.figure is not None and ok:
            try:
                v.figure = claim.figure(ctx, [ctx.replica(rep) for rep in reps], verdicts) or v.figure
            except Exception as exc:  # noqa: BLE001 - the verdict stands; replicate 0's figure is shown
                v.details["figure_error"] = f"{type(exc).__name__}: {exc}"
        return v

    def requests(ctx: RealContext) -> list:
        return [ctx.replica(rep).request(*q) for rep in ctx.replicates for q in claim.requests(ctx.replica(rep))]

    return replace(claim, evaluate=evaluate, requests=requests)


#: each claim on one replicate's context, with the regime premises (what the controls run, and each replicate)
REPLICATE_CLAIMS: dict[str, RealClaim] = {c.id: with_regime(c) for c in (
    FIG2, FIG3, FIG5, FIG6, FIG7, FIG8, FIG13, LINEAR_MODEL_FIT, EQ13_REAL, POSTHOC_MERGE)}
#: each claim on every replicate of the job's context, combined (what ``reproduce`` runs)
REAL_CLAIMS: dict[str, RealClaim] = {cid: replicated(c) for cid, c in REPLICATE_CLAIMS.items()}
