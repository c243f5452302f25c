"""Verdicts: a claim of the paper, the statistic that tests it, the measured value, a threshold fixed
in code before the measurement, and pass/fail."""
from __future__ import annotations

import math
import operator
from dataclasses import asdict, dataclass, field

from sgdtraj.files import jsonable

__all__ = ["Verdict", "decide"]

_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def decide(value: float, comparison: str, threshold: float) -> bool:
    """``value comparison threshold`` (e.g. 0.3 < 0.5); NaN never passes."""
    if comparison not in _OPS:
        raise ValueError(f"comparison must be one of {sorted(_OPS)}, got {comparison!r}")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return bool(_OPS[comparison](value, threshold))


@dataclass
class Verdict:
    """One verified claim.

    id: stable identifier (part of the public contract, e.g. ``"eq20-two-point"``).
    claim: the paper's claim in words. statistic: what is measured, in words a reader can check.
    value: the measured statistic. comparison, threshold: the pass rule ``value comparison threshold``,
    fixed before the measurement. uncertainty: standard error or CI half-width of ``value`` (NaN if
    not applicable). passed: the rule's outcome AND all ``checks``. figure: PNG file name (relative to
    the report). checks: further named sub-tests ``{name: {"value", "comparison", "threshold", "passed"}}``.
    details: numbers behind the verdict (theory and measurement). source: "theory+simulation" or "realnet".
    premises, state: for claims that state their premises: ``[{name, value, rule, met}]`` and "PASS" | "FAIL" |
    "NOT DECIDED" (a premise not met); empty / None for the others.
    """

    id: str
    claim: str
    statistic: str
    value: float
    comparison: str
    threshold: float
    uncertainty: float = float("nan")
    figure: str | None = None
    checks: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    source: str = "theory+simulation"
    passed: bool = field(default=False)
    error: str | None = None
    premises: list = field(default_factory=list)
    state: str | None = None

    def __post_init__(self):
        self.value = _num(self.value)
        self.threshold = _num(self.threshold)
        self.uncertainty = _num(self.uncertainty)
        ok = decide(self.value, self.comparison, self.threshold)
        for name, c in self.checks.items():
            c["value"] = _num(c["value"])
            c["threshold"] = _num(c["threshold"])
            c["passed"] = decide(c["value"], c["comparison"], c["threshold"])
            ok = ok and c["passed"]
        self.passed = bool(ok) and self.error is None

    def check(self, name, value, comparison, threshold, description=""):
        """Add a sub-test and re-evaluate ``passed``."""
        self.checks[name] = dict(value=value, comparison=comparison, threshold=threshold,
                                 description=description)
        self.__post_init__()
        return self

    def to_dict(self) -> dict:
        """JSON types; non-finite numbers as ``"inf"`` / ``"-inf"`` (NaN: None) so that they stay readable."""
        return jsonable(asdict(self), nonfinite="string")

    @classmethod
    def from_dict(cls, d: dict) -> "Verdict":
        d = dict(d)
        d.pop("passed", None)
        return cls(**d)


def _num(x):
    if x is None:
        return float("nan")
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")
