"""validation.real.replication: one verdict from replicates, decided on the t interval; the replicates' plan."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from validation.real import premises as P
from validation.real.config import RealConfig
from validation.real.context import existing_replicates, planned_checkpoints, planned_replicates, replicate_seed
from validation.real.replication import RESOLVE_ID, Replicate, combine, t_interval
from validation.verdict import FAIL, NOT_DECIDED, PASS, Verdict

REPS = [Replicate(i, 100 * (i + 1), 100 * (i + 1) + 50, i + 1, 100 * (i + 2)) for i in range(3)]


def _verdict(x, comparison="<", threshold=0.5, cos=0.8, check=None, error=None):
    v = Verdict(id="claim", claim="c", statistic="s", value=x, comparison=comparison, threshold=threshold,
                error=error, source="realnet")
    if check is not None:
        v.check("sub", check, ">=", 1.0)
    return P.attach(v, [P.Premise("lemma2", "t", "claim", (P.Condition("cos", "d", cos, ">=", 0.5),))])


def test_t_interval_matches_scipy():
    x = np.array([0.3, 0.5, 0.4, 0.45])
    m, h, dof = t_interval(x)
    lo, hi = stats.t.interval(0.95, 3, loc=x.mean(), scale=stats.sem(x))
    assert (m, dof) == (pytest.approx(x.mean()), 3) and h == pytest.approx((hi - lo) / 2, rel=1e-12)
    assert math.isnan(t_interval([1.0])[1]) and math.isnan(t_interval([1.0, math.inf])[1])


def test_states_are_decided_on_the_interval():
    ok = combine(REPS, [_verdict(x) for x in (0.10, 0.12, 0.11)])
    bad = combine(REPS, [_verdict(x) for x in (0.90, 0.80, 0.85)])
    straddle = combine(REPS, [_verdict(x) for x in (0.30, 0.60, 0.50)])  # mean below 0.5, interval across it
    assert (ok.state, bad.state, straddle.state) == (PASS, FAIL, NOT_DECIDED)
    assert straddle.value < 0.5 and [p["name"] for p in straddle.unmet_premises()] == [
        f"{RESOLVE_ID}: distance_in_half_widths"]
    m, h, _ = t_interval([0.10, 0.12, 0.11])
    assert ok.value == pytest.approx(m) and ok.uncertainty == pytest.approx(h)
    assert ok.details["replicate_values"] == [0.10, 0.12, 0.11]
    assert [r["step"] for r in ok.details["replicates"]] == [100, 200, 300]
    assert ok.details["interval"]["dof"] == 2


def test_a_premise_not_met_in_one_replicate_decides_nothing():
    vs = [_verdict(0.1), _verdict(0.12, cos=0.3), _verdict(0.11)]
    v = combine(REPS, vs)
    assert v.state == NOT_DECIDED and [p["name"] for p in v.unmet_premises()] == ["lemma2: cos"]
    assert v.unmet_premises()[0]["value"] == 0.3  # the worst replicate's value is shown


def test_sub_checks_hold_in_every_replicate():
    v = combine(REPS, [_verdict(0.1, check=c) for c in (2.0, 0.5, 3.0)])
    assert v.state == FAIL and v.checks["sub"]["value"] == 0.5


def test_an_error_in_one_replicate_is_named():
    v = combine(REPS, [_verdict(0.1), _verdict(math.nan, error="boom"), _verdict(0.1)])
    assert v.state == NOT_DECIDED and "replicate 1 (step 200): boom" in v.error


def test_log_scale_is_the_geometric_mean():
    v = combine(REPS, [_verdict(x, ">=", 10.0) for x in (500.0, 1000.0, 2000.0)], scale="log")
    assert v.value == pytest.approx(1000.0) and v.state == PASS
    lo, hi = v.details["interval"]["low"], v.details["interval"]["high"]
    assert lo * hi == pytest.approx(1000.0 ** 2)  # symmetric in log


def test_bad_input():
    with pytest.raises(ValueError, match="one verdict per replicate"):
        combine(REPS, [_verdict(0.1)])
    with pytest.raises(ValueError, match="scale must be"):
        combine(REPS, [_verdict(0.1)] * 3, scale="sqrt")
    with pytest.raises(ValueError, match="different claims"):
        combine(REPS, [_verdict(0.1), _verdict(0.1, threshold=0.4), _verdict(0.1)])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-5, 5, allow_nan=False), min_size=3, max_size=6), st.floats(-5, 5))
def test_pass_and_fail_only_when_the_whole_interval_is_on_one_side(xs, c):
    reps = [Replicate(i, i, i + 1, i + 1) for i in range(len(xs))]
    v = combine(reps, [_verdict(x, "<", c) for x in xs])
    m, h, _ = t_interval(xs)
    if v.state == PASS:
        assert m < c and m + h <= c * (1 + 1e-12) + 1e-12
    elif v.state == FAIL:
        assert m >= c and m - h >= c - 1e-12 * (1 + abs(c))
    else:
        assert abs(m - c) < h * (1 + 1e-12) or (h == 0 and m == c) or math.isnan(h)


def test_planned_replicates_and_checkpoints():
    cfg = RealConfig()
    reps = planned_replicates(cfg, cfg.steps)
    assert [(r.step, r.step2, r.end) for r in reps] == [(1800, 2160, 2100), (2100, 2460, 2400), (2400, 2760, 2700)]
    assert len({r.seed for r in reps}) == 3 and 0 not in {r.seed for r in reps}
    # the divergence side-trip of one replicate ends before the next one branches: no training batch is shared
    assert all(b.step - a.step >= cfg.divergence_steps for a, b in zip(reps, reps[1:]))
    ck = planned_checkpoints(cfg, reps)
    assert {1800, 1850, 2160, 2700, 2760} <= set(ck) and max(ck) <= cfg.steps
    # --seed changes every side-trip seed
    other = planned_replicates(RealConfig(seed=1), cfg.steps)
    assert not {r.seed for r in reps} & {r.seed for r in other}
    assert replicate_seed(2, 0, 3) == 7
    with pytest.raises(ValueError, match="second_offset_fraction"):
        planned_replicates(RealConfig(replicates=8), 3000)


def test_existing_replicates():
    reps = existing_replicates(RealConfig(), list(range(0, 20001, 1000)))
    assert [(r.step, r.step2, r.end) for r in reps] == [(12000, 14000, 14000), (14000, 16000, 16000),
                                                       (16000, 18000, 18000)]
    cfg = RealConfig()  # a run trained by the job's own plan gets exactly the planned replicates
    planned = planned_replicates(cfg, cfg.steps)
    assert existing_replicates(cfg, planned_checkpoints(cfg, planned) + [cfg.steps]) == planned
    with pytest.raises(ValueError, match="at least 4"):
        existing_replicates(RealConfig(), [0, 10, 20])


def test_sidetrip_seed_draws_other_fixed_batches():
    from realnet.sidetrips._runner import HELDOUT_SEED, RunContext

    ctx = RunContext.__new__(RunContext)
    ctx.seed = 0
    assert ctx.seeded(HELDOUT_SEED) == HELDOUT_SEED
    seeds = set()
    for s in (1, 2, 3):
        ctx.seed = s
        seeds.add(ctx.seeded(HELDOUT_SEED))
    assert len(seeds) == 3 and HELDOUT_SEED not in seeds


def test_merge_window_of_a_replicate():
    from validation.real.posthoc_merge import _padded, merge_window

    steps = [0, 400, 1800, 1850, 1900, 2100, 2160, 3000]
    assert merge_window(steps, Replicate(0, 1800, 2160, 1, 2100)) == (1800, 2100)
    with pytest.raises(ValueError, match="at least two"):
        merge_window(steps, Replicate(0, 2200, 2300, 1, 2900))
    assert _padded([0.5, 0.25], 4).tolist() == [1.0, 1.0, 0.5, 0.25]
