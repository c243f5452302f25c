"""realnet: ResNet trajectories, checkpoints and the paper's side-trip experiments (Sandler et al.).

Main trajectory: :func:`train` (CLI ``python -m realnet train``); side-trips from a checkpoint:
:func:`lr_sweep`, :func:`fixed_batch`, :func:`averaging_sidetrip`, :func:`alignment`, :func:`divergence`,
:func:`fit_linear_model` (side-trip ``linear-fit``; :mod:`quadsgd.fitting` holds its pure functions)
(CLI ``python -m realnet sidetrip NAME``), each returning a typed result (``result.save(dir)`` /
``Result.load(dir)``; ``result["key"]`` reads its summary). Output files and columns are documented in
:mod:`realnet.trainer` and the :mod:`realnet.sidetrips` package (one module per side-trip; the registry
:data:`realnet.sidetrips.SIDETRIPS`). Averaging in anyone's training loop: :class:`KernelAveragedModel` (any
quadsgd kernel as an averaged model) and :class:`EquivalentScheduleLR` (its equivalent lr schedule), in
:mod:`realnet.averaging`. The regime of a run at a checkpoint (plateau, memorisation, a fixed batch along a
side-trip): :mod:`realnet.regime`. Merging stored checkpoints after training (any kernel or cooldown on the
checkpoint grid, streaming): :mod:`realnet.posthoc` (``grid_weights``, ``average_checkpoints``) and the command
``python -m realnet posthoc`` (:mod:`realnet.posthoc_run`).
"""
from . import averaging
from .averaging import EquivalentScheduleLR, KernelAveragedModel, equivalent_multipliers, unwrap_model
from .checkpoint import CheckpointError, list_checkpoints, load_checkpoint, save_checkpoint
from .config import ConfigError, TrainConfig, resolve_config
from .data import BatchOrder, DataBundle, build_data
from .models import ResNet20, count_parameters, create_model
from .sidetrips import (
                        AlignmentOptions,
                        AveragingOptions,
                        DivergenceOptions,
                        FixedBatchOptions,
                        LinearFitOptions,
                        LrSweepOptions,
                        averaging_sidetrip,
                        fit_linear_model,
                        kernel_at,
                        parse_kernel,
)
from .sidetrips.alignment import alignment
from .sidetrips.divergence import divergence
from .sidetrips.fixed_batch import fixed_batch
from .sidetrips.lr_sweep import lr_sweep
from .trainer import DivergenceError, evaluate, load_config, lr_at, train, train_step

__all__ = [
    # configuration and the main trajectory
    "TrainConfig", "resolve_config", "ConfigError", "train", "train_step", "evaluate", "lr_at", "load_config",
    "DivergenceError",
    # data and models
    "build_data", "DataBundle", "BatchOrder", "create_model", "ResNet20", "count_parameters",
    # checkpoints
    "save_checkpoint", "load_checkpoint", "list_checkpoints", "CheckpointError",
    # side-trips
    "lr_sweep", "fixed_batch", "averaging_sidetrip", "alignment", "divergence", "fit_linear_model",
    "LrSweepOptions", "FixedBatchOptions", "AveragingOptions", "AlignmentOptions", "DivergenceOptions",
    "LinearFitOptions",
    "parse_kernel", "kernel_at",
    # averaging in your own loop (the module realnet.averaging and its classes)
    "averaging", "KernelAveragedModel", "EquivalentScheduleLR", "equivalent_multipliers", "unwrap_model",
]
__version__ = "0.1.0"
