"""Side-trips: experiments that branch off a checkpoint of a main trajectory (paper sec. 3 and 5).

Each side-trip reads a run directory and a checkpointed step ``S``, writes only into its own output directory
and returns a typed result, also saved there. Python API::

    result = realnet.lr_sweep(run_dir, step, out_dir, options=None, **overrides)
    result.train_min_loss, result.curve.lr, result.curve.train_loss     # typed fields and table columns
    result["train_min_loss"]                                           # the summary.json keys, as before
    same = realnet.sidetrips.LrSweepResult.load(out_dir)               # read a saved side-trip back
    # likewise fixed_batch, averaging_sidetrip, alignment, divergence; options are the *Options dataclasses

CLI: ``python -m realnet sidetrip NAME --run DIR --step S --out OUT [--key=value ...]``.
:data:`SIDETRIPS` is the registry (name -> :class:`SideTrip`); one module per side-trip, whose docstring lists
its output files and columns:

* ``lr-sweep`` (Fig. 2, 12, 13): :mod:`realnet.sidetrips.lr_sweep`; ``fixed-batch`` (Fig. 3): :mod:`.fixed_batch`;
  ``averaging`` (Fig. 1, 5, 10, 14): :mod:`.kernel_averages`; ``alignment`` (Fig. 7): :mod:`.alignment`;
  ``divergence`` (Fig. 6, 8, eq. 13): :mod:`.divergence`; ``linear-fit`` (App. A.1): :mod:`.linear_fit`
  (function ``fit_linear_model``).

Every output directory holds ``config.json`` (side-trip name, run, step, options, run config), ``run_info.json``
(time, command, seed, versions, ``git``, ``git_dirty``, device, precision), ``summary.json``, CSV files and the
ownership marker ``.sgd-trajectories.json`` (kind ``sidetrip``); ``.resume-state.pt`` while interrupted.
Non-finite numbers are ``null`` in JSON and ``nan``/``inf`` in CSV; an empty CSV cell means "not applicable".
Errors: ``--out`` inside the run or holding anything but the same side-trip is refused before anything is
written; a non-finite training loss stops it (:class:`realnet.trainer.DivergenceError`).
Shared conventions (batches, BatchNorm, evaluation, distances) and the runner: ``docs/side-trips.md``.
"""
from __future__ import annotations

from typing import Any, Mapping

from . import alignment, divergence, fixed_batch, kernel_averages, linear_fit, lr_sweep
from ._losses import batch_grad, batch_losses, functional_model, grad_vector
from ._results import Metrics, SideTripResult, Table
from ._runner import (
    BN_SEED,
    HELDOUT_SEED,
    Branch,
    ResumeState,
    RunContext,
    SideTrip,
    SideTripOptions,
    prepare_out,
    resolve_options,
    run_sidetrip,
)
from .alignment import AlignmentOptions, AlignmentRecords, AlignmentResult, DifferentBatches
from .divergence import (
    CheckpointDistances,
    DivergenceDistances,
    DivergenceEvaluations,
    DivergenceFixedBatch,
    DivergenceOptions,
    DivergenceResult,
    EndpointDistances,
    PairDistances,
)
from .fixed_batch import FixedBatchEndpoints, FixedBatchInterpolation, FixedBatchOptions, FixedBatchResult
from .kernel_averages import (
    AveragingOptions,
    AveragingResult,
    AveragingTable,
    KernelPoint,
    KernelResults,
    KernelSpec,
    ScheduleTable,
    TrajectoryLosses,
    TrajectoryPoint,
    averaging_sidetrip,
    kernel_at,
    parse_kernel,
)
from .linear_fit import LinearFitOptions, LinearFitResult, fit_linear_model
from .lr_sweep import LrSweepCurve, LrSweepHeldout, LrSweepOptions, LrSweepResult

__all__ = [
    "SideTripOptions", "LrSweepOptions", "FixedBatchOptions", "AveragingOptions", "AlignmentOptions",
    "DivergenceOptions", "averaging_sidetrip", "fit_linear_model", "SIDETRIPS",
    "SideTrip", "run_sidetrip", "RunContext", "Branch", "ResumeState", "prepare_out", "resolve_options",
    "parse_kernel", "kernel_at", "KernelSpec", "batch_losses", "batch_grad", "functional_model", "grad_vector",
    "headline", "BN_SEED", "HELDOUT_SEED",
    # results
    "SideTripResult", "Table", "Metrics", "LrSweepResult", "LrSweepCurve", "LrSweepHeldout", "FixedBatchResult",
    "FixedBatchInterpolation", "FixedBatchEndpoints", "AveragingResult", "AveragingTable", "TrajectoryLosses",
    "ScheduleTable", "TrajectoryPoint", "KernelPoint", "KernelResults", "AlignmentResult", "AlignmentRecords",
    "DifferentBatches", "DivergenceResult", "DivergenceDistances", "DivergenceEvaluations", "EndpointDistances",
    "CheckpointDistances", "DivergenceFixedBatch", "PairDistances",
    "LinearFitOptions", "LinearFitResult",
]

#: name -> :class:`SideTrip`, in the order the CLI lists them
SIDETRIPS: dict[str, SideTrip] = {m.SIDETRIP.name: m.SIDETRIP for m in (
    lr_sweep, fixed_batch, kernel_averages, alignment, divergence, linear_fit)}


def headline(name: str, summary: Mapping[str, Any] | SideTripResult) -> dict[str, Any]:
    """A few key numbers of side-trip ``name``'s result or summary dict (what the CLI prints)."""
    if isinstance(summary, SideTripResult):
        return summary.headline()
    return SIDETRIPS[name].result.headline_of(summary)
