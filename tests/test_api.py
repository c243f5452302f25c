"""The curated public API: each package re-exports exactly the names it documents."""
from __future__ import annotations

import importlib

import pytest

PUBLIC = {
    "quadsgd": {
        "AveragingKernel", "Last", "TwoPoint", "NPoint", "SWA", "EMA", "Kernel", "LinearModel", "stability_bound",
        "kernel_for_schedule",
        "simulate", "SimulationResult", "sweep", "testing", "stationary_covariance", "stationary_loss",
        "stationary_loss_per_coordinate",
        "effective_lr", "equivalent_schedule", "expected_loss", "kernel_variance_ratio", "stationary_radius",
    },
    "quadsgd.testing": {"models", "kernels", "assert_stationary_matches", "assert_curve_matches",
                        "check_stationary", "check_curve", "CheckResult"},
    "realnet": {"TrainConfig", "train", "lr_sweep", "fixed_batch", "averaging", "alignment", "divergence",
                "load_checkpoint", "save_checkpoint", "list_checkpoints", "CheckpointError", "create_model",
                "build_data",
                "KernelAveragedModel", "EquivalentScheduleLR", "fit_linear_model", "LinearFitOptions"},
    "realnet.averaging": {"KernelAveragedModel", "EquivalentScheduleLR"},
    "validation": {"reproduce", "CLAIM_IDS", "Verdict", "decide", "SyntheticConfig", "SYNTHETIC_CLAIMS"},
}


@pytest.mark.parametrize("package", sorted(PUBLIC))
def test_public_names(package):
    mod = importlib.import_module(package)
    assert PUBLIC[package] <= set(mod.__all__), PUBLIC[package] - set(mod.__all__)
    for name in mod.__all__:
        assert getattr(mod, name) is not None


def test_contract_claim_ids():
    from validation import CLAIM_IDS

    assert CLAIM_IDS == [
        "fig9-ema-fast-slow", "fig11-per-coordinate", "eq13-radius-sqrt-lr", "eq20-two-point", "eq21-n-point",
        "table1-equivalent-schedule-linear", "eq19-non-normal-gap", "fig2-single-step", "fig3-same-basin",
        "fig5-averaging-equals-schedule", "fig6-two-point-half-lr", "fig7-gradient-alignment",
        "fig8-distance-saturates", "fig13-batch-size", "linear-model-fit", "eq13-real-sqrt-lr",
        "posthoc-merge-equals-cooldown"]
