"""Run configuration: one flat ``@dataclass`` with commented fields (nanoGPT style).

Values come from, in increasing precedence: the dataclass defaults, a TOML file (``--config f.toml``,
read with :mod:`tomllib`) and ``--key=value`` / ``--key value`` command-line overrides (dashes in
keys are read as underscores). An unknown key is refused with a :class:`ConfigError` that lists the
valid keys. The same machinery (:func:`parse_overrides`, :func:`build_options`) serves the side-trip
option dataclasses in :mod:`realnet.sidetrips`. Value checks raise :class:`ConfigError` (a ``ValueError``)
through :func:`check_int` / :func:`check_choice`, the ConfigError forms of :mod:`sgdtraj.arguments`.

``auto`` fields (``model``, ``small_stem``, ``image_size``, ...) are filled in by
:func:`resolve_config`; ``config.json`` always stores the resolved values, and resuming compares
resolved values (see :data:`RUNTIME_FIELDS` for the keys allowed to differ).
"""
from __future__ import annotations

import dataclasses
import functools
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from sgdtraj import arguments

from .models import MODEL_NAMES
from .pipeline import auto_workers

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the tomli backport (declared in pyproject.toml)
    import tomli as tomllib

__all__ = [
    "ConfigError", "TrainConfig", "RUNTIME_FIELDS", "resolve_config", "config_diff",
    "parse_overrides", "build_options", "DATASETS", "MODELS", "SCHEDULES", "check_int", "check_choice", "FLAG",
    "SidetripSizes", "sidetrip_sizes",
]

DATASETS = ("digits", "cifar10", "cifar100", "imagenet")
MODELS = MODEL_NAMES  # the model names are defined once, in realnet.models
SCHEDULES = ("constant", "step", "linear", "cosine")
PRECISIONS = ("auto", "fp32", "bf16")


class ConfigError(ValueError):
    """A configuration value or key is invalid (the message names the key and the allowed values)."""


