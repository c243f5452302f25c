"""The ``linear-fit`` side-trip: end to end on a tiny digits run (CLI in a subprocess, contract files and fields),
typed result round trip, bad inputs, and the side-trip's computation (:func:`fit_model` + :func:`build_result`)
on a synthetic quadratic "network" of known Hessian and noise: it recovers kappa and sigma, the verdict's
statistics pass, and a wrong noise model (gradients at the wrong batch size) fails the variance check only.

False-alarm rates are stated per statistical check (fixed seeds: the outcomes are deterministic).
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import realnet
from quadsgd import fitting as lf
from realnet.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint, save_checkpoint
from realnet.config import ConfigError, TrainConfig
from realnet.sidetrips.linear_fit import LinearFitOptions, LinearFitResult, build_result, fit_model

REPO = Path(__file__).resolve().parents[1]
# tiny sizes: min_steps(2, these kernels, 5 blocks) = 5 * 5 * 3 + 10 - 1 = 84
TINY = dict(k=3, steps=84, lags=2, kernels=["ema:0.5", "twopoint:2", "swa:2"], n_blocks=5, sample_size=32,
            curvature_batches=4, noise_batches=8, n_boot=200, threads=1, progress=False)
CONTRACT_COLUMNS = ["direction", "kappa", "lr_kappa", "sigma", "predicted_variance", "measured_variance"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """ResNet-20 (width 4, 17,326 parameters) trained 40 steps on digits (batch 16, lr 0.05); checkpoints 0, 20, 40."""
    run = tmp_path_factory.mktemp("linfit") / "run"
    realnet.train(TrainConfig(dataset="digits", model="resnet20", width=4, steps=40, batch_size=16, lr=0.05,
                              checkpoint_every=20, eval_every=20, progress=False, threads=1), run)
    return run


def _fingerprint(run: Path) -> dict:
    return {str(p.relative_to(run)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(run.rglob("*")) if p.is_file()}


def _csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_cli_end_to_end_contract(tiny_run, tmp_path):
    before = _fingerprint(tiny_run)
    out = tmp_path / "lf"
    cmd = [sys.executable, "-m", "realnet", "sidetrip", "linear-fit", "--run", str(tiny_run), "--step", "20",
           "--out", str(out), "--k", "3", "--steps", "84", "--lags=2", "--kernels=ema:0.5,twopoint:2,swa:2",
           "--n-blocks=5", "--sample-size=32", "--curvature-batches=4", "--noise-batches=8", "--n-boot=200",
           "--threads=1"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    head = json.loads(r.stdout.strip().splitlines()[-1])
    assert {"statistic", "passed", "variance_statistic", "top_eigenvalue", "kappa"} <= set(head)
    assert "linear-fit: continuation at lr 0.05" in r.stderr and "linear-fit: Lanczos" in r.stderr  # tqdm
    assert _fingerprint(tiny_run) == before  # the parent run is untouched

    for f in ("summary.json", "directions.csv", "kernels.csv", "autocorrelation.csv", "spectrum.csv",
              "projections.csv", "continuation.csv", "config.json", "run_info.json"):
        assert (out / f).is_file(), f
    s = json.loads((out / "summary.json").read_text())
    assert s["sidetrip"] == "linear-fit" and s["k"] == 3 and s["steps"] == 84
    ev = s["eigenvalues"]
    assert len(ev) == 3 and ev == sorted(ev, reverse=True) and ev[0] > 0
    assert len(s["noise_std"]) == 3 and all(x > 0 for x in s["noise_std"])
    assert s["lr"] == pytest.approx(0.05) and s["momentum"] == pytest.approx(0.9)
    prov = s["provenance"]
    assert prov["git"] and "torch" in prov["versions"] and prov["config"]["options"]["k"] == 3 and prov["seed"] == 0
    assert s["lanczos"]["converged"] == 3 and s["lanczos"]["max_relative_residual"] <= 1e-4
    assert s["statistic"]["threshold"] == pytest.approx(math.log(1.5)) and s["kappa_source"] == "rayleigh"

    rows = _csv(out / "directions.csv")
    assert list(rows[0])[:1] == ["direction"] and set(CONTRACT_COLUMNS) <= set(rows[0])
    assert [int(r["direction"]) for r in rows] == [0, 1, 2]
    for r, e, sig in zip(rows, ev, s["noise_std"]):
        assert float(r["eigenvalue"]) == pytest.approx(e) and float(r["sigma"]) == pytest.approx(sig)
        # kappa = fresh-batch Rayleigh quotient + weight decay; lr_kappa = lr * kappa
        assert float(r["kappa"]) == pytest.approx(float(r["rayleigh"]) + 1e-4)
        assert float(r["lr_kappa"]) == pytest.approx(0.05 * float(r["kappa"]))
        assert float(r["predicted_variance"]) > 0 and float(r["measured_variance"]) > 0
    kr = _csv(out / "kernels.csv")
    assert len(kr) == 9 and {r["kernel"] for r in kr} == {"ema:0.5", "twopoint:2", "swa:2"}
    assert len(_csv(out / "autocorrelation.csv")) == 3 * 2
    proj = _csv(out / "projections.csv")
    assert len(proj) == 85 * 3 and all(float(r["projection"]) == 0.0 for r in proj[:3])  # theta_S - theta_S
    cont = _csv(out / "continuation.csv")
    assert [int(r["step"]) for r in cont] == list(range(20, 104))

    # a checkpoint that does not exist: the runner's message names the available steps; nothing is written
    bad = subprocess.run(cmd[:7] + ["--step", "7", "--out", str(tmp_path / "o")], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and "step 7 is not checkpointed" in bad.stderr and "0, 20, 40" in bad.stderr
    assert not (tmp_path / "o" / "summary.json").exists()
    # N too short for the (default) kernels: the options name steps and the minimum, before anything runs
    short = subprocess.run(cmd[:7] + ["--step", "20", "--out", str(tmp_path / "s"), "--steps", "500"], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert short.returncode == 2 and "steps = 500 is too short" in short.stderr
    assert not (tmp_path / "s").exists()
    assert f"need steps >= {lf.min_steps(10, lf.DEFAULT_KERNELS, 20)}" in short.stderr


def test_result_round_trip_and_measurement_consistency(tiny_run, tmp_path):
    out = tmp_path / "lf"
    s = realnet.fit_linear_model(tiny_run, 40, out, **TINY)
    assert isinstance(s, LinearFitResult) and s["eigenvalues"].shape == (3,) and s.wall_s > 0
    back = LinearFitResult.load(out)
    assert back.summary.keys() == s.summary.keys()
    np.testing.assert_array_equal(back.eigenvalues, s.eigenvalues)
    np.testing.assert_array_equal(back.noise_std, s.noise_std)
    assert back.statistic == s.statistic and back.timing == s.timing and back.lanczos == s.lanczos
    for name in LinearFitResult.TABLES:
        a, b = getattr(s, name), getattr(back, name)
        for col in a.columns():
            np.testing.assert_array_equal(getattr(a, col), getattr(b, col), err_msg=f"{name}.{col}")
    again = back.save(tmp_path / "again")
    for f in sorted(p.name for p in out.iterdir() if not p.name.startswith(".")):  # not the marker / lock
        assert (again / f).read_bytes() == (out / f).read_bytes(), f
    # the saved series reproduces the saved measurement exactly (the analysis is a pure function of it)
    P = back.projections
    assert P.shape == (85, 3)
    m = lf.measure(P, back.kernels, back.lags, kappa=back.kappa, n_blocks=back.n_blocks)
    np.testing.assert_allclose(m.variance, back.directions.measured_variance, rtol=1e-12)
    np.testing.assert_allclose(m.variance_ratio, back.per_kernel("measured_ratio"), rtol=1e-12)
    # and the predictions are quadsgd's linear model with the saved kappa, sigma, lr, momentum
    p = lf.predict(back.kappa, back.noise_std, back.lr, back.momentum, back.kernels, back.lags)
    np.testing.assert_allclose(p.variance, back.directions.predicted_variance, rtol=1e-12)
    np.testing.assert_allclose(p.variance_ratio, back.per_kernel("predicted_ratio"), rtol=1e-12)
    assert s.statistic.value == pytest.approx(lf.fit_statistic(m.variance_ratio, p.variance_ratio, n_boot=200).value)
    # the same run from the same step with the same options is reproducible on CPU
    s2 = realnet.fit_linear_model(tiny_run, 40, tmp_path / "lf2", **TINY)
    np.testing.assert_array_equal(s2.projections, s.projections)
    np.testing.assert_array_equal(s2.eigenvalues, s.eigenvalues)


def test_bad_inputs_name_the_option(tiny_run, tmp_path):
    def run(**kw):
        return realnet.fit_linear_model(tiny_run, 20, tmp_path / "x", **{**TINY, **kw})

    P = realnet.count_parameters(realnet.create_model("resnet20", 10, small_stem=True, width=4))
    with pytest.raises(ConfigError, match=rf"k = {P + 1} exceeds the number of trainable parameters \({P}\); "
                                          rf"k must be in \[1, {P}\]"):
        run(k=P + 1)
    assert not (tmp_path / "x" / "summary.json").exists()
    with pytest.raises(ValueError, match=r"step 30 is not checkpointed.*available steps: 0, 20, 40"):
        realnet.fit_linear_model(tiny_run, 30, tmp_path / "y", **TINY)
    with pytest.raises(ConfigError, match=r"steps = 83 is too short: lag-2 autocorrelations .* need steps >= 84"):
        run(steps=83)
    with pytest.raises(ConfigError, match=r"steps = 400 is too short: lag-100 autocorrelations"):
        run(steps=400, lags=100)
    with pytest.raises(ConfigError, match=r"k must be an integer >= 1"):
        run(k=0)
    with pytest.raises(ConfigError, match=r"sample_size \(40\) must be a multiple of the run's batch size \(16\)"):
        run(sample_size=40)
    with pytest.raises(ConfigError, match=r"kernels: .*'last' is the last iterate"):
        run(kernels=["last"])
    with pytest.raises(ConfigError, match=r"kernels: bad kernel spec 'twopoint'"):
        run(kernels=["twopoint"])
    with pytest.raises(ConfigError, match=r"lanczos_steps .* must exceed k \(3\)"):
        run(lanczos_steps=3)
    with pytest.raises(ConfigError, match=r"kappa_source must be one of 'rayleigh', 'lanczos'"):
        run(kappa_source="hutchinson")
    with pytest.raises(ConfigError, match=r"noise_batches must be an integer >= 4"):
        run(noise_batches=3)
    with pytest.raises(ConfigError, match=r"unknown LinearFitOptions key 'kk'"):
        run(kk=3)


def test_quick_and_full_sizes_satisfy_the_length_rule():
    from validation.real import RealConfig

    for mode in ("quick", "full"):
        c = RealConfig.for_mode(mode)
        o = LinearFitOptions(k=c.linear_fit_k, steps=c.linear_fit_steps, lags=c.linear_fit_lags,
                             kernels=list(c.linear_fit_kernels), n_blocks=c.linear_fit_blocks)
        o.validate(0)
        assert o.resolved_steps() == lf.min_steps(c.linear_fit_lags, c.linear_fit_kernels, c.linear_fit_blocks)
    assert LinearFitOptions().resolved_steps() == 10_341  # the averaging side-trip's kernels, 20 blocks


# ------------------------------------------------------------------------------------ synthetic quadratic network
class QuadraticNet(nn.Module):
    r"""Loss on example b: :math:`\tfrac12\theta^\top A\theta - b^\top\theta`; batch mean: Hessian A, noise
    Cov(b)/|B|."""

    def __init__(self, A: np.ndarray):
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(A.shape[0], dtype=torch.float64))
        self.register_buffer("A", torch.tensor(A))

    def forward(self, b):
        th = self.theta
        return 0.5 * th @ (self.A @ th) - b @ th


def _summed(out, y):
    return out.sum()


def _synthetic(noise_batch_size: int):
    """A known problem (top-6 eigenvalues 8..0.4 of A, weight decay 0.02, non-diagonal noise covariance C of the
    batch mean at B = 4, SGD momentum 0.9, lr 0.05) through fit_model with fresh noise batches of the given size."""
    d, B = 40, 4
    lr, beta, wd = 0.05, 0.9, 0.02
    rng = np.random.default_rng(0)
    U, _ = np.linalg.qr(rng.normal(size=(d, d)))
    lam = np.concatenate([[8.0, 4.0, 2.0, 1.0, 0.6, 0.4], rng.uniform(0.01, 0.1, d - 6)])
    A = (U * lam) @ U.T
    A = 0.5 * (A + A.T)
    Gm = rng.normal(size=(d, d))
    C = Gm @ Gm.T / d + 0.2 * np.eye(d)  # covariance of the mean of a batch of B
    chol = torch.linalg.cholesky(torch.tensor(C * B))  # per-example covariance B C
    gen = torch.Generator().manual_seed(1)

    def batches(n, size):
        for _ in range(n):
            yield torch.randn(size, d, generator=gen, dtype=torch.float64) @ chol.T, torch.zeros(size)

    net = QuadraticNet(A)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=beta, weight_decay=wd)

    def update(x, y):
        opt.zero_grad()
        loss = net(x).mean()
        loss.backward()
        opt.step()
        return loss.detach()

    o = LinearFitOptions(k=6, bn_mode="eval", lanczos_tol=1e-12, curvature_batches=2, noise_batches=600,
                         steps=4000, burn_in=300, lags=5, kernels=["ema:0.1", "twopoint:10", "swa:10"], n_boot=500)
    sample = (torch.zeros(8, d, dtype=torch.float64), torch.zeros(8))
    fit = fit_model(net, sample, batches(o.curvature_batches, B), batches(o.noise_batches, noise_batch_size),
                    batches(o.burn_in + o.resolved_steps(), B), update, lr=lr, momentum=beta, weight_decay=wd,
                    batch_size=B, options=o, loss_fn=_summed)
    return fit, o, lam, U, C, wd


def test_synthetic_quadratic_through_the_sidetrip_path(tmp_path):
    """Truth: kappa = eig(A) + wd exactly (the Hessian is constant, so Lanczos and the Rayleigh quotients agree to
    1e-10); sigma_i = sqrt(v_i^T C v_i) within 3.9 standard errors (Bonferroni over 6 at ~1e-3); every measured
    variance, integrated time and kernel variance ratio within |z| < 4.3 of the prediction (Bonferroni over 6 x 5
    at ~1e-3 for t with 19 dof, conservatively); both verdict statistics pass and no direction is listed as broken.
    A wrong noise model -- fresh gradients at batch size 1 instead of 4, i.e. sigma x 2 -- leaves the ratio
    statistic passing and fails the variance check by log 4."""
    from validation.real.linear_model import where_it_breaks

    fit, o, lam, U, C, wd = _synthetic(noise_batch_size=4)
    np.testing.assert_allclose(fit.lanczos.eigenvalues, lam[:6], rtol=1e-10)
    np.testing.assert_allclose(fit.kappa, lam[:6] + wd, rtol=1e-10)
    np.testing.assert_allclose(fit.rayleigh.mean(0), lam[:6], rtol=1e-10)
    V = fit.lanczos.eigenvectors.numpy()
    np.testing.assert_allclose(np.abs(np.sum(V * U[:, :6].T, axis=1)), 1.0, atol=1e-8)
    sigma_true = np.sqrt(np.einsum("id,de,ie->i", V, C, V))
    assert np.all(np.abs(fit.noise.sigma - sigma_true) < 3.9 * fit.noise.sigma_se)
    res = build_result(fit, o, run="synthetic", step=0, batch_size=4)
    d = res.directions
    zs = np.concatenate([(d.measured_variance - d.predicted_variance) / d.measured_variance_se,
                         (d.measured_integrated_time - d.predicted_integrated_time) / d.measured_integrated_time_se,
                         res.kernel_table.z_ratio])
    assert np.all(np.abs(zs) < 4.3), np.round(zs, 2)
    assert res.statistic.passed and res.statistic.value < 0.1 and res.variance_statistic.passed
    assert res.statistic.n_directions == 6 and res.statistic.n_values == 18 and res.stable == [True] * 6
    assert res.alternative_kappa_source == "lanczos"
    assert res.alternative_statistic.value == pytest.approx(res.statistic.value, abs=1e-6)
    assert np.all(d.block_ok == 1) and np.all(np.abs(d.trend) < 1.0)
    br = where_it_breaks(res, lf.FIT_THRESHOLD)["breaks"]
    assert br["ratio_off"] == [] and br["variance_off"] == [] and br["unstable"] == []
    # typed result of the synthetic fit round-trips through the files as well
    back = LinearFitResult.load(res.save(tmp_path / "syn"))
    np.testing.assert_array_equal(back.projections, fit.projections)
    assert back.statistic == res.statistic

    wrong, o, *_ = _synthetic(noise_batch_size=1)
    np.testing.assert_allclose(wrong.noise.sigma / fit.noise.sigma, 2.0, rtol=0.25)
    bad = build_result(wrong, o, run="synthetic", step=0, batch_size=1)
    assert bad.statistic.passed  # the ratios are blind to the noise scale ...
    assert not bad.variance_statistic.passed  # ... the variances are not
    assert bad.variance_statistic.value == pytest.approx(math.log(4.0), abs=0.3)
    br = where_it_breaks(bad, lf.FIT_THRESHOLD)["breaks"]
    assert br["variance_too_small"] == list(range(6)) and br["ratio_off"] == []


def test_memory_bound_and_the_runs_ranks(tiny_run, tmp_path):
    """Eval-mode BatchNorm with micro_batch=5 (passes of 5, 5, 5, 1 per batch of 16; the Hessian sample in host
    memory) gives the one-shot fit to float32 rounding: eigenvalues and Rayleigh quotients within 1e-6 relative
    (measured ~1e-7), noise within 1e-5 (~3e-7), projections within 1e-5 of their largest value (~2e-7 absolute).
    On a run whose checkpoints say 2 ranks (no SyncBN) the Hessian, curvature and noise normalise each rank's share
    of 8 -- different numbers from the one-process run -- and a bound of one share per pass changes nothing; a
    bound below the share is refused naming micro_batch before anything is written."""
    kw = dict(TINY, bn_mode="eval")
    one = realnet.fit_linear_model(tiny_run, 20, tmp_path / "e0", **kw)
    bounded = realnet.fit_linear_model(tiny_run, 20, tmp_path / "e5", micro_batch=5, **kw)
    np.testing.assert_allclose(bounded.eigenvalues, one.eigenvalues, rtol=1e-6)
    np.testing.assert_allclose(bounded.rayleigh, one.rayleigh, rtol=1e-6)
    np.testing.assert_allclose(bounded.noise_std, one.noise_std, rtol=1e-5)
    np.testing.assert_allclose(bounded.projections, one.projections, atol=1e-5 * np.abs(one.projections).max())

    two = tmp_path / "two"
    shutil.copytree(tiny_run, two)
    for s in list_checkpoints(two):
        ck = load_checkpoint(checkpoint_path(two, s))
        ck["world_size"] = 2
        save_checkpoint(checkpoint_path(two, s), ck)
    whole = realnet.fit_linear_model(tiny_run, 20, tmp_path / "b1", **TINY)
    ghost = realnet.fit_linear_model(two, 20, tmp_path / "b2", **TINY)
    ghost_bounded = realnet.fit_linear_model(two, 20, tmp_path / "b2m", micro_batch=8, **TINY)
    assert np.all(np.abs(ghost.eigenvalues / whole.eigenvalues - 1) > 1e-3)
    assert np.all(np.abs(ghost.noise_std / whole.noise_std - 1) > 1e-3)
    for name in ("eigenvalues", "rayleigh", "noise_std", "projections"):
        np.testing.assert_array_equal(getattr(ghost_bounded, name), getattr(ghost, name), err_msg=name)
    with pytest.raises(ConfigError, match="micro_batch=4 is smaller than the BatchNorm group of 8 examples"):
        realnet.fit_linear_model(two, 20, tmp_path / "bad", micro_batch=4, **TINY)
    assert not (tmp_path / "bad").exists()


def test_subspace_stability_measures_the_rotation_of_the_top_subspace():
    """Principal-angle cosines between the top-k directions and H_end V: 1 for the same Hessian, cos(phi) when the
    end point's Hessian is the start's rotated by phi in a plane mixing a top direction with a low one."""
    import math

    import torch

    from realnet.sidetrips.linear_fit import subspace_stability

    class _Loss:
        def __init__(self, H):
            self.H = H

        def hvp(self, v, theta):
            return self.H @ v

    P, k = 12, 3
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(P, P, generator=g, dtype=torch.float64))
    lam = torch.tensor([10.0, 7.0, 5.0] + [0.1 * (i + 1) for i in range(P - k)], dtype=torch.float64)
    H = Q @ torch.diag(lam) @ Q.T
    V = Q[:, :k].T.contiguous()
    theta = torch.zeros(P, dtype=torch.float64)
    assert subspace_stability(V, _Loss(H), theta) == pytest.approx([1.0] * k, abs=1e-12)
    phi = 0.6
    R = torch.eye(P, dtype=torch.float64)
    a, b = Q[:, 0], Q[:, k]  # rotate the top direction towards a low one
    R = R + (math.cos(phi) - 1) * (torch.outer(a, a) + torch.outer(b, b)) + math.sin(phi) * (torch.outer(b, a) -
                                                                                              torch.outer(a, b))
    cos = subspace_stability(V, _Loss(R @ H @ R.T), theta)
    # H_end v1 = (10 cos^2 + 0.1 sin^2) v1 + (10 - 0.1) cos sin b: its angle with span(V) (~ phi for a wide gap)
    along, off = 10 * math.cos(phi) ** 2 + 0.1 * math.sin(phi) ** 2, 9.9 * math.cos(phi) * math.sin(phi)
    assert sorted(cos) == pytest.approx(sorted([along / math.hypot(along, off), 1.0, 1.0]), abs=1e-9)
    assert abs(math.acos(min(cos)) - phi) < 0.01
