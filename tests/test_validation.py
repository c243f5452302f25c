"""validation: the verdict machinery, the report's structure, and a small end-to-end reproduce run."""
from __future__ import annotations

import json
import math

import pytest

from validation import Verdict, decide
from validation.__main__ import main as cli_main
from validation.reproduce import reproduce
from validation.synthetic import SyntheticConfig

REQUIRED = {"id", "claim", "statistic", "value", "threshold", "passed", "figure"}
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

    from validation.report import environment, write_report

    v = Verdict(id="x", claim="c", statistic="s", value=math.inf, comparison="<", threshold=0.5,
                details=dict(gap=-math.inf, missing=math.nan))
    d = v.to_dict()
    assert d["value"] == "inf" and d["details"] == {"gap": "-inf", "missing": None} and d["passed"] is False
    assert Verdict.from_dict(d).value == math.inf
    env = environment()
    assert env["git_hash"] == env["git"] and "git_dirty" in env and "torch" in env["versions"]
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
    assert cfg["environment"]["git_hash"] and cfg["synthetic"]["seed"] == 7
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


@pytest.mark.slow
def test_reproduce_real_claims_tiny_end_to_end(tmp_path):
    # every real-network claim runs end to end on a tiny trajectory (sizes far too small for the
    # verdicts to mean anything: this checks the plumbing, the files and the report)
    from validation.realclaims import RealConfig

    rc = RealConfig(steps=24, batch_size=16, lr=0.05, width=4, sweep_batch_size=32, sweep_batch_sizes=[16, 32],
                    fixed_batch_alphas=3, averaging_steps=4, alignment_steps=4, divergence_steps=6,
                    eval_samples=64, threads=1, device="cpu", linear_fit_k=2, linear_fit_sample_batches=2,
                    linear_fit_lags=2, linear_fit_kernels=["ema:0.5", "twopoint:2", "swa:2"], linear_fit_blocks=5,
                    linear_fit_noise_batches=8, linear_fit_curvature_batches=4)
    out = tmp_path / "out"
    verdicts = reproduce(out, synthetic=False, progress=False, real_config=rc)
    assert [v.id for v in verdicts] == ["fig2-single-step", "fig3-same-basin", "fig5-averaging-equals-schedule",
                                        "fig6-two-point-half-lr", "fig7-gradient-alignment",
                                        "fig8-distance-saturates", "fig13-batch-size", "linear-model-fit"]
    for v in verdicts:
        assert v.error is None, (v.id, v.error)
        assert v.source == "realnet" and (out / v.figure).stat().st_size > 10_000
        assert not math.isnan(v.value)
    data = json.loads((out / "verdicts.json").read_text())
    assert all(REQUIRED <= set(d) for d in data)
    lfv = data[-1]
    assert lfv["id"] == "linear-model-fit" and lfv["threshold"] == pytest.approx(math.log(1.5))
    assert "variance" in lfv["checks"] and lfv["uncertainty"] is not None
    assert len(lfv["details"]["directions"]) == 2 and set(lfv["details"]["breaks"]) >= {"near_edge", "ratio_off",
                                                                                         "variance_off"}
    assert (out / "sidetrips" / "linear-fit" / "directions.csv").exists()
    assert (out / "run" / "checkpoints").is_dir() and (out / "sidetrips" / "lr-sweep" / "summary.json").exists()
    # --run DIR validates an existing run without training (and never writes into it)
    before = sorted(p.name for p in (out / "run").rglob("*"))
    out2 = tmp_path / "out2"
    rc2 = RealConfig(**{**rc.to_dict(), "run": str(out / "run")})
    v2 = reproduce(out2, synthetic=False, progress=False, real_config=rc2, only=["fig2-single-step"])
    assert v2[0].error is None and not (out2 / "run").exists()
    assert sorted(p.name for p in (out / "run").rglob("*")) == before
