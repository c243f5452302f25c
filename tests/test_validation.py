"""validation: the verdict machinery, the report's structure, and a small end-to-end reproduce run."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from validation import Verdict, decide
from validation.__main__ import main as cli_main
from validation.reproduction import reproduce
from validation.synthetic import SyntheticConfig

REQUIRED = {"id", "claim", "statistic", "value", "threshold", "passed", "figure", "state", "premises"}
TINY = SyntheticConfig(chains_curve=200, chains_stationary=3000, steps_curve=6000, record_every=100, seed=7)


def test_decide_and_verdict_rules():
    assert decide(0.3, "<", 0.5) and not decide(0.7, "<", 0.5)
    assert decide(2.0, ">=", 2.0) and not decide(float("nan"), "<", 1.0)
    with pytest.raises(ValueError, match="comparison"):
        decide(1.0, "~", 1.0)
    v = Verdict(id="x", claim="c", statistic="s", value=0.2, comparison="<", threshold=0.5)
    assert v.passed
    v.check("sub", 3.0, "<", 2.0, "a failing sub-test")
    assert not v.passed and v.checks["sub"]["passed"] is False
    d = v.to_dict()
    assert REQUIRED <= set(d) and d["passed"] is False
    assert Verdict.from_dict(json.loads(json.dumps(d))).passed is False


def test_verdict_files_keep_infinity_readable_and_are_world_readable(tmp_path):
    import os

    from sgdtraj.provenance import environment
    from validation.report import write_report

    v = Verdict(id="x", claim="c", statistic="s", value=math.inf, comparison="<", threshold=0.5,
                details=dict(gap=-math.inf, missing=math.nan))
    d = v.to_dict()
    assert d["value"] == "inf" and d["details"] == {"gap": "-inf", "missing": None} and d["passed"] is False
    assert Verdict.from_dict(d).value == math.inf
    env = environment()
    assert env["git"] and "git_dirty" in env and "torch" in env["versions"]
    write_report(tmp_path, [v], dict(mode="quick", environment=env))
    umask = os.umask(0)
    os.umask(umask)
    for f in ("verdicts.json", "report.md"):
        assert (tmp_path / f).stat().st_mode & 0o777 == 0o666 & ~umask
    assert json.loads((tmp_path / "verdicts.json").read_text())[0]["value"] == "inf"


def test_claim_built_to_fail_fails(tmp_path, monkeypatch):
    # eq. 19 applied to the non-normal example: if the claim asserted "the paper's formula is exact"
    # (gap < 1%), the measurement must fail it
    import validation.synthetic as syn

    monkeypatch.setattr(syn, "EQ19_GAP_MIN", 0.0)
    v = syn.claim_eq19(TINY, tmp_path)
    flipped = Verdict(id=v.id, claim="eq. 19 is exact for non-normal Omega", statistic=v.statistic,
                      value=v.value, comparison="<", threshold=0.01)
    assert not flipped.passed and v.value > 0.3


def test_reproduce_synthetic_end_to_end_and_resume(tmp_path):
    out = tmp_path / "out"
    verdicts = reproduce(out, real=False, progress=False, synthetic_config=TINY)
    ids = [v.id for v in verdicts]
    assert ids == ["fig9-ema-fast-slow", "fig11-per-coordinate", "eq13-radius-sqrt-lr", "eq20-two-point",
                   "eq21-n-point", "table1-equivalent-schedule-linear", "eq19-non-normal-gap"]
    data = json.loads((out / "verdicts.json").read_text())
    assert [d["id"] for d in data] == ids
    for d in data:
        assert REQUIRED <= set(d)
        assert (out / d["figure"]).stat().st_size > 10_000  # a real PNG
        assert d["error"] is None and isinstance(d["passed"], bool)
    # the theory is right, so with these sizes every synthetic claim passes
    assert all(d["passed"] for d in data), [(d["id"], d["value"]) for d in data if not d["passed"]]
    report = (out / "report.md").read_text()
    assert "| id | statistic | value | rule | verdict | figure |" in report
    for i in ids:
        assert f"`{i}`" in report and f"({i}.png)" in report
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["environment"]["git"] and cfg["synthetic"]["seed"] == 7
    # resume: finished parts are not redone (their files are untouched)
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "parts").iterdir()}
    again = reproduce(out, real=False, progress=False, synthetic_config=TINY)
    assert [v.to_dict() for v in again] == [v.to_dict() for v in verdicts]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "parts").iterdir()} == mtimes


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["reproduce", "--out", str(tmp_path), "--data-dir", str(tmp_path)])
    assert e.value.code == 2
    assert cli_main(["reproduce", "--out", str(tmp_path), "--only", "no-such-claim", "--synthetic-only"]) == 2
    assert "unknown claim" in capsys.readouterr().err


def test_cli_synthetic_subset(tmp_path, capsys):
    rc = cli_main(["reproduce", "--out", str(tmp_path), "--synthetic-only", "--only", "eq20-two-point",
                   "--no-progress"])
    assert rc == 0
    data = json.loads((tmp_path / "verdicts.json").read_text())
    assert [d["id"] for d in data] == ["eq20-two-point"] and data[0]["passed"]
    assert not math.isnan(data[0]["value"])


def test_three_states():
    """PASS: premises met, rule and sub-checks hold; FAIL: premises met, the rule or a sub-check fails; NOT DECIDED:
    a premise not met (whatever the rule says) or an error. ``passed`` is True exactly for PASS; ``met`` is
    recomputed from value and rule, never read back."""
    from validation.verdict import premise_entry

    def v(value, prem, **kw):
        return Verdict(id="x", claim="c", statistic="s", value=value, comparison="<", threshold=0.5,
                       premises=[premise_entry("p", prem, ">=", 0.5)], **kw)

    assert (v(0.2, 0.6).state, v(0.2, 0.6).passed) == ("PASS", True)
    assert (v(0.7, 0.6).state, v(0.7, 0.6).passed) == ("FAIL", False)
    assert (v(0.2, 0.4).state, v(0.2, 0.4).passed) == ("NOT DECIDED", False)
    assert (v(0.7, 0.4).state, v(0.7, float("nan")).state) == ("NOT DECIDED", "NOT DECIDED")
    assert v(0.2, 0.6, error="E: x").state == "NOT DECIDED"
    assert v(0.2, 0.6).check("sub", 3.0, "<", 2.0).state == "FAIL"
    assert Verdict(id="x", claim="c", statistic="s", value=0.2, comparison="<", threshold=0.5).state == "PASS"
    d = v(0.2, 0.6).to_dict()
    assert d["premises"] == [dict(name="p", value=0.6, rule=">= 0.5", met=True)] and d["state"] == "PASS"
    d["premises"][0]["value"], d["premises"][0]["met"], d["state"], d["passed"] = 0.1, True, "PASS", True
    back = Verdict.from_dict(d)  # a forged "met" / state is recomputed
    assert (back.state, back.passed, back.premises[0]["met"]) == ("NOT DECIDED", False, False)
    with pytest.raises(ValueError, match="comparison"):
        premise_entry("p", 1.0, "=", 1.0)


def test_each_premise_built_to_fail_gives_not_decided(tmp_path):
    """Every premise of the real-network claims, built to fail, makes a verdict whose own rule holds NOT DECIDED,
    and the report names the premise with its value; the same verdict with the premise met is PASS."""
    from realnet.regime import FixedBatchChange, Memorisation, Plateau
    from validation.real import premises as pm
    from validation.report import write_report

    def mem(ratio):
        return Memorisation(step=1800, n_batches=10, batch_size=32, heldout_loss=ratio, fresh_train_loss=1.0,
                            ratio=ratio, heldout_loss_eval_bn=1.0, fresh_train_loss_eval_bn=1.0, ratio_eval_bn=1.0,
                            heldout_augmented=True)

    def change(end, gn):
        return FixedBatchChange(loss_start=1.0, loss_end=end, loss_end_over_start=end, loss_min_over_start=end,
                                gradnorm_max_change=gn, gradnorm_end_ratio=1.0, n_points=10)

    def plateau(r):
        return pm.plateau_premise(Plateau(steps=2400, prev_quarter_loss=1.0, last_quarter_loss=r, ratio=r), 1800)

    def lemma2(end, gn):
        return pm.lemma2_premise("lemma2-fig6", "fig6-two-point-half-lr", {"A (lr)": change(end, gn)}, "b")

    def window(cos, ratio, needed=20):
        w = pm.lemma2_window([0, 10, 20, 30], cos, ratio)
        return pm.lemma2_window_premise("lemma2-w", "fig6-two-point-half-lr", {"A": w}, needed, "b", "t = 20")

    def lemma1(growth, n):
        return pm.lemma1_premise("eq13-real-sqrt-lr", {"1.0": 1.0, "0.5": growth}, n, 1.05, 5)

    good = [plateau(0.95), pm.memorisation_premise(mem(1.1)), lemma2(0.9, 1.2),
            window([1, 0.9, 0.8, 0.3], [1, 1.02, 0.97, 1.0]), pm.batch_range_premise([16, 64, 256], 300, 0.25),
            pm.schedule_effect_premise("fig5", {"swa": 0.02, "ema": 0.05}, 0.01), lemma1(1.04, 5)]
    bad = {"plateau: plateau": plateau(0.8), "not-memorised: heldout_over_fresh": pm.memorisation_premise(mem(2.0)),
           "lemma2-fig6: not_fit": lemma2(0.3, 1.2), "lemma2-fig6: gradnorm_change": lemma2(0.9, 3.0),
           "regime: measured": pm.unmeasured("regime", "t", "OSError: no metrics"),
           # the cone breaks at t = 20 (cos 0.45 < 0.5) or at t = 10 (norm x1.06): window 10 or 0 < 20 needed
           "lemma2-w: window_steps": window([1, 0.9, 0.45, 0.9], [1, 1.0, 1.0, 1.0]),
           "batch-range: smallest_typical": pm.batch_range_premise([128, 256], 300, 0.25),
           "batch-range: largest_near_noise_scale": pm.batch_range_premise([16, 64], 300, 0.25),
           "schedule-effect: effect": pm.schedule_effect_premise("fig5", {"swa": 0.005, "ema": 0.05}, 0.01),
           "lemma1-stationary: pairs_levelled": lemma1(1.18, 5),
           "lemma1-stationary: enough_lrs": lemma1(1.0, 3)}
    assert window([1, 0.9, 0.9, 0.9], [1, 1.06, 1.0, 1.0]).conditions[0].value == 0
    assert window([1, 0.9, 0.45, 0.9], [1, 1.0, 1.0, 1.0]).conditions[0].value == 10

    def verdict(ps):
        v = Verdict(id="fig6-two-point-half-lr", claim="c", statistic="s", value=0.1, comparison="<", threshold=0.5)
        return pm.attach(v, ps)

    assert verdict(good).state == "PASS"
    for name, premise in bad.items():
        ps = [premise if p.id == premise.id else p for p in good] if premise.id != "regime" else good + [premise]
        assert len(ps) == len(good) + (premise.id == "regime")
        v = verdict(ps)
        assert v.state == "NOT DECIDED" and not v.passed and v.rule_holds(), name
        assert [p["name"] for p in v.unmet_premises()] == [name]
        write_report(tmp_path, [v], dict(mode="quick"))
        report = (tmp_path / "report.md").read_text()
        assert f"**NOT DECIDED**: premise `{name}` = " in report and "0 PASS, 0 FAIL, 1 NOT DECIDED of 1" in report


def test_controls_pass_where_the_claim_holds_and_fail_where_it_does_not(tmp_path, capsys):
    """Every control at tiny sizes, through the CLI: each claim's positive control is PASS and its negative control
    FAIL, each from its replicates (>= 3) that agree; controls.json and the table carry them; a re-run reads them
    back."""
    from validation.real.controls import CONTROLS, ControlSizes, read_controls

    out = tmp_path / "ctl"
    assert cli_main(["controls", "--tiny", "--out", str(out)]) == 0
    data = json.loads((out / "controls.json").read_text())
    recs = data["controls"]
    assert {(r["claim"], r["control"]) for r in recs} == {(c, k) for c in CONTROLS for k in ("positive", "negative")}
    for r in recs:
        assert r["state"] == r["expected_state"] == ("PASS" if r["control"] == "positive" else "FAIL"), r
        assert len(r["replicates"]) == ControlSizes.tiny().replicates >= 3
        assert {x["state"] for x in r["replicates"]} == {r["state"]}
        assert r["as_expected"] is True and set(r) >= {"claim", "control", "state", "expected_state", "replicates"}
    table = (out / "controls.md").read_text()
    assert table.count("| `") == len(recs) and "not as expected" not in table
    assert "controls as expected" in capsys.readouterr().out
    mtime = (out / "controls.json").stat().st_mtime_ns
    assert cli_main(["controls", "--tiny", "--out", str(out)]) == 0
    assert (out / "controls.json").stat().st_mtime_ns == mtime
    assert [r.to_dict() for r in read_controls(out)] == recs
    assert cli_main(["controls", "--tiny", "--replicates", "2", "--out", str(tmp_path / "x")]) == 2


def test_statistic_helpers_by_hand():
    """grid_margin: a best at the smallest or largest positive step is unresolved (0), lr = 0 is resolved; closeness
    is bounded in [0, 1] and stays defined when the schedule's effect is tiny."""
    from validation.real.schedule_equivalence import closeness
    from validation.real.single_step import grid_margin

    g = np.concatenate([[0.0], np.geomspace(1e-4, 100, 7)])
    assert [grid_margin(g, x) for x in g] == [8, 0, 1, 2, 3, 2, 1, 0]
    assert closeness(1.0, 1.0, 2.0) == 0.0 and closeness(2.0, 1.0, 1.0) == 1.0 and closeness(1.5, 1.0, 1.5) == 0.5
    assert closeness(1.0 + 1e-9, 1.0, 1.0 + 2e-9) == pytest.approx(1 / 3) and math.isnan(closeness(1.0, 1.0, 1.0))