@dataclass
class TrainConfig:
    # ---- data -------------------------------------------------------------------------------
    dataset: str = "digits"  # digits (scikit-learn's bundled 8x8 digits) | cifar10 | cifar100 | imagenet
    data_dir: str | None = None  # local root for cifar10/100 (torchvision format) or imagenet; never downloaded
    image_size: int = 0  # input side in pixels; 0 = dataset default (digits 16, cifar 32, imagenet 224)
    heldout_size: int = 0  # held-out examples carved from the training split; 0 = default (300 / 5000 / 10000)
    augment: bool = True  # training-stream augmentation: random crop + flip (cifar/imagenet); digits: see next key
    augment_strength: float = 0.0  # digits only: strength of realnet.data.DigitsAugment (affine + elastic + noise)
    #   on training and held-out batches (0 = plain digits; needs augment); validation is never augmented
    # ---- model ------------------------------------------------------------------------------
    model: str = "auto"  # resnet34 | resnet18 | resnet20 | auto (resnet20 for digits, resnet34 otherwise)
    width: int = 16  # resnet20 base width (16 = He et al. 2015); ignored by resnet18/34
    small_stem: bool | None = None  # 3x3 stride-1 stem, no max-pool (None = auto: True unless imagenet)
    # ---- optimisation: SGD, PyTorch momentum convention (buf = m*buf + g; p -= lr*buf) ---------
    steps: int = 1000  # total optimizer steps of the main trajectory
    batch_size: int = 32  # global batch size (split evenly over DDP ranks)
    lr: float = 0.1  # peak learning rate
    lr_schedule: str = "constant"  # constant | step | linear | cosine
    schedule_steps: int = 0  # horizon of step/linear/cosine schedules; 0 = steps (fixed once the run exists)
    lr_step_size: int = 0  # step schedule: multiply lr by lr_gamma every lr_step_size steps (0 = horizon // 3)
    lr_gamma: float = 0.1  # step schedule factor
    lr_min: float = 0.0  # linear/cosine: lr at the end of the horizon (and after it)
    warmup_steps: int = 0  # linear warm-up from lr/warmup_steps to lr over the first warmup_steps steps
    momentum: float = 0.9  # SGD momentum (paper: 0.9)
    weight_decay: float = 1e-4  # coupled L2 weight decay on all parameters (torchvision reference default)
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    # ---- reproducibility --------------------------------------------------------------------
    seed: int = 0  # model initialisation seed
    data_seed: int | None = None  # batch order + augmentation seed (None = seed)
    deterministic: bool | None = None  # torch.use_deterministic_algorithms while training (None = auto: CPU only)
    # ---- checkpoints, evaluation, logging ---------------------------------------------------
    checkpoint_every: int = 100  # write a checkpoint every K steps (step 0 and the last step always)
    checkpoint_steps: list[int] = field(default_factory=list)  # extra steps to checkpoint (e.g. 75000)
    checkpoint_keep_every: int = 0  # keep only the checkpoints at multiples of K steps (plus step 0, the last,
    #   checkpoint_steps and the branch windows); the others are removed once a later one is on disk (0 = keep all)
    branch_steps: list[int] = field(default_factory=list)  # steps side-trips will branch from: checkpointed, kept
    branch_window: int = 0  # keep every checkpoint within this many steps of a branch step (side-trip horizons)
    background_save: bool = True  # write checkpoints in a background thread (snapshot to host memory first)
    eval_every: int = 100  # validation loss/accuracy every K steps into evals.csv (0 = only at the end)
    eval_samples: int = 10000  # cap on validation examples per evaluation
    eval_batch_size: int = 256  # batch size for evaluation passes
    log_every: int = 20  # flush metrics.csv every K steps (one row per step is always written)
    # ---- hardware ---------------------------------------------------------------------------
    device: str = "auto"  # auto (cuda:LOCAL_RANK if available, else cpu) | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 autocast on cuda, fp32 on cpu) | fp32 | bf16
    channels_last: bool | None = None  # None = auto (on cuda)
    compile: bool = False  # torch.compile the training module (checkpoints hold the uncompiled one)
    sync_bn: bool = False  # convert BatchNorm to SyncBatchNorm under DDP
    num_workers: int | None = None  # loader workers per rank for file datasets (None = auto: the cores left after
    #   one main process per rank, at least 1; digits lives in memory)
    decode: str | None = None  # imagenet JPEG decode: None = libjpeg-turbo in the workers | cuda = nvjpeg on the
    #   device (other pixels: part of the run's definition; needs a CUDA device)
    threads: int = 0  # torch.set_num_threads (0 = leave torch's default)
    progress: bool = True  # tqdm progress bar


#: keys that may differ when an existing run directory is continued (they do not change the trajectory's
#: definition: where and how fast it is computed, what is logged, and the new total ``steps``)
RUNTIME_FIELDS = frozenset({
    "steps", "data_dir", "device", "channels_last", "compile", "num_workers", "threads", "progress",
    "checkpoint_every", "checkpoint_steps", "eval_every", "eval_samples", "eval_batch_size", "log_every",
    "deterministic", "checkpoint_keep_every", "branch_steps", "branch_window", "background_save",
})

_DATASET_DEFAULTS = {
    "digits": dict(image_size=16, heldout_size=300, model="resnet20", small_stem=True),
    "cifar10": dict(image_size=32, heldout_size=5000, model="resnet34", small_stem=True),
    "cifar100": dict(image_size=32, heldout_size=5000, model="resnet34", small_stem=True),
    "imagenet": dict(image_size=224, heldout_size=10000, model="resnet34", small_stem=False),
}


#: :func:`sgdtraj.arguments.check_int` raising :class:`ConfigError`
check_int = functools.partial(arguments.check_int, error=ConfigError)
#: :func:`sgdtraj.arguments.check_choice` raising :class:`ConfigError`
check_choice = functools.partial(arguments.check_choice, error=ConfigError)
#: :func:`sgdtraj.arguments.check_real` raising :class:`ConfigError`
check_real = functools.partial(arguments.check_real, error=ConfigError)


