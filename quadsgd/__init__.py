"""quadsgd: exact theory and fast simulation of averaged SGD in the linear model (Sandler et al.)."""
from .kernels import EMA, SWA, AveragingKernel, Kernel, Last, NPoint, TwoPoint, parse_kernel
from .model import LinearModel, stability_bound
from .schedules import cooldown, kernel_for_schedule
from .simulation import SimulationResult, simulate
from .sweeps import SpecError, SweepError, expand_grid, load_spec, random_design, run_spec, sweep
from .theory import (
    AccuracyWarning,
    effective_lr,
    equivalent_schedule,
    expected_loss,
    kernel_variance_ratio,
    stationary_covariance,
    stationary_loss,
    stationary_loss_per_coordinate,
    stationary_radius,
)

__all__ = [
    "AveragingKernel", "Last", "TwoPoint", "NPoint", "SWA", "EMA", "Kernel", "parse_kernel",
    "kernel_for_schedule", "cooldown",
    "LinearModel", "stability_bound",
    "simulate", "SimulationResult", "testing",
    "sweep", "run_spec", "load_spec", "random_design", "expand_grid", "SweepError", "SpecError",
    "stationary_covariance", "stationary_loss", "stationary_loss_per_coordinate", "effective_lr",
    "equivalent_schedule", "expected_loss", "kernel_variance_ratio", "stationary_radius", "AccuracyWarning",
]
from . import testing  # noqa: E402  (hypothesis strategies and statistical assertions; loads hypothesis lazily)

__version__ = "0.1.0"
