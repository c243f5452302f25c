r"""One verdict from independent replicates of a claim: the value with its interval, the state decided on it.

A real-network claim is measured R >= 3 times on independent replicates (:class:`Replicate`: its own branch point
and side-trip seed, so its own batches and its own fixed held-out / BatchNorm batches). :func:`combine` turns the
R replicate verdicts into one:

* value: the mean of the replicate values (``scale="log"``: the geometric mean, for ratios that span orders of
  magnitude); uncertainty: the half-width of the two-sided 95 % Student-t interval, :math:`t_{0.975, R-1}\,
  s / \sqrt{R}` (R - 1 degrees of freedom: the replicates are the only independent units; every within-replicate
  spread is already inside each replicate's value);
* the rule is decided on the interval: the premise ``replicates-resolve`` requires the whole interval on one side
  of the threshold, :math:`|\bar v - c| / h \ge 1`; when it straddles the threshold the replicates cannot decide
  and the verdict is NOT DECIDED (the value is still shown). With the interval on one side, the rule on the mean
  gives PASS or FAIL;
* sub-checks hold when they hold in every replicate (the value shown is the worst replicate's);
* premises are met when met in every replicate (each condition shows its worst replicate's value), so a
  finding is never drawn from a replicate outside the paper's conditions;
* a replicate that could not be evaluated (``error``) makes the verdict NOT DECIDED with the error named.

The replicate values, states and premises stay in ``details["replicates"]``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..verdict import Verdict, decide
from . import premises as P

__all__ = ["Replicate", "combine", "t_interval", "RESOLVE_ID", "CONFIDENCE"]

RESOLVE_ID = "replicates-resolve"
CONFIDENCE = 0.95  # two-sided level of the interval the state is decided on


@dataclass(frozen=True)
class Replicate:
    """One independent replicate of the real-network side-trips.

    index: 0 .. R-1. step: its branch point S_r (the run's checkpoint the side-trips start at). step2: its second
    checkpoint (fixed-batch, Fig. 3). seed: the side-trip seed (fixed held-out, BatchNorm and reference batches;
    0 = the side-trips' own constants). end: where the replicate's block of steps ends (the next replicate's branch
    point; the post-hoc merge's window is [step, end]; -1: not set)."""

    index: int
    step: int
    step2: int
    seed: int
    end: int = -1

    @property
    def suffix(self) -> str:
        """Appended to side-trip keys and file names of this replicate (``-r0``, ``-r1``, ...)."""
        return f"-r{self.index}"


def t_interval(values, confidence: float = CONFIDENCE) -> tuple[float, float, int]:
    """(mean, half-width, degrees of freedom) of the two-sided Student-t interval of ``values`` (1-D, >= 2
    finite values; else the half-width is NaN)."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64).ravel()
    n = v.size
    mean = float(v.mean()) if n else math.nan
    if n < 2 or not np.all(np.isfinite(v)):
        return mean, math.nan, max(n - 1, 0)
    half = float(stats.t.ppf(0.5 + confidence / 2.0, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return mean, half, n - 1


def _resolve_condition(mean: float, half: float, threshold: float, n: int, scale: str) -> P.Condition:
    """|mean - threshold| / half-width >= 1 (on the log scale for ``scale="log"``)."""
    if scale == "log":
        c = math.log(threshold) if threshold > 0 else math.nan
    else:
        c = threshold
    if math.isnan(half) or math.isnan(mean) or math.isnan(c):
        z = math.nan
    elif half == 0.0:
        z = math.inf if mean != c else 0.0
    else:
        z = abs(mean - c) / half
    return P.Condition("distance_in_half_widths",
                       f"|mean - threshold| / half-width of the {CONFIDENCE:.0%} t interval over {n} replicates "
                       f"({n - 1} degrees of freedom{', log scale' if scale == 'log' else ''}); >= 1: the whole "
                       "interval lies on one side of the threshold", z, ">=", 1.0)


def _worst(values: list[float], comparison: str) -> float:
    """The replicate value farthest on the failing side of ``comparison`` (NaN if any is NaN)."""
    v = [float(x) for x in values]
    if any(math.isnan(x) for x in v):
        return math.nan
    return max(v) if comparison in ("<", "<=") else min(v)


def _combine_premises(reps: list[Verdict]) -> list[P.Premise]:
    """Premises met in every replicate: per premise id, each condition with its worst replicate value."""
    per = [P.of_verdict(v) for v in reps]
    order: list[str] = []
    for ps in per:
        for p in ps:
            if p.id not in order:
                order.append(p.id)
    out = []
    for pid in order:
        found = [next((p for p in ps if p.id == pid), None) for ps in per]
        first = next(p for p in found if p is not None)
        conds = []
        for c in first.conditions:
            vals = []
            for p in found:
                cc = None if p is None else next((x for x in p.conditions if x.name == c.name), None)
                vals.append(math.nan if cc is None else cc.value)
            conds.append(P.Condition(c.name, c.description + " (worst replicate)", _worst(vals, c.comparison),
                                     c.comparison, c.threshold))
        details = {**first.details,
                   "replicates": [None if p is None else {"met": p.met, "values": {c.name: c.value
                                                                                   for c in p.conditions}}
                                  for p in found]}
        out.append(P.Premise(pid, first.title, first.applies_to, tuple(conds), details))
    return out


def combine(replicates: list[Replicate], verdicts: list[Verdict], *, scale: str = "linear") -> Verdict:
    """One verdict of the same claim from its replicate verdicts (module docstring); ``scale`` is ``"linear"``
    (arithmetic mean) or ``"log"`` (geometric mean and the interval of the log values: positive statistics only).

    ValueError if the lists differ in length, are empty, or the verdicts are of different claims or rules."""
    if scale not in ("linear", "log"):
        raise ValueError(f"scale must be 'linear' or 'log', got {scale!r}")
    if not verdicts or len(verdicts) != len(replicates):
        raise ValueError(f"need one verdict per replicate; got {len(verdicts)} verdicts for {len(replicates)}")
    first = verdicts[0]
    for v in verdicts[1:]:
        if (v.id, v.comparison, v.threshold) != (first.id, first.comparison, first.threshold):
            raise ValueError(f"replicate verdicts of different claims or rules: {first.id} / {v.id}")
    n = len(verdicts)
    errors = [f"replicate {r.index} (step {r.step}): {v.error}" for r, v in zip(replicates, verdicts) if v.error]
    values = np.array([v.value for v in verdicts], dtype=np.float64)
    if scale == "log":
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.where(values >= 0, np.log(values), np.nan)
        m, half, dof = t_interval(logs)
        value = math.exp(m) if not math.isnan(m) else math.nan  # +-inf: a replicate of ratio infinity or 0
        lo, hi = (math.exp(m - half), math.exp(m + half)) if math.isfinite(half) else (math.nan, math.nan)
        resolve = _resolve_condition(m, half, first.threshold, n, "log")
    else:
        m, half, dof = t_interval(values)
        value = m
        lo, hi = m - half, m + half
        resolve = _resolve_condition(m, half, first.threshold, n, "linear")
    checks = {}
    for name, c in first.checks.items():
        vals = [v.checks.get(name, {}).get("value", math.nan) for v in verdicts]
        checks[name] = dict(value=_worst(vals, c["comparison"]), comparison=c["comparison"],
                            threshold=c["threshold"],
                            description=(c.get("description") or "") + f" (worst of {n} replicates)")
    rep_records = [dict(index=r.index, step=r.step, step2=r.step2, seed=r.seed, end=r.end, value=v.value,
                        uncertainty=v.uncertainty, state=v.state, rule_holds=v.rule_holds(), error=v.error,
                        unmet_premises=[p["name"] for p in v.unmet_premises()], details=v.details,
                        checks={k: c["value"] for k, c in v.checks.items()}, figure=v.figure)
                   for r, v in zip(replicates, verdicts)]
    details = dict(replicates=rep_records, interval=dict(low=lo, high=hi, confidence=CONFIDENCE, dof=dof,
                                                         scale=scale, n=n),
                   replicate_values=[float(x) for x in values])
    out = Verdict(id=first.id, claim=first.claim,
                  statistic=first.statistic + f"; mean over {n} replicates ({'geometric' if scale == 'log' else ''}"
                                              f"{' ' if scale == 'log' else ''}mean, {CONFIDENCE:.0%} t interval, "
                                              f"{dof} degrees of freedom; steps and sizes named above are replicate "
                                              f"{replicates[0].index}'s)",
                  value=value, comparison=first.comparison, threshold=first.threshold, uncertainty=half if
                  scale == "linear" else (hi - lo) / 2.0, figure=first.figure, checks=checks, details=details,
                  source=first.source, error="; ".join(errors) or None)
    resolved = P.Premise(RESOLVE_ID, "the replicates' interval lies on one side of the rule's threshold",
                         first.id, (resolve,), dict(low=lo, high=hi, mean=value, dof=dof))
    return P.attach(out, _combine_premises(verdicts) + [resolved])


def interval_decides(v: Verdict) -> bool:
    """Whether the interval stored by :func:`combine` lies on one side of the threshold (both ends pass the rule,
    or both fail it)."""
    iv = (v.details or {}).get("interval") or {}
    lo, hi = iv.get("low"), iv.get("high")
    if lo is None or hi is None:
        return False
    a, b = decide(lo, v.comparison, v.threshold), decide(hi, v.comparison, v.threshold)
    return a == b and not (math.isnan(lo) or math.isnan(hi))
