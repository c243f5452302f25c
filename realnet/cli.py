"""Command line: ``python -m realnet train ...``, ``python -m realnet sidetrip NAME ...`` and
``python -m realnet posthoc ...``.

    python -m realnet train --dataset digits --out runs/d0 [--model resnet20] [--steps 600] [--lr 0.1]
        [--batch-size 32] [--seed 0] [--checkpoint-every 100] [--config file.toml] [--key=value ...]
    python -m realnet sidetrip lr-sweep --run runs/d0 --step 500 --out runs/d0-sweep [--key=value ...]
    python -m realnet posthoc --run runs/d0 --at-step 600 --out runs/d0-merges [--kernels SPEC,SPEC,...] [--predict]

Every key of :class:`realnet.config.TrainConfig` (or of the side-trip's options dataclass) can be given
as ``--key=value`` / ``--key value`` (dashes or underscores) or in the TOML file; unknown keys are
refused; a bare ``--key`` means true for a boolean key and is refused for any other; list keys take
``1,2,3`` or ``[1, 2, 3]``. ``python -m realnet train --help`` lists the keys with their defaults.

Output directories follow :func:`sgdtraj.outputs.claim_output`: ``--out`` is refused, before anything is
written, when it is a file, under a file, not writable, locked by another process (its pid is named),
another kind of output (a side-trip's ``--out`` that is a run, ...) or the same kind of another job.

Exit status: 0 success (and the JSON headline on stdout: strict JSON, non-finite numbers as null),
2 invalid arguments or an unusable ``--out`` / ``--run`` (one line on stderr, no traceback; set
``REALNET_DEBUG=1`` for the traceback), 1 the computation failed (a diverged loss: the message names the
step, loss and lr; a file that could not be written), 130 interrupted by Ctrl-C or SIGTERM (what is saved
stays: re-run the same command to resume).
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
import sys

from sgdtraj.commands import EXIT_FAILED, EXIT_USAGE, run_command
from sgdtraj.files import jsonable

from .checkpoint import CheckpointError, list_checkpoints
from .config import ConfigError, TrainConfig, build_options, parse_overrides

__all__ = ["main"]

def _usage() -> str:
    from .sidetrips import SIDETRIPS

    return f"""usage:
  python -m realnet train --out DIR [--dataset digits] [--config file.toml] [--key=value ...]
  python -m realnet sidetrip {{{','.join(SIDETRIPS)}}} --run DIR --step S --out OUT
        [--config file.toml] [--key=value ...]
  python -m realnet posthoc --run DIR --at-step T --out OUT [--kernels SPEC,SPEC,...] [--predict]
        [--config file.toml] [--key=value ...]   (merge the run's checkpoints after the fact)
  python -m realnet train --help | python -m realnet sidetrip NAME --help | python -m realnet posthoc --help
"""


def _sidetrip_list() -> str:
    from .sidetrips import SIDETRIPS

    return "\nside-trips:\n" + "\n".join(f"  {n:12s} {t.doc}" for n, t in SIDETRIPS.items()) + "\n"


def _describe(cls) -> str:
    """One line per field: name, default and the comment beside it in the source (of the class or a base)."""
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            src = inspect.getsource(klass) if dataclasses.is_dataclass(klass) else ""
        except (OSError, TypeError):  # pragma: no cover
            src = ""
        comments.update({m.group(1): m.group(2).strip()
                         for m in re.finditer(r"^\s+(\w+):[^#\n]*#(.*)$", src, re.M)})
    lines = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        lines.append(f"  --{f.name.replace('_', '-')}={default!r:<14} {comments.get(f.name, '')}")
    return "\n".join(lines)


def _train(argv: list[str]) -> int:
    from .trainer import train
    if any(a in ("-h", "--help") for a in argv):
        print(_usage() + "\ntrain keys (TrainConfig):\n" + _describe(TrainConfig))
        return 0
    reserved, over = parse_overrides(argv, reserved=("out", "config"))
    if "out" not in reserved:
        raise ConfigError("train needs --out DIR (the run directory)")
    cfg = build_options(TrainConfig, reserved.get("config"), over)
    _INTERRUPTED["message"] = lambda: _train_interrupted(reserved["out"])
    summary = train(cfg, reserved["out"])
    if summary is not None and int(os.environ.get("RANK", "0")) == 0:
        _print_json({k: summary.get(k) for k in ("steps", "final_train_loss", "val_loss", "val_acc", "steps_per_s")})
    return 0


def _print_json(obj) -> None:
    """One line of strict JSON on stdout (non-finite numbers as null, never a NaN literal)."""
    print(json.dumps(jsonable(obj), allow_nan=False))


def _train_interrupted(out) -> str:
    try:
        ck = list_checkpoints(out)
    except OSError:
        ck = []
    saved = f"saved up to checkpoint step {ck[-1]}" if ck else "not started (no checkpoint yet)"
    return f"interrupted; the run {str(out)!r} is {saved}: re-run the same command to resume"


#: what to say when the command is interrupted (set by the command)
_INTERRUPTED: dict = {}


def _sidetrip(argv: list[str]) -> int:
    from .sidetrips import SIDETRIPS
    if not argv or argv[0].startswith("-"):
        if argv and argv[0] in ("-h", "--help"):
            print(_usage() + _sidetrip_list())
            return 0
        raise ConfigError(f"sidetrip needs a name: one of {', '.join(SIDETRIPS)}")
    name, rest = argv[0], argv[1:]
    if name not in SIDETRIPS:
        raise ConfigError(f"unknown side-trip {name!r}; choose one of {', '.join(SIDETRIPS)}")
    trip = SIDETRIPS[name]
    if any(a in ("-h", "--help") for a in rest):
        print(_usage() + f"\n{name}: {trip.doc}\n\n{name} keys ({trip.options.__name__}):\n" + _describe(trip.options))
        return 0
    reserved, over = parse_overrides(rest, reserved=("run", "step", "out", "config"))
    missing = [k for k in ("run", "step", "out") if k not in reserved]
    if missing:
        raise ConfigError(f"sidetrip {name} needs " + ", ".join(f"--{k}" for k in missing))
    try:
        step = int(reserved["step"])
    except ValueError:
        raise ConfigError(f"--step must be an integer; got {reserved['step']!r}") from None
    opts = build_options(trip.options, reserved.get("config"), over)
    _INTERRUPTED["message"] = lambda: (f"interrupted; side-trip {name} in {reserved['out']!r} keeps its last saved "
                                       f"state: re-run the same command to resume")
    result = trip.function(reserved["run"], step, reserved["out"], opts)
    _print_json(result.headline())
    return 0


def _posthoc(argv: list[str]) -> int:
    from .posthoc_run import MergeOptions, evaluate_merges
    if any(a in ("-h", "--help") for a in argv):
        print(_usage() + "\nposthoc keys (MergeOptions):\n" + _describe(MergeOptions))
        return 0
    reserved, over = parse_overrides(argv, reserved=("run", "at_step", "out", "config"))
    missing = [k for k in ("run", "at_step", "out") if k not in reserved]
    if missing:
        raise ConfigError("posthoc needs " + ", ".join(f"--{k.replace('_', '-')}" for k in missing))
    try:
        step = int(reserved["at_step"])
    except ValueError:
        raise ConfigError(f"--at-step must be an integer; got {reserved['at_step']!r}") from None
    opts = build_options(MergeOptions, reserved.get("config"), over)
    _INTERRUPTED["message"] = lambda: (f"interrupted; posthoc in {reserved['out']!r} keeps its finished candidates: "
                                       f"re-run the same command to resume")
    result = evaluate_merges(reserved["run"], step, reserved["out"], opts)
    _print_json(result.headline())
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage() + _sidetrip_list())
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    from .trainer import DivergenceError

    _INTERRUPTED.clear()

    def body() -> int:
        if cmd == "train":
            return _train(rest)
        if cmd == "sidetrip":
            return _sidetrip(rest)
        if cmd == "posthoc":
            return _posthoc(rest)
        raise ConfigError(f"unknown command {cmd!r}; use 'train', 'sidetrip' or 'posthoc'")

    def interrupted() -> str:
        msg = _INTERRUPTED.get("message")
        return msg() if msg else "interrupted"

    # bad input -> 2; the computation failed, or a file could not be read / written -> 1
    return run_command(body, errors=[((ConfigError, CheckpointError, ValueError, FileNotFoundError), EXIT_USAGE),
                                     ((DivergenceError, OSError), EXIT_FAILED)],
                       interrupted=interrupted, debug_env="REALNET_DEBUG")
