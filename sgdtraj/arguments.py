"""Argument checks shared by every public function of the project.

One rule per kind of argument, so that the same value is accepted or refused everywhere, with an error
that names the parameter and the allowed range: a ``ValueError``, or the caller's subclass given as
``error=`` (e.g. a configuration error of the caller's own):

* integers (:func:`check_int`): Python / numpy integers, and floats with an exactly integral finite
  value (``10.0`` -> 10, as TOML and JSON may produce); refused: booleans, strings, ``2.5``, NaN/inf;
* real numbers (:func:`check_real`): ints and floats (numpy scalars too); refused: booleans, strings,
  NaN/inf, values outside the stated interval;
* arrays (:func:`check_array`): anything numpy converts to a real float64 array; refused: strings,
  objects, complex values, NaN/inf, wrong ndim / shape, empty arrays;
* choices (:func:`check_choice`), seeds (:func:`check_seed`), dtypes (:func:`check_dtype`), booleans
  (:func:`check_bool`: True/False only);
* learning-rate schedules (:func:`check_lr_schedule`, shared by ``simulate`` and ``expected_loss``): None,
  a number or an array of shape (steps,), every step's lr finite and in **[0, bound)** -- a step with
  lr = 0 is a valid (frozen) step, e.g. the first step of a linear warm-up; the model's own lr is > 0;
* sizes of dense outputs (:func:`check_size`): an array that would exceed :data:`MAX_ARRAY_BYTES` is
  refused with a ValueError naming the argument that sets its size (no MemoryError, no swapping).

The helpers never emit warnings (a ``RuntimeWarning`` before a ``ValueError`` is a crash under
``-W error``).
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np

__all__ = ["interval", "check_int", "check_real", "check_array", "check_choice", "check_seed", "check_dtype",
           "check_bool", "check_lr_schedule", "check_size", "MAX_ARRAY_BYTES"]

#: dense arrays (outputs, weight vectors) larger than this are refused by :func:`check_size` (2 GiB)
MAX_ARRAY_BYTES = 2 ** 31

_INTEGER_TYPES = (int, np.integer)
_REAL_TYPES = (int, float, np.integer, np.floating)


def interval(low=None, high=None, low_open=False, high_open=False, integer=False) -> str:
    """Text of an allowed range: ``>= 1``, ``in (0, 1]``, ``<= 5`` or ``any value``."""
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}" if not integer \
            else f"in [{low}, {high}]"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}" if not integer else f">= {low}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high:g}" if not integer else f"<= {high}"
    return "any value"


def _is_bool(x) -> bool:
    return isinstance(x, (bool, np.bool_))


def check_int(name: str, value, low: int | None = None, high: int | None = None, *,
              error: type[Exception] = ValueError) -> int:
    """``value`` as an int; ValueError naming ``name`` unless it is an integer in [low, high]."""
    rng = interval(low, high, integer=True)
    what = "an integer" + ("" if rng == "any value" else f" {rng}")
    if _is_bool(value):
        raise error(f"{name} must be {what}, got {value!r}")
    if isinstance(value, _INTEGER_TYPES):
        v = int(value)
    elif isinstance(value, (float, np.floating)) and math.isfinite(float(value)) and float(value).is_integer():
        v = int(value)
    else:
        raise error(f"{name} must be {what}, got {value!r}")
    if (low is not None and v < low) or (high is not None and v > high):
        raise error(f"{name} must be {what}, got {v}")
    return v


def check_real(name: str, value, low=None, high=None, low_open: bool = False, high_open: bool = False, *,
               error: type[Exception] = ValueError) -> float:
    """``value`` as a finite float in the interval; ValueError naming ``name`` otherwise."""
    rng = interval(low, high, low_open, high_open)
    what = "a finite real number" + ("" if rng == "any value" else f" {rng}")
    if _is_bool(value) or not isinstance(value, _REAL_TYPES):
        # 0-d arrays of a real dtype are numbers too
        if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf":
            value = value.item()
        else:
            raise error(f"{name} must be {what}, got {value!r}")
    v = float(value)
    bad = not math.isfinite(v)
    if not bad and low is not None:
        bad = v <= low if low_open else v < low
    if not bad and high is not None:
        bad = v >= high if high_open else v > high
    if bad:
        raise error(f"{name} must be {what}, got {value!r}")
    return v


def check_bool(name: str, value, *, error: type[Exception] = ValueError) -> bool:
    if not _is_bool(value):
        raise error(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_array(name: str, x, ndim: Iterable[int] = (1, 2), shape: tuple | None = None, finite: bool = True,
                square: bool = True, nonempty: bool = True, copy: bool = True, *,
                error: type[Exception] = ValueError) -> np.ndarray:
    """``x`` as a real float64 array (a copy unless ``copy=False``); ValueError naming ``name`` for strings,
    objects, complex or non-finite values, the wrong ``ndim``/``shape``, an empty or non-square 2-D array."""
    ndim = tuple(ndim)
    if isinstance(x, (str, bytes)):
        raise error(f"{name} must be a real array, got the string {x!r}")
    try:
        a = np.asarray(x)
    except (TypeError, ValueError):
        raise error(f"{name} must be a real array, got {type(x).__name__}") from None
    if a.dtype.kind not in "biuf":
        kind = {"c": "complex", "U": "strings", "S": "bytes", "O": "objects"}.get(a.dtype.kind, str(a.dtype))
        raise error(f"{name} must be a real array, got an array of {kind}")
    if a.dtype.kind == "b":
        raise error(f"{name} must be a real array, got an array of booleans")
    a = np.array(a, dtype=np.float64, copy=True) if copy else np.asarray(a, dtype=np.float64)
    if shape is not None:
        if a.shape != tuple(shape):
            raise error(f"{name} must have shape {tuple(shape)}, got {a.shape}")
    elif a.ndim not in ndim:
        want = f"ndim {ndim[0]}" if len(ndim) == 1 else f"ndim in {ndim}"
        raise error(f"{name} must have {want}, got shape {a.shape}")
    if nonempty and a.size == 0:
        raise error(f"{name} must not be empty")
    if finite and not np.all(np.isfinite(a)):
        raise error(f"{name} contains NaN or inf")
    if square and a.ndim == 2 and a.shape[0] != a.shape[1]:
        raise error(f"{name} must be square, got shape {a.shape}")
    return a


def check_choice(name: str, value, allowed, *, error: type[Exception] = ValueError) -> str:
    allowed = tuple(allowed)
    if not isinstance(value, str) or value not in allowed:
        raise error(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def check_seed(seed, allow_none: bool = True, *, error: type[Exception] = ValueError) -> int:
    """A seed in [0, 2**64); None draws fresh entropy (when ``allow_none``)."""
    if seed is None and allow_none:
        return int(np.random.SeedSequence().entropy % (1 << 64))
    if _is_bool(seed) or not isinstance(seed, _INTEGER_TYPES):
        raise error(f"seed must be a non-negative integer < 2**64{' or None' if allow_none else ''}, "
                         f"got {seed!r}")
    seed = int(seed)
    if not 0 <= seed < (1 << 64):
        raise error(f"seed must be a non-negative integer < 2**64, got {seed}")
    return seed


def check_dtype(dtype, *, error: type[Exception] = ValueError) -> np.dtype:
    """float32 or float64."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise error(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise error(f"dtype must be float32 or float64, got {dtype!r}")
    return dt


