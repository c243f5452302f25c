"""The real-network claims in report order, each with the regime premises (a), (b) at the branch point put
before its own premises: :data:`REAL_CLAIMS` (id -> :class:`.context.RealClaim`)."""
from __future__ import annotations

from dataclasses import replace

from ..verdict import Verdict
from . import premises
from .context import RealClaim, RealContext
from .distance_saturation import FIG8
from .gradient_alignment import FIG7
from .linear_model import LINEAR_MODEL_FIT
from .posthoc_merge import POSTHOC_MERGE
from .same_basin import FIG3
from .schedule_equivalence import FIG5, FIG6
from .single_step import FIG2, FIG13
from .stationary_radius import EQ13_REAL

__all__ = ["REAL_CLAIMS", "with_regime"]


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


REAL_CLAIMS: dict[str, RealClaim] = {c.id: with_regime(c) for c in (
    FIG2, FIG3, FIG5, FIG6, FIG7, FIG8, FIG13, LINEAR_MODEL_FIT, EQ13_REAL, POSTHOC_MERGE)}
