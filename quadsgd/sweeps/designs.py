r"""Designs (the points of a sweep) and the canonical form of a point: its id, its seed, its label.

* :func:`expand_grid` -- a dict of lists (Cartesian product, last key fastest) or a list of dicts;
* :func:`product_design` -- the product of several lists of points (keys must not overlap);
* :func:`random_design` -- ``n`` random points, one independent stream per parameter;
* :func:`point_id` / :func:`point_seed` -- sha256 over the canonical JSON of a point (keys sorted, floats
  by their shortest round-trip repr, tuples and arrays as lists):
  ``point_id = sha256("quadsgd-sweep-v1", fingerprint, json)[:16]`` and
  ``point_seed = sha256("quadsgd-seed-v1", seed, json)[:8 bytes] >> 1`` (63 bits).

Both hashes are pinned by the tests: changing them would orphan every stored result.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import zlib

import numpy as np

__all__ = ["expand_grid", "product_design", "random_design", "point_id", "point_seed", "canonical_json",
           "MAX_POINTS"]

_ID_TAG = "quadsgd-sweep-v1"
_SEED_TAG = "quadsgd-seed-v1"
#: the largest number of points a design may have
MAX_POINTS = 10_000_000


# =============================================================================================
# Canonical parameters, ids and seeds
# =============================================================================================
def canonical(v):
    """A parameter value as JSON types (numpy scalars/arrays and tuples converted); TypeError otherwise."""
    if isinstance(v, np.generic):
        v = v.item()
    if v is None or isinstance(v, (bool, str, int, float)):
        return v
    if isinstance(v, np.ndarray):
        return [canonical(x) for x in v.tolist()]
    if isinstance(v, (list, tuple)):
        return [canonical(x) for x in v]
    if isinstance(v, dict):
        return {str(k): canonical(x) for k, x in v.items()}
    raise TypeError(f"parameter values must be numbers, strings, booleans, None or lists of them; "
                    f"got {v!r} ({type(v).__name__})")


def canonical_json(params: dict) -> str:
    """Canonical JSON of a point: keys sorted, no spaces, floats by their shortest round-trip repr."""
    return json.dumps({str(k): canonical(v) for k, v in params.items()}, sort_keys=True,
                      separators=(",", ":"), allow_nan=True)


def point_id(params: dict, fingerprint: str = "") -> str:
    """Stable id of a point: 16 hex digits of sha256 over the fingerprint and the canonical JSON of ``params``.

    Canonical JSON: keys sorted, floats by their shortest round-trip repr, tuples/arrays as lists, so the
    id does not depend on key order; ``1`` and ``1.0`` are different values (the spec layer normalizes types).
    """
    h = hashlib.sha256(f"{_ID_TAG}\0{fingerprint}\0{canonical_json(params)}".encode())
    return h.hexdigest()[:16]


def point_seed(seed: int, params: dict) -> int:
    """Seed of a point's random stream: 63 bits of sha256 over the sweep seed and the canonical parameters."""
    h = hashlib.sha256(f"{_SEED_TAG}\0{int(seed)}\0{canonical_json(params)}".encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


def cell(v):
    """Value of a parameter as a table cell: scalars as they are, lists/dicts as canonical JSON strings."""
    if isinstance(v, np.generic):
        v = v.item()
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return json.dumps(canonical(v), separators=(",", ":"))


def _fmt_value(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt_value(x) for x in v) + "]"
    return repr(v)


def varying_keys(points) -> list:
    """The parameter names whose value differs between ``points`` (first-appearance order)."""
    keys = list(dict.fromkeys(k for p in points for k in p))
    out = []
    for k in keys:
        vals = {json.dumps(canonical(p.get(k, None)), sort_keys=True) for p in points}
        if len(vals) > 1:
            out.append(k)
    return out


def point_label(i: int, p: dict, keys=None) -> str:
    """``point #i (lr=0.05, delta=10)``: the point's index and the values of ``keys`` (default: all)."""
    keys = list(p) if keys is None else [k for k in keys if k in p]
    inner = ", ".join(f"{k}={_fmt_value(p[k])}" for k in keys)
    return f"point #{i}" + (f" ({inner})" if inner else "")


# =============================================================================================
# Designs
# =============================================================================================
def expand_grid(grid) -> list[dict]:
    """Points of a design: a dict of lists -> their Cartesian product (last key varies fastest);
    a list of dicts -> those points. Returns a new list of dicts."""
    if isinstance(grid, dict):
        keys = list(grid)
        values = []
        for k in keys:
            v = grid[k]
            if isinstance(v, (range, np.ndarray)):
                v = list(v)
            if not isinstance(v, (list, tuple)) or len(v) == 0:
                raise ValueError(f"grid[{k!r}] must be a non-empty list of values, got {v!r}")
            values.append(list(v))
        n = math.prod(len(v) for v in values)
        if n > MAX_POINTS:
            raise ValueError(f"the grid has {n} points (more than {MAX_POINTS}); use a random design")
        return [dict(zip(keys, combo)) for combo in itertools.product(*values)]
    if isinstance(grid, (list, tuple)):
        out = []
        for i, p in enumerate(grid):
            if not isinstance(p, dict):
                raise ValueError(f"grid must be a dict of lists or a list of dicts; item #{i} is {p!r}")
            out.append(dict(p))
        return out
    raise ValueError(f"grid must be a dict of lists or a list of dicts, got {type(grid).__name__}")


def product_design(*designs) -> list[dict]:
    """Cartesian product of lists of points, merging their keys (ValueError if two designs share a key)."""
    out = [{}]
    for d in designs:
        new = []
        for a in out:
            for b in d:
                both = set(a) & set(b)
                if both:
                    raise ValueError(f"parameter {sorted(both)[0]!r} is set by two designs that are combined")
                new.append({**a, **b})
        out = new
    return out


def _uniform(rng, lo, hi, n):
    return [float(x) for x in rng.uniform(lo, hi, n)]


def _loguniform(rng, lo, hi, n):
    return [float(x) for x in np.exp(rng.uniform(math.log(lo), math.log(hi), n))]


def _int_uniform(rng, lo, hi, n):
    return [int(x) for x in rng.integers(int(lo), int(hi) + 1, n)]


def _int_loguniform(rng, lo, hi, n):
    x = np.floor(np.exp(rng.uniform(math.log(lo), math.log(hi + 1), n)))
    return [int(t) for t in np.clip(x, lo, hi)]


#: numeric distributions of random designs: name -> draw(rng, low, high, n) (plus "choice")
_NUMERIC = {"uniform": _uniform, "loguniform": _loguniform, "int_uniform": _int_uniform,
            "int_loguniform": _int_loguniform}
_DISTRIBUTIONS = (*_NUMERIC, "choice")


def _draw(where: str, dist: str, args, rng, n: int) -> list:
    """``n`` draws of one parameter (ValueError naming it for bad arguments)."""
    if dist == "choice":
        if not isinstance(args, (list, tuple)) or not args:
            raise ValueError(f"{where}: choice needs a non-empty list of values, got {args!r}")
        return [args[i] for i in rng.integers(0, len(args), n)]
    if (not isinstance(args, (list, tuple)) or len(args) != 2
            or any(isinstance(a, bool) or not isinstance(a, (int, float)) for a in args)):
        raise ValueError(f"{where}: {dist} needs [low, high] numbers, got {args!r}")
    lo, hi = args
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi < lo:
        raise ValueError(f"{where}: {dist} needs finite low <= high, got {args!r}")
    if dist.startswith("int_") and not (float(lo).is_integer() and float(hi).is_integer()):
        raise ValueError(f"{where}: {dist} needs integer bounds, got {args!r}")
    if "log" in dist and lo <= 0:
        raise ValueError(f"{where}: {dist} needs low > 0, got {args!r}")
    return _NUMERIC[dist](rng, lo, hi, n)


def random_design(distributions: dict, n: int, seed: int = 0) -> list[dict]:
    """``n`` random points: ``{name: {dist: args}}`` with dist one of

    ``uniform = [lo, hi]``, ``loguniform = [lo, hi]`` (lo > 0), ``int_uniform = [lo, hi]`` (inclusive),
    ``int_loguniform = [lo, hi]`` (inclusive, lo >= 1), ``choice = [v1, v2, ...]``.

    Each parameter has its own stream, seeded by (seed, crc32(name)): adding a parameter does not change
    the others' draws. Returns a list of ``n`` dicts of Python scalars.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"random design: n must be an integer >= 1, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"random design: seed must be an integer >= 0, got {seed!r}")
    cols = {}
    for name, spec in distributions.items():
        where = f"random design: {name!r}"
        if not isinstance(spec, dict) or len(spec) != 1:
            raise ValueError(f"{where} must be a table with one of {', '.join(_DISTRIBUTIONS)}, got {spec!r}")
        (dist, args), = spec.items()
        if dist not in _DISTRIBUTIONS:
            raise ValueError(f"{where}: unknown distribution {dist!r}; allowed: {', '.join(_DISTRIBUTIONS)}")
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(str(name).encode())]))
        cols[name] = _draw(where, dist, args, rng, int(n))
    return [{k: cols[k][i] for k in cols} for i in range(int(n))]