def test_real_package_has_no_import_cycle_and_no_computing_property():
    """Each module of validation.real imports on its own in a fresh interpreter, and the context has no
    property (nothing trains or computes on attribute access)."""
    import pkgutil
    import subprocess
    import sys

    import validation.real
    from validation.real import RealContext

    names = [m.name for m in pkgutil.iter_modules(validation.real.__path__)]
    assert {"context", "claims", "prefetching", "premises", "stationary_radius", "linear_model"} <= set(names)
    code = "; ".join(f"import validation.real.{n}" for n in names)
    for n in names:  # each first, so that a cycle through it would show
        r = subprocess.run([sys.executable, "-c", f"import validation.real.{n}; {code}"], capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, (n, r.stderr[-2000:])
    assert not [k for k, x in vars(RealContext).items() if isinstance(x, property)]


def test_seed_changes_the_job(tmp_path):
    """``--seed S`` replaces the synthetic claims' and the trajectory's seed; another seed into the same OUT is
    another job (refused), the same seed resumes."""
    out = tmp_path / "s"
    args = ["reproduce", "--out", str(out), "--synthetic-only", "--only", "eq20-two-point", "--no-progress"]
    assert cli_main(args + ["--seed", "3"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["synthetic"]["seed"] == 3 and cfg["real"] is None
    v3 = json.loads((out / "verdicts.json").read_text())[0]
    assert cli_main(args + ["--seed", "4"]) == 2  # another job: refused before anything is written
    assert cli_main(args + ["--seed", "3"]) == 0
    assert json.loads((out / "verdicts.json").read_text())[0]["value"] == v3["value"]
    with pytest.raises(SystemExit):
        cli_main(args + ["--seed", "-1"])
    from validation.real import RealConfig

    v = reproduce(tmp_path / "t", synthetic=False, real=True, only=["fig3-same-basin"], progress=False, seed=5,
                  real_config=RealConfig(**{**TINY_REAL, "steps": 12}))
    assert v[0].error is None and json.loads((tmp_path / "t" / "run" / "config.json").read_text())["seed"] == 5


def test_premises_rules_and_round_trip():
    """Each premise is met exactly on its side of the stated thresholds, survives the verdict's JSON, and a
    failing premise is reported "not met" without changing the verdict's own rule."""
    from realnet.regime import FixedBatchChange, Memorisation, Plateau
    from validation.real import premises as pm
    from validation.report import premise_note

    assert (pm.PLATEAU_TOL, pm.MEMORISED_MAX, pm.FIT_MIN, pm.GRADNORM_FACTOR_MAX) == (0.10, 1.5, 0.5, 2.0)
    flat = pm.plateau_premise(Plateau(steps=2400, prev_quarter_loss=1.0, last_quarter_loss=0.945, ratio=0.945), 1800)
    falling = pm.plateau_premise(Plateau(steps=2400, prev_quarter_loss=1.0, last_quarter_loss=0.85, ratio=0.85))
    assert flat.met and not falling.met and flat.conditions[0].value == pytest.approx(0.055)

    def mem(ratio):
        return Memorisation(step=1800, n_batches=10, batch_size=32, heldout_loss=ratio, fresh_train_loss=1.0,
                            ratio=ratio, heldout_loss_eval_bn=1.0, fresh_train_loss_eval_bn=1.0, ratio_eval_bn=1.0,
                            heldout_augmented=True)

    assert pm.memorisation_premise(mem(1.49)).met and not pm.memorisation_premise(mem(1.5)).met

    def change(end, gn):
        return FixedBatchChange(loss_start=1.0, loss_end=end, loss_end_over_start=end, loss_min_over_start=end,
                                gradnorm_max_change=gn, gradnorm_end_ratio=1.0, n_points=10)

    ok = pm.lemma2_premise("lemma2-fig7", "fig7-gradient-alignment", {"constant lr": change(0.9, 1.5),
                                                                      "linear decay": change(0.5, 1.9)}, "b")
    fit = pm.lemma2_premise("lemma2-fig7", "fig7-gradient-alignment", {"constant lr": change(0.9, 1.5),
                                                                       "linear decay": change(0.49, 1.2)}, "b")
    spiky = pm.lemma2_premise("lemma2-fig6", "fig6-two-point-half-lr", {"A (lr)": change(0.9, 2.0)}, "b")
    assert ok.met and not fit.met and not spiky.met
    assert "linear decay" in fit.conditions[0].description and fit.conditions[0].value == 0.49
    v = Verdict(id="fig7-gradient-alignment", claim="c", statistic="s", value=0.2, comparison=">", threshold=0.0)
    pm.attach(v, [flat, fit])
    back = Verdict.from_dict(json.loads(json.dumps(v.to_dict())))
    assert v.rule_holds() and back.rule_holds()  # the value is still judged by its rule ...
    assert v.state == back.state == "NOT DECIDED" and not back.passed  # ... but decides nothing
    assert [p["name"] for p in back.unmet_premises()] == ["lemma2-fig7: not_fit"]
    assert back.premises[0] == dict(name="plateau: plateau", value=pytest.approx(0.055), rule="<= 0.1", met=True)
    assert back.details["premises_met"] is False and pm.not_met(back) == ["lemma2-fig7"]
    assert [p.to_dict() for p in pm.of_verdict(back)] == [flat.to_dict(), fit.to_dict()]
    assert premise_note(back) == " (premise not met: lemma2-fig7)" and premise_note(Verdict(
        id="x", claim="c", statistic="s", value=0.0, comparison="<", threshold=1.0)) == ""


TINY_REAL = dict(steps=24, batch_size=16, lr=0.05, width=4, sweep_batch_size=32, sweep_batch_sizes=[16, 32],
                 sweep_num_lrs=13, fixed_batch_alphas=3, averaging_steps=4, alignment_steps=4, divergence_steps=6,
                 divergence_record_every=2, eq13_function_samples=32, eq13_function_points=3, premise_batches=3,
                 bn_batches=2, alignment_batch_pairs=3, eval_samples=64, threads=1, device="cpu", linear_fit_k=2,
                 linear_fit_sample_batches=2, linear_fit_lags=2, linear_fit_kernels=["ema:0.5", "twopoint:2", "swa:2"],
                 linear_fit_blocks=5, linear_fit_noise_batches=8, linear_fit_curvature_batches=4, noise_batches=4,
                 controls="tiny")
REAL_IDS = ["fig2-single-step", "fig3-same-basin", "fig5-averaging-equals-schedule", "fig6-two-point-half-lr",
            "fig7-gradient-alignment", "fig8-distance-saturates", "fig13-batch-size", "linear-model-fit",
            "eq13-real-sqrt-lr", "posthoc-merge-equals-cooldown"]


def _judged(v):
    """What a re-run must reproduce: the verdict's numbers and premises (not its timings)."""
    return dict(value=v["value"], passed=v["passed"], state=v["state"], checks=v["checks"],
                premises=v["details"].get("premises"), uncertainty=v["uncertainty"])


@pytest.mark.slow
def test_reproduce_real_claims_tiny_end_to_end(tmp_path, monkeypatch):
    # every real-network claim runs end to end on a tiny trajectory (sizes far too small for the
    # verdicts to mean anything: this checks the plumbing, the premises, the files and the report)
    import csv

    from validation.real import RealConfig

    rc = RealConfig(**TINY_REAL)
    out = tmp_path / "out"
    verdicts = reproduce(out, synthetic=False, progress=False, real_config=rc)
    assert [v.id for v in verdicts] == REAL_IDS
    for v in verdicts:
        assert v.error is None, (v.id, v.error)
        assert v.source == "realnet" and (out / v.figure).stat().st_size > 10_000
        combined = v.id in ("fig5-averaging-equals-schedule", "fig6-two-point-half-lr")  # one figure over replicates
        assert v.figure.startswith("r0/") != combined, (v.id, v.figure)
        assert not math.isnan(v.value) or v.id == "fig13-batch-size"  # tiny: a held-out drop can be 0 (ratio inf)
    data = json.loads((out / "verdicts.json").read_text())
    assert all(REQUIRED <= set(d) for d in data)
    # three replicates: branch points 14, 16, 18 (S0 = 0.6 * 24, 2 apart), second checkpoints 3 later, seeds 1..3
    reps = [(14, 17, 1), (16, 19, 2), (18, 21, 3)]
    for d in data:
        assert [(r["step"], r["step2"], r["seed"]) for r in d["details"]["replicates"]] == reps, d["id"]
        assert len(d["details"]["replicate_values"]) == 3 and d["details"]["interval"]["dof"] == 2
        rv = [r["value"] for r in d["details"]["replicates"]]
        if d["id"] != "fig13-batch-size" and all(math.isfinite(x) for x in rv):
            from scipy import stats

            assert d["value"] == pytest.approx(np.mean(rv))
            assert d["uncertainty"] == pytest.approx(stats.t.ppf(0.975, 2) * np.std(rv, ddof=1) / math.sqrt(3))
    rep0 = {d["id"]: d["details"]["replicates"][0]["details"] for d in data}

    lfv = data[REAL_IDS.index("linear-model-fit")]
    for r in range(3):  # the subspace premise: recomputed from the saved cosines of each replicate
        cos = json.loads((out / "sidetrips" / f"linear-fit-r{r}" / "summary.json").read_text())["subspace_cos"]
        assert len(cos) == 2 and all(0 <= c <= 1 for c in cos)
        sub = lfv["details"]["premises"][2]["details"]["replicates"][r]["values"]["min_principal_cos"]
        assert sub == pytest.approx(min(cos))
    lf0 = lfv["details"]["replicates"][0]
    assert lfv["id"] == "linear-model-fit" and lfv["threshold"] == pytest.approx(math.log(1.5))
    assert "variance" in lfv["checks"] and lfv["uncertainty"] is not None
    assert len(lf0["details"]["directions"]) == 2 and set(lf0["details"]["breaks"]) >= {"near_edge", "ratio_off",
                                                                                         "variance_off"}
    for r in range(3):
        assert (out / "sidetrips" / f"linear-fit-r{r}" / "directions.csv").exists()
        assert (out / "sidetrips" / f"lr-sweep-b16-r{r}" / "summary.json").exists()
        trip_cfg = json.loads((out / "sidetrips" / f"lr-sweep-b16-r{r}" / "config.json").read_text())
        assert (trip_cfg["step"], trip_cfg["options"]["seed"]) == (reps[r][0], r + 1)
    assert (out / "run" / "checkpoints").is_dir()
    assert not list((out / "sidetrips").glob("lr-sweep-r*"))  # fig. 2 sweeps at the training batch, shared with fig. 13
    run_cfg = json.loads((out / "run" / "config.json").read_text())
    assert (run_cfg["augment_strength"], run_cfg["weight_decay"], run_cfg["lr_schedule"]) == (1.5, 1e-3, "constant")
    assert {14, 16, 17, 18, 19, 20, 21} <= {int(p.stem.split("_")[1]) for p in (out / "run" / "checkpoints").iterdir()}

    # premises: (a) and (b) on every claim, (c) on fig6 and fig7, the replicates' interval last, with the numbers
    # recomputed independently (each premise value is its worst replicate's)
    by_id = {d["id"]: d for d in data}
    for d in data:
        ids = [p["id"] for p in d["details"]["premises"]]
        extra = {"fig6-two-point-half-lr": ["lemma2-fig6"], "fig7-gradient-alignment": ["lemma2-fig7"],
                 "fig5-averaging-equals-schedule": ["schedule-effect"], "fig13-batch-size": ["batch-range"],
                 "eq13-real-sqrt-lr": ["lemma1-stationary"], "linear-model-fit": ["subspace-stable"],
                 "posthoc-merge-equals-cooldown": ["lemma2-window", "constant-lr", "gain-resolved"]}
        assert ids == ["plateau", "not-memorised"] + extra.get(d["id"], []) + ["replicates-resolve"], (d["id"], ids)
        assert d["details"]["premises_met"] == all(p["met"] for p in d["details"]["premises"])
        flat = [f"{p['id']}: {c['name']}" for p in d["details"]["premises"] for c in p["conditions"]]
        assert [p["name"] for p in d["premises"]] == flat and all(set(p) == {"name", "value", "rule", "met"}
                                                                  for p in d["premises"])
        assert d["state"] == ("NOT DECIDED" if not d["details"]["premises_met"] else
                              "PASS" if d["passed"] else "FAIL") and d["passed"] == (d["state"] == "PASS")
    with open(out / "run" / "metrics.csv", newline="") as fh:
        losses = [float(r["train_loss"]) for r in csv.DictReader(fh)]
    plateau = by_id["fig2-single-step"]["details"]["premises"][0]
    assert plateau["conditions"][0]["value"] == pytest.approx(abs(np.mean(losses[18:]) / np.mean(losses[12:18]) - 1))
    assert plateau["conditions"][0]["threshold"] == 0.1 and plateau["details"]["branch_step"] == 14
    mem = by_id["fig2-single-step"]["details"]["premises"][1]
    assert mem["details"]["step"] == 14 and mem["details"]["n_batches"] == 3
    fits, gns = [], []
    for r in range(3):
        with open(out / "sidetrips" / f"alignment-r{r}" / "alignment.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        fits += [float(rows[-1][f"fixed_loss_{k}"]) / float(rows[0][f"fixed_loss_{k}"]) for k in ("constant", "linear")]
        gns += [max(max(float(x[f"norm_ratio_{k}"]), 1 / float(x[f"norm_ratio_{k}"])) for x in rows)
                for k in ("constant", "linear")]
    l7 = by_id["fig7-gradient-alignment"]["details"]["premises"][2]["conditions"]
    assert l7[0]["value"] == pytest.approx(min(fits)) and l7[1]["value"] == pytest.approx(max(gns))
    assert (l7[0]["comparison"], l7[0]["threshold"], l7[1]["comparison"], l7[1]["threshold"]) == (">=", 0.5, "<", 2.0)
    l6 = by_id["fig6-two-point-half-lr"]["details"]["premises"][2]
    assert set(l6["details"]["windows"]) == {"A (lr)", "B (lr, other batch order)", "H (lr/2)"}
    with open(out / "sidetrips" / "divergence-r0" / "divergence_fixed_batch.csv", newline="") as fh:
        fb = [r for r in csv.DictReader(fh) if r["model"] == "A"]
    ok = [float(r["cos_start"]) >= 0.5 and abs(float(r["grad_norm"]) / float(fb[0]["grad_norm"]) - 1) <= 0.05
          for r in fb]
    first_bad = next((i for i, x in enumerate(ok) if not x), None)
    window_a = int(fb[-1]["t"]) if first_bad is None else int(fb[first_bad - 1]["t"])
    assert l6["details"]["windows"]["A (lr)"]["steps"] == window_a and float(fb[0]["cos_start"]) == pytest.approx(1)
    per_rep = [x["values"]["window_steps"] for x in l6["details"]["replicates"]]
    assert per_rep[0] == min(w["steps"] for w in l6["details"]["windows"].values())
    assert l6["conditions"][0]["value"] == min(per_rep)
    assert l6["conditions"][0]["threshold"] == 1  # the first loss evaluation from a tenth of the 6 steps on

    # Lemma 1's slope of every replicate from its pairs at lr .. lr/16 (recomputed from pair_distances.csv)
    from scipy import stats

    e13 = by_id["eq13-real-sqrt-lr"]
    fs = (1.0, 0.5, 0.25, 0.125, 0.0625)
    for r in range(3):
        er = e13["details"]["replicates"][r]
        with open(out / "sidetrips" / f"divergence-r{r}" / "pair_distances.csv", newline="") as fh:
            end = {float(x["factor"]): (float(x["lr"]), float(x["dist"])) for x in csv.DictReader(fh) if x["t"] == "6"}
        assert sorted(end) == sorted(fs)
        x, y = np.log([end[f][0] for f in fs]), np.log([end[f][1] for f in fs])
        slope = np.polyfit(x, y, 1)[0]
        resid = y - np.polyval(np.polyfit(x, y, 1), x)
        half = stats.t.ppf(0.975, 3) * math.sqrt(resid @ resid / 3 / ((x - x.mean()) @ (x - x.mean())))
        assert er["details"]["residual_dof"] == 3
        assert er["details"]["slope"] == pytest.approx(slope) and er["uncertainty"] == pytest.approx(half, rel=1e-6)
        assert er["value"] == pytest.approx(abs(slope - 0.5) + half)
    assert e13["threshold"] == 0.15
    e0 = rep0["eq13-real-sqrt-lr"]
    assert e0["lrs"] == pytest.approx([0.05 * f for f in fs]) and e0["slope_at_t"]
    assert len(e0["function_distance_end"]) == 5
    lv = e0["premises"][2]["conditions"][0]
    assert lv["value"] == pytest.approx(max(e0["distance_growth_last_vs_previous_quarter"].values()))
    # fig. 13: B_noise measured at each branch point, the batches stated in its units, drops as ratios
    f13 = by_id["fig13-batch-size"]
    assert f13["details"]["interval"]["scale"] == "log"
    for r in range(3):
        fr = f13["details"]["replicates"][r]["details"]
        bn = float(fr["noise_scale"]["b_noise"])  # tiny run: may be "inf" (no resolved mean gradient)
        assert bn > 0 and json.loads((out / f"r{r}" / "noise_scale.json").read_text())["identity"]["step"] == reps[r][0]
        assert [x["b_over_noise_scale"] for x in fr["rows"]] == pytest.approx([16 / bn, 32 / bn])
        for x in fr["rows"]:
            assert x["heldout_drop"] <= 0 or x["drop_ratio"] == pytest.approx(x["train_drop"] / x["heldout_drop"])
    assert "B_noise = tr(Sigma)/|G|^2 = " in f13["statistic"]
    assert set(by_id["fig2-single-step"]["checks"]) >= {"best_lr_inside_grid_train", "best_lr_inside_grid_heldout"}
    assert rep0["fig2-single-step"]["batch_size"] == 16

    # the merge verdict: each replicate's merge window is its block (branch point to the next one), its Lemma 2
    # premise measured at the run's checkpoints in it, its cache
    ph = by_id["posthoc-merge-equals-cooldown"]
    for r in range(3):
        pr = ph["details"]["replicates"][r]["details"]
        assert (pr["S0"], pr["T"]) == (reps[r][0], reps[r][0] + 2)
        assert (out / f"r{r}" / "posthoc-claim" / "result.json").is_file()
    win = ph["details"]["premises"][2]["details"]["windows"]["run"]
    assert win["horizon"] == 2

    # the controls ran with the claims (tiny sizes) and the report shows them
    from validation.real.controls import CONTROLS

    ctl = json.loads((out / "controls" / "controls.json").read_text())["controls"]
    assert {(c["claim"], c["control"], c["state"]) for c in ctl} == {
        (cid, kind, state) for cid in CONTROLS for kind, state in (("positive", "PASS"), ("negative", "FAIL"))}
    assert "## Controls" in (out / "report.md").read_text()
    assert [p["name"].split(":")[0] for p in ph["premises"]][:2] == ["plateau", "not-memorised"]

    # the report states the regime before any verdict, the replicates of every claim; timings of every part
    report = (out / "report.md").read_text()
    assert report.index("## Regime at the branch point") < report.index("| id | statistic |")
    assert "(a) plateau" in report and "(c) Lemma 2's premise for fig7-gradient-alignment" in report
    assert report.count("| replicate | branch step | seed |") == len(REAL_IDS) and "steps 14, 16, 18" in report
    t = json.loads((out / "timings.json").read_text())["parts"]
    for part in ["training", "regime", "noise-scale", "sidetrip:lr-sweep-b16-r0", "sidetrip:divergence-r2",
                 "sidetrip:divergence-r1:pairs", "sidetrip:linear-fit-r0", "claim:eq13-real-sqrt-lr"]:
        assert t[part]["wall_s"] > 0 and t[part]["cpu_s"] > 0, part

    # resume after a kill during a divergence side-trip: its claims and directory are gone, the rest is kept
    for cid in ("fig6-two-point-half-lr", "fig8-distance-saturates", "eq13-real-sqrt-lr"):
        (out / "parts" / f"{cid}.json").unlink()
    (out / "sidetrips" / "divergence-r1" / "summary.json").unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in (out / "parts").iterdir()}
    again = reproduce(out, synthetic=False, progress=False, real_config=rc)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "parts").iterdir() if p.name in kept} == kept
    assert [_judged(v.to_dict()) for v in again] == [_judged(d) for d in data]
    t2 = json.loads((out / "timings.json").read_text())["parts"]
    assert t2["sidetrip:lr-sweep-b16-r0"] == t["sidetrip:lr-sweep-b16-r0"] and "sidetrip:divergence-r1" in t2

    # --run DIR validates an existing run without training (and never writes into it); a premise built to
    # fail (a memorised stream: held-out loss 3x the fresh batches' loss) is reported "not met", and the claim
    # is still judged by its own rule
    import realnet.probes

    real_measure = realnet.probes.memorisation

    def memorised(*a, **k):
        import dataclasses

        m = real_measure(*a, **k)
        return dataclasses.replace(m, heldout_loss=3 * m.fresh_train_loss, ratio=3.0)

    monkeypatch.setattr(realnet.probes, "memorisation", memorised)
    before = sorted(p.name for p in (out / "run").rglob("*"))
    out2 = tmp_path / "out2"
    rc2 = RealConfig(**{**rc.to_dict(), "run": str(out / "run")})
    v2 = reproduce(out2, synthetic=False, progress=False, real_config=rc2, only=["fig2-single-step"])
    assert v2[0].error is None and not (out2 / "run").exists()
    assert sorted(p.name for p in (out / "run").rglob("*")) == before
    assert v2[0].value == pytest.approx(by_id["fig2-single-step"]["value"])  # same replicates, same number
    d2 = json.loads((out2 / "verdicts.json").read_text())[0]
    assert d2["details"]["premises_met"] is False and d2["state"] == "NOT DECIDED" and d2["passed"] is False
    assert "not-memorised: heldout_over_fresh" in [p["name"] for p in d2["premises"] if not p["met"]]
    assert [p["met"] for p in d2["details"]["premises"]][:2] == [plateau["met"], False]
    assert d2["details"]["premises"][1]["conditions"][0]["value"] == 3.0
    rep2 = (out2 / "report.md").read_text()
    assert "(premise not met: not-memorised" in rep2 and "**not met**" in rep2
    assert "**NOT DECIDED**: premise `not-memorised: heldout_over_fresh` = 3" in rep2


@pytest.mark.slow
def test_prefetch_in_worker_processes_gives_the_same_verdicts(tmp_path):
    """The side-trips computed at once by two worker processes (validation.real.prefetch) are the side-trips
    computed one after the other in this process, byte for byte, and the verdicts are the same."""
    import os

    from validation import timings
    from validation.real import RealConfig

    rc = RealConfig(**{**TINY_REAL, "replicates": 2})
    two = reproduce(tmp_path / "w2", synthetic=False, progress=False, real_config=rc, workers=2)
    one = reproduce(tmp_path / "w1", synthetic=False, progress=False, real_config=rc, workers=1)
    assert [_judged(v.to_dict()) for v in two] == [_judged(v.to_dict()) for v in one]
    parts = timings.read(tmp_path / "w2")
    by = {k: rec.get("worker") for k, rec in parts.items() if k.count(":") == 1 and k.startswith("sidetrip:")}
    # 7 side-trips per replicate, all in the two workers (none in the claims)
    assert len(by) == 14 and len(set(by.values())) == 2 and None not in by.values()
    assert all(rec.get("worker") is None for k, rec in timings.read(tmp_path / "w1").items())

    def tables(d):
        return {str(p.relative_to(d)): p.read_bytes() for p in sorted((d / "sidetrips").rglob("*.csv"))}

    assert tables(tmp_path / "w2") == tables(tmp_path / "w1") and len(tables(tmp_path / "w1")) > 10
    from validation.real import default_workers

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert default_workers(rc) == max(1, min(2, cores))  # one torch thread per side-trip
    assert default_workers(RealConfig(**{**TINY_REAL, "threads": 0})) == 1  # torch on every core already
    assert default_workers(RealConfig(**{**TINY_REAL, "device": "cuda"})) == 1  # one device, shared
    with pytest.raises(ValueError, match="workers must be an integer >= 1"):
        reproduce(tmp_path / "w0", synthetic=False, progress=False, real_config=rc, workers=0)
    assert not (tmp_path / "w0").exists()


def test_delegated_output_allows_nested_claims_in_a_worker(tmp_path):
    """A worker may claim OUT/sidetrips/x inside the report OUT that its parent holds (delegate_env); without
    the delegation, or once the delegated pid no longer holds OUT, the same claim is refused as nested."""
    import os
    import subprocess
    import sys

    from sgdtraj.outputs import DELEGATE_ENV, claim_output, delegate_env

    code = ("import sys; from sgdtraj.outputs import claim_output, register_kind, OutputError\n"
            "register_kind('sidetrip', 'a realnet side-trip')\n"
            "try:\n    c = claim_output(sys.argv[1], 'sidetrip', {'a': 1})\n"
            "except OutputError as e:\n    print(e.reason); sys.exit(3)\nprint('ok')\n")
    env = {k: v for k, v in os.environ.items() if k != DELEGATE_ENV}

    def worker(path, extra=None):
        return subprocess.run([sys.executable, "-c", code, str(path)], env={**env, **(extra or {})},
                              capture_output=True, text=True, timeout=120)

    out = tmp_path / "out"
    with claim_output(out, "report", {"mode": "test"}):
        delegated = delegate_env(out)
        r = worker(out / "sidetrips" / "a")
        assert r.returncode == 3 and r.stdout.strip() == "nested"
        r = worker(out / "sidetrips" / "b", delegated)
        assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
        assert (out / "sidetrips" / "b" / ".sgd-trajectories.json").is_file()
    with pytest.raises(ValueError, match="not an output directory this process holds"):
        delegate_env(out)
    r = worker(out / "sidetrips" / "c", delegated)  # the parent let go of OUT: the delegation is void
    assert r.returncode == 3 and r.stdout.strip() == "nested"


def _children(pid: int) -> list[int]:
    import os

    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as fh:
                    stat = fh.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(d))
    return kids


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline") as fh:
            return fh.read()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGINT", "SIGKILL"])
