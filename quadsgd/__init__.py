"""quadsgd: exact theory and fast simulation of averaged SGD in the linear model (Sandler et al.)."""
from .kernels import EMA, SWA, AveragingKernel, Kernel, Last, NPoint, TwoPoint
from .model import LinearModel, stability_bound
from .theory import equivalent_schedule

__all__ = [
    "AveragingKernel", "Last", "TwoPoint", "NPoint", "SWA", "EMA", "Kernel",
    "LinearModel", "stability_bound",
    "equivalent_schedule",
]
__version__ = "0.1.0"
