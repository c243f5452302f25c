"""Claims of the paper checked on a real network (realnet runs and side-trips).

``--quick`` trains a ResNet-20 trajectory on the embedded digits data with per-sample augmentation (2,400
constant-lr steps, about two minutes on one CPU core) and runs the side-trips from its checkpoint at 75 % of
the run (step 1,800: the paper's 75k of 100k), where the trajectory is on a plateau and the augmented stream is
not memorised (measured: ``benchmarks/results/2026-12-01-regime-measurements.md``); ``--run DIR`` validates an
existing realnet run (e.g. a GPU ImageNet run) instead, branching from its checkpoint nearest to 75 % of its
length. Every verdict carries the regime premises measured at the branch point (:mod:`.premises`).

Layout:

* :mod:`.config` -- :class:`RealConfig`, the sizes (plain data);
* :mod:`.context` -- :class:`RealContext`, opened once per job (trains or checks the run) and passed to every
  claim; it runs or reads back side-trips and measures the regime premises; :class:`RealClaim`;
* :mod:`.requests` -- the side-trip requests ``(name, key, options)`` the claims read;
* :mod:`.prefetching` -- those side-trips computed at once in worker processes before the claims read them;
* :mod:`.premises` -- the premises (typed, with their rules);
* one module per family of claims: :mod:`.single_step` (fig. 2, 13), :mod:`.same_basin` (fig. 3),
  :mod:`.schedule_equivalence` (fig. 5, 6), :mod:`.gradient_alignment` (fig. 7), :mod:`.distance_saturation`
  (fig. 8), :mod:`.stationary_radius` (eq. 13), :mod:`.linear_model` (App. A.1);
* :mod:`.claims` -- :data:`REAL_CLAIMS`, in report order;
* :mod:`.controls` -- the claims' analysis on the paper's linear model where each claim holds (positive) and
  where it does not (negative): ``python -m validation controls``.
"""
from .claims import REAL_CLAIMS
from .config import RealConfig
from .context import RealClaim, RealContext
from .prefetching import default_workers, prefetch

__all__ = ["RealConfig", "RealContext", "RealClaim", "REAL_CLAIMS", "prefetch", "default_workers"]
