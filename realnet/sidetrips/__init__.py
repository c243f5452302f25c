r"""Side-trips: experiments that branch off a checkpoint of a main trajectory (paper sec. 3 and 5).

Each side-trip reads a run directory and a checkpointed step ``S``, writes only into its own output
directory (refused if it lies inside the run directory) and returns a typed result, also saved there.
Python API::

    result = realnet.lr_sweep(run_dir, step, out_dir, options=None, **overrides)
    result.train_min_loss, result.curve.lr, result.curve.train_loss     # typed fields and table columns
    result["train_min_loss"]                                           # the summary.json keys, as before
    same = realnet.sidetrips.LrSweepResult.load(out_dir)               # read a saved side-trip back
    # likewise fixed_batch, averaging_sidetrip, alignment, divergence; options are the *Options dataclasses

CLI: ``python -m realnet sidetrip NAME --run DIR --step S --out OUT [--key=value ...]``.

Layout
------
* :data:`SIDETRIPS` -- the registry, the one place that says what a side-trip is: name -> :class:`SideTrip`
  (options class, compute function, result class, one-line doc, public function). The CLI, the docs and
  ``validation`` read it. A new side-trip is one module defining ``SIDETRIP`` plus one entry below.
* ``_runner.py`` -- :func:`run_sidetrip`, the one shared runner (options, output directory, run context,
  config.json / run_info.json, determinism, timing, saving), :class:`RunContext`, :class:`Branch`.
* ``_results.py`` -- :class:`SideTripResult` (summary fields + :class:`Table` s, ``save``/``load``), :class:`Metrics`.
* ``_losses.py`` -- batched losses and gradients along lines in parameter space.
* ``lr_sweep.py``, ``fixed_batch.py``, ``kernel_averages.py``, ``alignment.py``, ``divergence.py`` -- one module per
  side-trip: its options, tables, result and computation; each module's docstring lists its output files
  and their columns. The package attributes ``lr_sweep`` etc. are these modules; the functions are
  ``realnet.lr_sweep``, ..., ``realnet.averaging_sidetrip`` (or ``SIDETRIPS[name].function``).

Conventions shared by all side-trips
-----------------------------------
* ``step`` ``S`` is a checkpoint: the parameters after ``S`` updates, with the momentum buffers of the
  run. "The batch at step t" is the training batch the main trajectory uses for update ``t``
  (:class:`realnet.data.BatchOrder`), so a side-trip from ``S`` that follows the main batch order sees
  exactly the batches of the main trajectory (``t = S, S+1, ...``), including their augmentation.
* SGD side-trip updates use the run's momentum (PyTorch convention) and weight decay; gradient-descent
  steps on a fixed batch (``fixed-batch``) and single steps (``lr-sweep``, ``direction=grad``) use the
  plain loss gradient.
* "Loss on a batch" (lr-sweep, fixed-batch, gradients in alignment) is the cross-entropy with
  BatchNorm normalising by that batch's own statistics (as in training) without touching running
  statistics, unless ``bn_mode=running`` (lr-sweep only: eval-mode BN with the checkpoint's running stats).
* Train / validation loss and accuracy of a *model* (averaging, divergence) are computed in eval mode
  after recomputing the BatchNorm statistics with ``torch.optim.swa_utils.update_bn`` on a fixed set of
  ``bn_batches`` training batches -- for averages, side-trip end points and trajectory points alike, so
  that differences reflect the parameters only. "train" = a fixed subset of ``train_eval_samples``
  training examples (no augmentation); "val" = up to ``val_samples`` examples of the validation split.
* L2 distances are over all trainable parameters (not BatchNorm buffers), in float64.
* Every output directory holds ``config.json`` (side-trip name, run, step, options, run config),
  ``run_info.json`` (time, command, seed, package versions, ``git`` commit and ``git_dirty``, device,
  precision), ``summary.json`` and CSV files, and the ownership marker ``.sgd-trajectories.json`` (kind
  ``sidetrip``; :func:`sgdtraj.outputs.claim_output`): an ``--out`` holding anything else -- a run, a sweep,
  a report, another side-trip -- is refused before anything is written; the same side-trip, finished, is
  read back; interrupted, it resumes (``averaging``, ``alignment`` and ``divergence`` save
  ``.resume-state.pt`` at most every ``save_every_s`` seconds; see ``_runner.py``). A branch whose training
  loss is not finite stops the side-trip (:class:`realnet.trainer.DivergenceError`). Non-finite numbers are ``null`` in JSON and ``nan``/``inf``
  in CSV; an empty CSV cell means "not applicable".

The side-trips (outputs in each module's docstring)
--------------------------------------------------
* ``lr-sweep`` (Fig. 2, 12, 13): :mod:`realnet.sidetrips.lr_sweep` -- single steps of many sizes.
* ``fixed-batch`` (Fig. 3): :mod:`realnet.sidetrips.fixed_batch` -- GD on one batch from two checkpoints.
* ``averaging`` (Fig. 1, 5, 10, 14): :mod:`realnet.sidetrips.kernel_averages` -- averages vs equivalent schedules.
* ``alignment`` (Fig. 7): :mod:`realnet.sidetrips.alignment` -- a fixed batch's gradient along side-trips.
* ``divergence`` (Fig. 6, 8, eq. 13): :mod:`realnet.sidetrips.divergence` -- other batch order, lr/2, end points;
  a fixed held-out batch along them (Lemma 2's premise); pairs of batch orders at lr * f (eq. 13).
* ``linear-fit`` (App. A.1): :mod:`realnet.sidetrips.linear_fit` -- the linear model fitted at S (Hessian, noise)
  against a constant-lr continuation (function ``fit_linear_model``: ``linear_fit`` is the module).
"""
from __future__ import annotations

from typing import Any, Mapping

from . import alignment, divergence, fixed_batch, kernel_averages, linear_fit, lr_sweep
from ._losses import batch_losses
from ._results import Metrics, SideTripResult, Table
from ._runner import BN_SEED, HELDOUT_SEED, Branch, RunContext, SideTrip, SideTripOptions, run_sidetrip
from .alignment import AlignmentOptions, AlignmentRecords, AlignmentResult, DifferentBatches
from .kernel_averages import (AveragingOptions, AveragingResult, AveragingTable, KernelPoint, KernelResults, KernelSpec,
                        ScheduleTable, TrajectoryLosses, TrajectoryPoint, averaging_sidetrip, kernel_at, parse_kernel)
from .divergence import (CheckpointDistances, DivergenceDistances, DivergenceEvaluations, DivergenceFixedBatch,
                         DivergenceOptions, DivergenceResult, EndpointDistances, PairDistances)
from .fixed_batch import FixedBatchEndpoints, FixedBatchInterpolation, FixedBatchOptions, FixedBatchResult
from .linear_fit import LinearFitOptions, LinearFitResult, fit_linear_model
from .lr_sweep import LrSweepCurve, LrSweepHeldout, LrSweepOptions, LrSweepResult

__all__ = [
    "SideTripOptions", "LrSweepOptions", "FixedBatchOptions", "AveragingOptions", "AlignmentOptions",
    "DivergenceOptions", "averaging_sidetrip", "fit_linear_model", "SIDETRIPS",
    "SideTrip", "run_sidetrip", "RunContext", "Branch", "parse_kernel", "kernel_at", "KernelSpec", "batch_losses",
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
