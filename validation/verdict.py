"""Verdicts: a claim of the paper, the statistic that tests it, the measured value, a threshold fixed
in code before the measurement, the paper's premises measured, and one of three states.

States (:data:`STATES`): ``PASS`` -- every premise met, the rule and every sub-check hold; ``FAIL`` -- every
premise met, the rule or a sub-check fails (a finding, shown with its numbers); ``NOT DECIDED`` -- a premise is
not met (or the claim could not be evaluated: ``error``): the value is still shown, with the failing premise.
``passed`` is True exactly for ``PASS``."""
from __future__ import annotations

import math
import operator
from dataclasses import asdict, dataclass, field

from sgdtraj.files import jsonable

__all__ = ["Verdict", "decide", "premise_entry", "STATES", "PASS", "FAIL", "NOT_DECIDED"]

PASS, FAIL, NOT_DECIDED = "PASS", "FAIL", "NOT DECIDED"
STATES = (PASS, FAIL, NOT_DECIDED)

_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def decide(value: float, comparison: str, threshold: float) -> bool:
    """``value comparison threshold`` (e.g. 0.3 < 0.5); NaN never passes."""
    if comparison not in _OPS:
        raise ValueError(f"comparison must be one of {sorted(_OPS)}, got {comparison!r}")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return bool(_OPS[comparison](value, threshold))


def premise_entry(name: str, value: float, comparison: str, threshold: float) -> dict:
    """One premise of a verdict as stored in ``Verdict.premises``: ``{name, value, rule, met}`` with ``rule`` =
    ``"<comparison> <threshold>"`` (e.g. ``">= 0.5"``) and ``met`` = :func:`decide` of the two."""
    if comparison not in _OPS:
        raise ValueError(f"comparison must be one of {sorted(_OPS)}, got {comparison!r}")
    value, threshold = _num(value), _num(threshold)
    return dict(name=str(name), value=value, rule=f"{comparison} {threshold!r}",
                met=decide(value, comparison, threshold))


def _rule_met(entry: dict) -> bool:
    """``met`` recomputed from an entry's value and rule (a stored ``met`` is not trusted)."""
    try:
        comparison, threshold = str(entry["rule"]).split(" ", 1)
        return decide(_num(entry["value"]), comparison, _num(threshold))
    except (KeyError, ValueError):
        return False


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
    premises: the paper's stated conditions, measured: ``[{name, value, rule, met}, ...]``
    (:func:`premise_entry`; empty when the claim has none, e.g. exact theory against simulation).
    state: ``PASS`` / ``FAIL`` / ``NOT DECIDED`` (module docstring); derived, like ``passed``.
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
    premises: list = field(default_factory=list)
    passed: bool = field(default=False)
    state: str = field(default=NOT_DECIDED)
    error: str | None = None
    premises: list = field(default_factory=list)
    state: str | None = None

    def __post_init__(self):
        self.value = _num(self.value)
        self.threshold = _num(self.threshold)
        self.uncertainty = _num(self.uncertainty)
        ok = decide(self.value, self.comparison, self.threshold)
        for _name, c in self.checks.items():
            c["value"] = _num(c["value"])
            c["threshold"] = _num(c["threshold"])
            c["passed"] = decide(c["value"], c["comparison"], c["threshold"])
            ok = ok and c["passed"]
        premises_met = True
        for entry in self.premises:
            entry["value"] = _num(entry.get("value"))
            entry["met"] = _rule_met(entry)
            premises_met = premises_met and entry["met"]
        if self.error is not None or not premises_met:
            self.state = NOT_DECIDED
        else:
            self.state = PASS if ok else FAIL
        self.passed = self.state == PASS

    def rule_holds(self) -> bool:
        """The rule and every sub-check hold (whatever the premises say)."""
        return decide(self.value, self.comparison, self.threshold) and all(c["passed"] for c in self.checks.values())

    def unmet_premises(self) -> list[dict]:
        """The premise entries that are not met."""
        return [p for p in self.premises if not p["met"]]

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
        d.pop("state", None)
        return cls(**d)


def _num(x):
    if x is None:
        return float("nan")
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")