def test_prefetch_workers_end_with_an_interrupted_or_killed_job(tmp_path, sig):
    """Ctrl-C (SIGINT to the job only) stops the prefetch's workers; SIGKILL of the job ends them within seconds
    too, in the middle of a long side-trip (they watch their parent: the end of their request pipe alone would
    only be seen after the side-trip). After the kill the report's directory is usable again."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc")
    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "out"
    code = (f"import sys; sys.path.insert(0, {str(repo / 'tests')!r})\n"
            "from test_validation import TINY_REAL\nfrom validation.real import RealConfig\n"
            "from validation.reproduction import reproduce\n"
            "cfg = RealConfig(**{**TINY_REAL, 'linear_fit_steps': 100000})\n"  # minutes: killed in the middle
            f"reproduce({str(out)!r}, synthetic=False, progress=False, real_config=cfg, workers=2)\n")
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    # no pipes: the workers inherit the job's stdio, and reading a pipe would wait for them too
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=repo, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        workers = []
        while time.monotonic() < deadline and proc.poll() is None:
            workers = [p for p in _children(proc.pid) if "validation.real._prefetch_worker" in _cmdline(p)]
            if len(workers) == 2:
                break
            time.sleep(0.05)
        assert len(workers) == 2, "the job never started its two workers"
        while time.monotonic() < deadline and not list((out / "sidetrips").glob("linear-fit-r*/config.json")):
            time.sleep(0.05)  # a long side-trip has begun in a worker
        assert list((out / "sidetrips").glob("linear-fit-r*"))
        time.sleep(0.5)
        proc.send_signal(getattr(signal, sig))
        proc.wait(timeout=120)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.1)
        assert not any(_alive(p) for p in workers), f"workers left running after {sig}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in _children(proc.pid) if proc.poll() is None else []:
            os.kill(p, signal.SIGKILL)
    assert proc.returncode != 0
    if sig == "SIGKILL":  # the dead job's lock is free again: the same report goes on
        from validation.real import RealConfig

        cfg = RealConfig(**{**TINY_REAL, "linear_fit_steps": 100000})
        v = reproduce(out, synthetic=False, progress=False, real_config=cfg, workers=2, only=["fig3-same-basin"])
        assert [x.id for x in v] == ["fig3-same-basin"] and v[0].error is None