def resolve_config(cfg: TrainConfig) -> TrainConfig:
    """Validate ``cfg`` and return a copy with every ``auto`` value filled in.

    Raises :class:`ConfigError` naming the key and the allowed range for any invalid value.
    """
    c = dataclasses.replace(cfg, checkpoint_steps=sorted(set(int(s) for s in cfg.checkpoint_steps)),
                            branch_steps=sorted(set(int(s) for s in cfg.branch_steps)))
    check_choice("dataset", c.dataset, DATASETS)
    d = _DATASET_DEFAULTS[c.dataset]
    if c.model == "auto":
        c.model = d["model"]
    check_choice("model", c.model, MODELS)
    if c.small_stem is None:
        c.small_stem = d["small_stem"]
    if c.image_size == 0:
        c.image_size = d["image_size"]
    if c.heldout_size == 0:
        c.heldout_size = d["heldout_size"]
    if c.data_seed is None:
        c.data_seed = c.seed
    if c.num_workers is None:
        c.num_workers = auto_workers(int(os.environ.get("WORLD_SIZE", "1") or 1))
    if c.decode is not None:
        check_choice("decode", c.decode, ("cuda",))
        if c.dataset != "imagenet" or c.device == "cpu":
            raise ConfigError(f"decode='cuda' needs dataset 'imagenet' on a CUDA device; got dataset={c.dataset!r}, "
                              f"device={c.device!r} (leave decode unset for libjpeg-turbo on the CPU)")
    if c.seed < 0 or c.data_seed < 0:
        raise ConfigError(f"seed and data_seed must be integers >= 0; got seed={c.seed}, data_seed={c.data_seed}")
    check_choice("lr_schedule", c.lr_schedule, SCHEDULES)
    check_choice("precision", c.precision, PRECISIONS)
    positive_int = ["steps", "batch_size", "width", "image_size", "heldout_size", "eval_samples",
                    "eval_batch_size", "log_every"]
    for name in positive_int:
        check_int(name, getattr(c, name), 1)
    for name in ["checkpoint_every", "eval_every", "warmup_steps", "schedule_steps", "lr_step_size",
                 "num_workers", "threads", "checkpoint_keep_every", "branch_window"]:
        check_int(name, getattr(c, name), 0)
    if not (c.lr > 0.0) or c.lr != c.lr or c.lr == float("inf"):
        raise ConfigError(f"lr must be a finite number > 0; got {c.lr!r}")
    if not (0.0 <= c.momentum < 1.0):
        raise ConfigError(f"momentum must be in [0, 1); got {c.momentum!r}")
    if c.weight_decay < 0:
        raise ConfigError(f"weight_decay must be >= 0; got {c.weight_decay!r}")
    if not (0.0 <= c.label_smoothing < 1.0):
        raise ConfigError(f"label_smoothing must be in [0, 1); got {c.label_smoothing!r}")
    if not (0.0 <= c.lr_min <= c.lr):
        raise ConfigError(f"lr_min must be in [0, lr={c.lr}]; got {c.lr_min!r}")
    if not (0.0 < c.lr_gamma <= 1.0):
        raise ConfigError(f"lr_gamma must be in (0, 1]; got {c.lr_gamma!r}")
    if any(s < 0 for s in c.checkpoint_steps):
        raise ConfigError(f"checkpoint_steps must be >= 0; got {c.checkpoint_steps!r}")
    _check_retention(c)
    if not (0.0 <= c.augment_strength <= 4.0):
        raise ConfigError(f"augment_strength must be in [0, 4]; got {c.augment_strength!r}")
    if c.augment_strength > 0 and c.dataset != "digits":
        raise ConfigError(f"augment_strength applies to dataset 'digits' only (cifar/imagenet use --augment); "
                          f"got augment_strength={c.augment_strength!r} with dataset={c.dataset!r}")
    if c.dataset == "digits" and c.image_size < 8:
        raise ConfigError(f"image_size for digits must be >= 8; got {c.image_size}")
    # the schedule horizon is part of the trajectory's definition: resolve it once, store it
    if c.lr_schedule == "constant":
        c.schedule_steps = 0
        c.lr_step_size = 0
    else:
        if c.schedule_steps == 0:
            c.schedule_steps = c.steps
        if c.lr_schedule == "step":
            if c.lr_step_size == 0:
                c.lr_step_size = max(1, c.schedule_steps // 3)
        else:
            c.lr_step_size = 0
    return c


def _check_retention(c: TrainConfig) -> None:
    """The retention rule keeps what it declares and every checkpoint a requested side-trip branches from."""
    if c.checkpoint_keep_every and not (c.checkpoint_every and c.checkpoint_keep_every % c.checkpoint_every == 0):
        raise ConfigError(f"checkpoint_keep_every={c.checkpoint_keep_every} must be a multiple of checkpoint_every="
                          f"{c.checkpoint_every} (> 0): the checkpoints it keeps would never be written")
    if any(b < 0 for b in c.branch_steps):
        raise ConfigError(f"branch_steps must be >= 0; got {c.branch_steps!r}")
    if c.branch_window and not c.branch_steps:
        raise ConfigError(f"branch_window={c.branch_window} needs branch_steps (the steps side-trips branch from)")
    if c.branch_window and c.checkpoint_keep_every and not c.checkpoint_every:  # pragma: no cover - checked above
        raise ConfigError("branch_window needs checkpoint_every > 0")


class SidetripSizes(NamedTuple):
    """Side-trip sizes taken from a run's own config (validating a run trained elsewhere, e.g. on ImageNet)."""

    dataset: str  # the run's data set
    model: str  # the run's model
    image_size: int  # the run's input side, pixels
    batch_size: int  # the run's global batch: side-trip batches and the lr-sweep batch (the paper sweeps at it)
    lr: float  # the run's peak learning rate
    sweep_batch_sizes: list[int]  # Fig. 13: batch / 4, batch, 4 x batch (capped by the held-out split)
    eval_samples: int  # examples per evaluation: the run's, at most its held-out split
    threads: int  # torch threads: 0 (torch's default, every core) off digits, 1 on the small digits model
    num_workers: int  # loader workers per process from the cores (realnet.pipeline.auto_workers)


def sidetrip_sizes(cfg: TrainConfig) -> SidetripSizes:
    """:class:`SidetripSizes` of a resolved run config (``load_config(run_dir)``)."""
    b = int(cfg.batch_size)
    held = int(cfg.heldout_size)
    fig13 = sorted({max(1, min(held, v)) for v in (b // 4, b, 4 * b)})
    return SidetripSizes(cfg.dataset, cfg.model, int(cfg.image_size), b, float(cfg.lr), fig13,
                         int(min(cfg.eval_samples, held)), 1 if cfg.dataset == "digits" else 0, auto_workers(1))


def config_diff(old: dict, new: dict, ignore=RUNTIME_FIELDS) -> dict[str, tuple[Any, Any]]:
    """Keys whose values differ between two config dicts (ignoring ``ignore``): {key: (old, new)}."""
    keys = (set(old) | set(new)) - set(ignore)
    return {k: (old.get(k), new.get(k)) for k in sorted(keys) if old.get(k) != new.get(k)}


# ----------------------------------------------------------------------------------------------
# generic dataclass overrides (TOML + --key=value)
# ----------------------------------------------------------------------------------------------

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class _Flag:
    """The value of a bare ``--key`` on the command line (no value given): true for a boolean key, an error
    naming the key for any other."""

    def __repr__(self) -> str:
        return "FLAG"


#: the value :func:`parse_overrides` gives a bare ``--key``
FLAG = _Flag()


def _text_list(key: str, value: str) -> list:
    """A list option from the command line: ``1,2,3``, ``[1, 2, 3]`` (the form ``--help`` shows, TOML/JSON
    style, quotes optional for strings: ``['swa', 'ema:0.01']``) or an empty ``[]`` / ``''``."""
    text = str(value).strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            items = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            items = None
        if isinstance(items, list):
            return items
        text = text[1:-1]
    out = []
    for v in (s.strip() for s in text.split(",")):
        if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
            v = v[1:-1]
        if v:
            out.append(v)
    return out


def _unwrap_optional(tp):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _convert(key: str, value: Any, tp, from_text: bool) -> Any:
    """Convert ``value`` (a CLI string if ``from_text`` else a TOML value) to the field type ``tp``."""
    base, optional = _unwrap_optional(tp)
    if value is FLAG:
        if base is bool:
            return True
        raise ConfigError(f"--{key.replace('_', '-')} needs a value (--{key.replace('_', '-')}=VALUE)")
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key} may not be None")
    if from_text and optional and isinstance(value, str) and value.strip().lower() in ("none", "null", "auto"):
        return None
    origin = typing.get_origin(base)
    if origin is list:
        (item_tp,) = typing.get_args(base)
        if from_text:
            items = _text_list(key, value)
            return [_convert(key, v, item_tp, isinstance(v, str)) for v in items]
        if isinstance(value, list):
            items = value
        else:
            raise ConfigError(f"{key} must be a list of {item_tp.__name__}; got {value!r}")
        return [_convert(key, v, item_tp, from_text) for v in items]
    if base is bool:
        if isinstance(value, bool):
            return value
        if from_text and str(value).strip().lower() in _TRUE | _FALSE:
            return str(value).strip().lower() in _TRUE
        raise ConfigError(f"{key} must be a boolean (true/false); got {value!r}")
    if base is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be an integer; got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if from_text:
            try:
                return int(str(value).strip().replace("_", ""))
            except ValueError:
                try:
                    f = float(value)
                except ValueError:
                    f = None
                if f is not None and f.is_integer():
                    return int(f)
        raise ConfigError(f"{key} must be an integer; got {value!r}")
    if base is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number; got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if from_text:
            try:
                return float(str(value).strip())
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number; got {value!r}")
    if base is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key} must be a string; got {value!r}")
    raise TypeError(f"unsupported config field type {tp!r} for {key}")  # pragma: no cover


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown(cls, key: str, types_: dict, where: str) -> ConfigError:
    import difflib
    close = difflib.get_close_matches(key, list(types_), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown {cls.__name__} key {key!r} in {where}{hint}; valid keys: {', '.join(sorted(types_))}")


def parse_overrides(argv: list[str], reserved: tuple[str, ...] = ()) -> tuple[dict[str, str], dict[str, str]]:
    """Split ``--key=value`` / ``--key value`` tokens into (reserved, overrides); dashes -> underscores.

    A bare ``--flag`` (no value, followed by another ``--`` token or the end) gets the value :data:`FLAG`:
    ``true`` for a boolean key (:func:`build_options`), a :class:`ConfigError` naming the key for any other
    (``--out`` with no directory never becomes a directory named ``true``).
    """
    res: dict[str, str] = {}
    over: dict[str, str] = {}
    i = 0
    while i < len(argv):
        tok = argv[i]
        if not tok.startswith("--") or tok == "--":
            raise ConfigError(f"unexpected argument {tok!r}: options are --key=value or --key value")
        body = tok[2:]
        if "=" in body:
            key, value = body.split("=", 1)
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            key, value = body, argv[i + 1]
            i += 2
        else:
            key, value = body, FLAG
            i += 1
        key = key.replace("-", "_")
        if not key:
            raise ConfigError(f"unexpected argument {tok!r}: options are --key=value or --key value")
        if key in reserved and value is FLAG:
            raise ConfigError(f"--{key.replace('_', '-')} needs a value (--{key.replace('_', '-')} VALUE)")
        (res if key in reserved else over)[key] = value
    return res, over


def build_options(cls, toml_path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                  base=None):
    """Instantiate dataclass ``cls``: defaults (or ``base``) < TOML file < ``overrides`` (strings or values).

    Unknown keys raise :class:`ConfigError` listing the valid ones; values are type-checked.
    """
    types_ = _field_types(cls)
    values: dict[str, Any] = {} if base is None else dataclasses.asdict(base)
    if toml_path is not None:
        p = Path(toml_path)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {str(p)!r}")
        try:
            with open(p, "rb") as fh:
                data = tomllib.load(fh)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"cannot parse TOML config {str(p)!r}: {e}") from None
        for k, v in data.items():
            key = k.replace("-", "_")
            if key not in types_:
                raise _unknown(cls, k, types_, f"config file {str(p)!r}")
            values[key] = _convert(key, v, types_[key], from_text=False)
    for k, v in (overrides or {}).items():
        key = k.replace("-", "_")
        if key not in types_:
            raise _unknown(cls, k, types_, "command-line options")
        values[key] = _convert(key, v, types_[key], from_text=isinstance(v, str) or v is FLAG)
    return cls(**values)