def check_size(name: str, n, what: str, itemsize: int = 8, hint: str = "", *,
               error: type[Exception] = ValueError) -> int:
    """``n`` (the number of entries of a dense array ``what`` whose size ``name`` sets) if it fits in
    :data:`MAX_ARRAY_BYTES`; a ValueError saying so otherwise (instead of a MemoryError)."""
    nbytes = float(n) * itemsize
    if nbytes > MAX_ARRAY_BYTES:
        raise error(f"{name}: {what} would have {float(n):.4g} entries ({nbytes / 2**30:.4g} GiB > "
                         f"{MAX_ARRAY_BYTES / 2**30:g} GiB){'; ' + hint if hint else ''}")
    return int(n)


def check_lr_schedule(lr, steps: int, bound: float, name: str = "lr", *, error: type[Exception] = ValueError):
    r"""The learning rate of every step, (steps,) float64, from None-free ``lr``: a number or an array of
    shape (steps,); every value finite and in [0, bound) (``bound``: the model's ``lr_bound``).

    Returns (lrs, scalar) with ``scalar`` True when ``lr`` was a number. ValueError naming ``lr`` (or
    ``lr[i]``), the allowed range and the reason otherwise.
    """
    if isinstance(lr, (str, bytes)) or _is_bool(lr):
        raise error(f"{name} must be a real array of shape (steps,) = ({steps},) or a real number, got {lr!r}")
    a = check_array(name, lr, error=error, ndim=(0, 1), finite=False, square=False, nonempty=False)
    scalar = a.ndim == 0
    if scalar:
        a = np.full(steps, float(a))
    elif a.shape != (steps,):
        raise error(f"{name} must be a number or an array of shape (steps,) = ({steps},) (its length must "
                         f"match steps), got shape {a.shape}")
    ok = np.isfinite(a) & (a >= 0) & (a < bound)
    if not np.all(ok):
        i = int(np.flatnonzero(~ok)[0])
        v = float(a[i])
        where = name if scalar or bool(np.all(a == a[0])) else f"{name}[{i}]"
        why = "is unstable" if math.isfinite(v) and v >= bound else "is not allowed"
        raise error(f"{where} = {v!r} {why}: every step needs a finite 0 <= lr < {bound:.6g} "
                         "(the model's stability bound, lr_bound)")
    return a, scalar
