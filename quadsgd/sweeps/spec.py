r"""Sweep spec files (``python -m quadsgd sweep SPEC.toml``): read, validate, run.

* :func:`load_spec` reads a TOML file (``tomllib``; the ``tomli`` backport on Python 3.10) or a parsed
  dict and checks every key, type and range, naming the section, the key and the point
  (:class:`SpecError`), before any work; the result is a :class:`Spec` (complete, type-normalized
  points; kernels and quantities per design; figure specs);
* :func:`run_spec` runs a spec with the engine (:func:`quadsgd.sweeps.engine.sweep`) on a local pool, in
  process or on a Dask scheduler, into a results directory, then draws its figures.

A results directory belongs to one spec (:func:`spec_identity`: the spec's sections without
``[[figures]]`` and the cosmetic ``[sweep]`` keys ``name``, ``description``, ``batch_size`` and
``on_unstable``). Re-running the same spec resumes it; a different spec -- other points, kernels,
quantities or seed -- is refused before anything is written, naming the keys that changed
(``sweep.seed: 7 (stored) != 8 (now)``): one ``spec.toml`` and one ``results.parquet`` always describe all
the directory's rows, and no row is dropped silently. A changed ``[[figures]]`` list is allowed (the rows are
the same): the figures are redrawn and those the new spec no longer lists are removed.

Steps of :func:`load_spec`: :func:`_read` (text and data), :func:`_sweep_section` (``[sweep]``),
:func:`_design_blocks` (``[[design]]`` or the top-level grid/points/random), :func:`_block_points` (one
design's points with the section each parameter came from), :func:`_normalize` (types and defaults,
per-point checks), :func:`_check_figures` (``[[figures]]``).
"""
from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the tomli backport (declared in pyproject.toml)
    import tomli as tomllib

from sgdtraj.outputs import claim_output

from . import quantities as Q
from .designs import (
    MAX_POINTS,
    canonical,
    canonical_json,
    expand_grid,
    point_label,
    product_design,
    random_design,
    varying_keys,
)
from .engine import sweep
from .figures import FIGURE_KEYS, FIGURES, draw_figures
from .store import SWEEP_KIND

__all__ = ["Spec", "SpecError", "load_spec", "run_spec", "spec_identity"]

_TOP_KEYS = ("sweep", "params", "grid", "points", "random", "design", "figures")
_SWEEP_KEYS = ("name", "description", "seed", "kernels", "quantities", "on_unstable", "batch_size")
_DESIGN_KEYS = ("name", "kernels", "quantities", "params", "grid", "points", "random")
_TABLE_COLUMNS = ("quantity", "kernel", "kappa", "time", "value", "stderr", "status", "seed", "point_id")


class SpecError(ValueError):
    """A sweep spec is invalid: unknown key, wrong type, missing parameter, unstable point, ..."""


@dataclass
class Spec:
    """A validated sweep spec (see :func:`load_spec`)."""

    text: str
    data: dict
    path: str | None
    name: str
    seed: int
    on_unstable: str
    batch_size: int | None
    designs: dict               # design name (None without [[design]]) -> {"kernels", "quantities"}
    points: list                # complete, type-normalized points
    varying: list               # parameters that differ between points
    figures: list = field(default_factory=list)

    def fingerprint(self, point) -> str:
        """Identity of the computation of a point: seed, kernels and quantities of its design."""
        s = self.designs[point.get("design")]
        return json.dumps({"spec": "quadsgd-spec-v1", "seed": self.seed, "kernels": list(s["kernels"]),
                           "quantities": list(s["quantities"])}, sort_keys=True)

    def function(self) -> Q.SpecFunction:
        return Q.SpecFunction(self.designs)

    def label(self, i: int) -> str:
        return point_label(i, self.points[i], self.varying)


def _err(msg):
    return SpecError(msg)


def _check_keys(section: str, table, allowed, kind="key") -> None:
    if not isinstance(table, dict):
        raise _err(f"{section} must be a table, got {table!r}")
    for k in table:
        if k not in allowed:
            raise _err(f"{section}: " + Q.unknown_name_message(kind, k, allowed))


def _names(section, value, allowed, kind, canon=None) -> tuple:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise _err(f"{section} must be a non-empty list of names, got {value!r}")
    out = []
    for v in value:
        c = v
        if canon is not None:
            try:
                c = canon(v)
            except ValueError:
                c = None
        if c not in allowed:
            raise _err(f"{section}: " + Q.unknown_name_message(kind, v, allowed))
        if c in out:
            raise _err(f"{section}: {v!r} is listed twice")
        out.append(c)
    return tuple(out)


def _point_params() -> list:
    """The parameters a spec may set (every schema parameter but ``design``, which is set automatically)."""
    return [k for k in Q.param_names() if k != "design"]


# =============================================================================================
# load_spec, step by step
# =============================================================================================
def _read(source) -> tuple[str, dict, str | None]:
    """(text, data, path) of a TOML file path or a parsed dict (whose text is written by tomli_w)."""
    if isinstance(source, dict):
        import tomli_w

        return tomli_w.dumps(source), source, None
    if isinstance(source, (str, os.PathLike)):
        path = str(source)
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise _err(f"cannot read spec {path}: {e}") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise _err(f"{path} is not valid TOML: {e}") from None
        return text, data, path
    raise _err(f"spec must be a path or a dict, got {type(source).__name__}")


class _SweepSection(NamedTuple):
    name: str
    seed: int
    on_unstable: str
    batch_size: int | None
    kernels: object       # default kernels of the designs (unchecked)
    quantities: object    # default quantities of the designs (unchecked)


def _sweep_section(data: dict, path) -> _SweepSection:
    sw = data.get("sweep", {})
    _check_keys("[sweep]", sw, _SWEEP_KEYS)
    name = sw.get("name", Path(path).stem if path else "sweep")
    if not isinstance(name, str):
        raise _err(f"[sweep] name must be a string, got {name!r}")
    seed = sw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise _err(f"[sweep] seed must be an integer >= 0, got {seed!r}")
    on_unstable = sw.get("on_unstable", "error")
    if on_unstable not in ("error", "skip"):
        raise _err(f"[sweep] on_unstable must be 'error' or 'skip', got {on_unstable!r}")
    batch_size = sw.get("batch_size")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise _err(f"[sweep] batch_size must be an integer >= 1, got {batch_size!r}")
    return _SweepSection(name, seed, on_unstable, batch_size, sw.get("kernels"), sw.get("quantities"))


def _design_blocks(data: dict) -> list:
    """The ``[[design]]`` blocks, or one block of the top-level ``[grid]``, ``[[points]]``, ``[random]``."""
    if "design" not in data:
        return [{"grid": data.get("grid", {}), "points": data.get("points", []), "random": data.get("random")}]
    for k in ("grid", "points", "random"):
        if k in data:
            raise _err(f"[{k}] cannot be combined with [[design]] blocks: put it inside each [[design]]")
    blocks = data["design"]
    if not isinstance(blocks, list) or not blocks:
        raise _err("[[design]] must be a non-empty array of tables")
    return blocks


class _Block(NamedTuple):
    name: str | None      # design name (None without [[design]])
    kernels: tuple        # kernel class names
    quantities: tuple
    points: list          # [(point, {parameter: section it was set in})]


def _block_points(bi: int, blk: dict, multi: bool, shared: dict, sw: _SweepSection, taken, n_before: int) -> _Block:
    """One design's kernels, quantities and raw points (product of grid x points x random, with the
    fixed parameters), each with the section every parameter came from."""
    where = f"[[design]] #{bi}" if multi else ""
    _check_keys(where or "spec", blk, _DESIGN_KEYS if multi else ("grid", "points", "random"))
    dname = None
    if multi:
        dname = blk.get("name")
        if not isinstance(dname, str) or not dname:
            raise _err(f"{where} needs a name (a non-empty string)")
        if dname in taken:
            raise _err(f"{where}: design name {dname!r} is used twice")
        where = f"[[design]] {dname!r}"
    kn = blk.get("kernels", sw.kernels)
    qn = blk.get("quantities", sw.quantities)
    if kn is None:
        raise _err(f"{where or '[sweep]'}: kernels is missing (e.g. kernels = [\"Last\", \"EMA\"])")
    if qn is None:
        raise _err(f"{where or '[sweep]'}: quantities is missing (e.g. quantities = [\"stationary_loss\"])")
    kernels = _names(f"{where or '[sweep]'} kernels", kn, list(Q.sweep_kernels()), "kernel", Q.canonical_kernel)
    quantities = _names(f"{where or '[sweep]'} quantities", qn, list(Q.QUANTITIES), "quantity")

    def sec(s):
        return f"{where} {s}" if multi else f"[{s}]"

    allowed = _point_params()
    fixed = dict(shared)
    origin = {k: "[params]" for k in shared}
    if multi:
        dp = blk.get("params", {})
        _check_keys(sec("params"), dp, allowed, "parameter")
        fixed.update(dp)
        origin.update({k: sec("params") for k in dp})
    grid = blk.get("grid", {}) or {}
    _check_keys(sec("grid"), grid, allowed, "parameter")
    own = set(blk.get("params", {}) if multi else shared)  # fixed at the same level as the design

    def conflict(k, section):
        if k in own:
            raise _err(f"{section}: {k!r} is both fixed in {origin[k]} and varied in {section}")

    for k, v in grid.items():
        conflict(k, sec("grid"))
        if not isinstance(v, list) or not v:
            raise _err(f"{sec('grid')} {k} must be a non-empty list of values, got {v!r}"
                       + (" (a list of lists for a list parameter)" if Q.param(k).kind == "floats" else ""))
    try:
        gpts = expand_grid(grid) if grid else [{}]
    except ValueError as e:
        raise _err(f"{sec('grid')}: {e}") from None
    pts = blk.get("points", []) or []
    if not isinstance(pts, list) or not all(isinstance(p, dict) for p in pts):
        raise _err(f"{sec('points')} must be an array of tables ([[points]])")
    for j, p in enumerate(pts):
        _check_keys(f"{sec('points')} #{j}", p, allowed, "parameter")
        for k in p:
            conflict(k, f"{sec('points')} #{j}")
            if k in grid:
                raise _err(f"{sec('points')} #{j}: {k!r} is also swept in {sec('grid')}")
    rnd = blk.get("random")
    rpts = [{}]
    if rnd is not None:
        if not isinstance(rnd, dict):
            raise _err(f"{sec('random')} must be a table")
        rnd = dict(rnd)
        rn = rnd.pop("n", None)
        rseed = rnd.pop("seed", sw.seed)
        _check_keys(sec("random"), rnd, allowed, "parameter")
        for k in rnd:
            conflict(k, sec("random"))
            if k in grid or any(k in p for p in pts):
                raise _err(f"{sec('random')}: {k!r} is also set by the grid or the points")
        try:
            rpts = random_design(rnd, rn, rseed)
        except ValueError as e:
            raise _err(f"{sec('random')}: {e}") from None
    combined = product_design(gpts, pts or [{}], rpts)
    if n_before + len(combined) > MAX_POINTS:
        raise _err(f"the spec has more than {MAX_POINTS} points")
    point_keys = {k for p in pts for k in p}
    out = []
    for p in combined:
        o = dict(origin)
        o.update({k: sec("grid") for k in grid})
        o.update({k: sec("points") for k in point_keys})
        o.update({k: sec("random") for k in (rnd or {})})
        full = {**fixed, **p}
        if multi:
            full = {"design": dname, **full}
        out.append((full, o))
    return _Block(dname, kernels, quantities, out)


def _normalize(raw: list) -> list:
    """Type-normalized, completed and checked points of ``raw = [(point, origin, kernels, quantities)]``
    (each distinct value coerced once); SpecError naming the point and the section."""
    varying = varying_keys([r[0] for r in raw])
    cache = {}
    points = []
    for i, (p, origin, kernels, quantities) in enumerate(raw):
        label = point_label(i, p, varying)
        norm = {}
        for k, v in p.items():
            if k == "design":
                norm[k] = v
                continue
            key = (k, json.dumps(canonical(v), sort_keys=True) if not isinstance(v, float) else repr(v),
                   type(v).__name__)
            if key not in cache:
                try:
                    cache[key] = (Q.param(k).coerce(v), None)
                except ValueError as e:
                    cache[key] = (None, str(e))
            val, msg = cache[key]
            if msg is not None:
                raise _err(f"{label}: {msg} (set in {origin.get(k, '[params]')})")
            norm[k] = val
        try:
            full = Q.complete_point(norm, kernels, quantities)
            Q.check_point(full, kernels, quantities)
        except ValueError as e:
            raise _err(f"{label}: {e}") from None
        points.append(full)
    seen = {}
    for i, p in enumerate(points):
        key = canonical_json(p)
        if key in seen:
            raise _err(f"points #{seen[key]} and #{i} are identical ({point_label(i, p, varying)})")
        seen[key] = i
    return points


def load_spec(source) -> Spec:
    """Read and validate a sweep spec (a TOML file path or an already parsed dict).

    Layout (every section optional except what the quantities need)::

        [sweep]     name, description, seed (int >= 0, default 0), kernels (list of names: the kernel
                    classes Last, TwoPoint, NPoint, SWA, EMA, Kernel -- any registered kernel class, by
                    class name, spec name or alias), quantities (quadsgd.sweeps.quantities.QUANTITIES),
                    on_unstable ("error" | "skip"), batch_size (points per task)
        [params]    fixed parameters of every point (quadsgd.sweeps.quantities.PARAMS, and the kernels' params)
        [grid]      swept parameters: lists, combined as a Cartesian product
        [[points]]  explicit points (tables), combined with [grid] as a product
        [random]    n, seed and {param = {uniform|loguniform|int_uniform|int_loguniform|choice = ...}}
        [[design]]  instead of the three above: several designs (name, kernels, quantities, params,
                    grid, points, random) whose points are joined; the table gets a ``design`` column
        [[figures]] file, kind (quadsgd.sweeps.figures.FIGURES), size = [w, h] inches, dpi, and the
                    plotting function's keyword arguments

    Every key, type and range is checked here; a SpecError names the section, the key and the point.
    """
    text, data, path = _read(source)
    _check_keys("spec", data, _TOP_KEYS, "section")
    sw = _sweep_section(data, path)
    shared = data.get("params", {})
    _check_keys("[params]", shared, _point_params(), "parameter")
    multi = "design" in data
    designs = {}
    raw = []  # (point, origin {key: section}, kernels, quantities)
    for bi, blk in enumerate(_design_blocks(data)):
        b = _block_points(bi, blk, multi, shared, sw, designs, len(raw))
        designs[b.name] = {"kernels": b.kernels, "quantities": b.quantities}
        raw.extend((p, o, b.kernels, b.quantities) for p, o in b.points)
    points = _normalize(raw)
    figures = _check_figures(data.get("figures", []), designs, points)
    return Spec(text=text, data=data, path=path, name=sw.name, seed=sw.seed, on_unstable=sw.on_unstable,
                batch_size=sw.batch_size, designs=designs, points=points, varying=varying_keys(points),
                figures=figures)


def _check_figures(figs, designs, points) -> list:
    if not isinstance(figs, list) or not all(isinstance(f, dict) for f in figs):
        raise _err("[[figures]] must be an array of tables")
    computed = {q for d in designs.values() for q in d["quantities"]}
    columns = set(Q.param_names()) | set(_TABLE_COLUMNS) | {k for p in points for k in p}
    out, files = [], set()
    for j, f in enumerate(figs):
        where = f"[[figures]] #{j}"
        file = f.get("file")
        if not isinstance(file, str) or not file or os.path.isabs(file) or ".." in Path(file).parts:
            raise _err(f"{where}: file must be a relative file name like 'loss.png', got {file!r}")
        if Path(file).suffix.lower() not in (".png", ".pdf", ".svg"):
            raise _err(f"{where}: file {file!r} must end in .png, .pdf or .svg")
        if file in files:
            raise _err(f"{where}: file {file!r} is used twice")
        files.add(file)
        where = f"[[figures]] {file!r}"
        kind = f.get("kind")
        if kind not in FIGURES:
            raise _err(f"{where}: " + Q.unknown_name_message("figure kind", kind, list(FIGURES)))
        fig = FIGURES[kind]
        sig = inspect.signature(fig.func)
        kwargs = [p for p in sig.parameters if p not in ("ax", "table")]
        _check_keys(where, f, list(FIGURE_KEYS) + kwargs, "figure option")
        for p, prm in sig.parameters.items():
            if p in ("ax", "table"):
                continue
            if prm.default is inspect.Parameter.empty and p not in f:
                raise _err(f"{where}: option {p!r} is required for kind {kind!r}")
        size = f.get("size", [6.4, 4.4])
        if (not isinstance(size, list) or len(size) != 2
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x <= 50 for x in size)):
            raise _err(f"{where}: size must be [width, height] in inches (0, 50], got {size!r}")
        dpi = f.get("dpi", 150)
        if isinstance(dpi, bool) or not isinstance(dpi, int) or not 20 <= dpi <= 1200:
            raise _err(f"{where}: dpi must be an integer in [20, 1200], got {dpi!r}")
        needs = [f[k] for k in ("quantity", "reference") if isinstance(f.get(k), str)]
        for q in needs:
            if q not in computed:
                raise _err(f"{where}: quantity {q!r} is not computed (quantities: {', '.join(sorted(computed))})")
        if fig.needs_any and not computed & set(fig.needs_any):
            raise _err(f"{where}: kind {kind!r} needs one of the quantities {', '.join(fig.needs_any)}")
        for k in ("x", "y"):
            if k in f and f[k] not in columns:
                raise _err(f"{where}: {k} = {f[k]!r} is not a column; columns: {', '.join(sorted(columns))}")
        sel = f.get("select")
        if sel is not None:
            conds = [sel] if isinstance(sel, dict) else sel
            if not isinstance(conds, list) or not all(isinstance(c, dict) for c in conds):
                raise _err(f"{where}: select must be a table or an array of tables")
            for c in conds:
                for k in c:
                    if k not in columns:
                        raise _err(f"{where}: select " + Q.unknown_name_message("column", k, sorted(columns)))
        for k in ("series", "hue"):
            for c in ([f[k]] if isinstance(f.get(k), str) else f.get(k, [])):
                if c not in columns:
                    raise _err(f"{where}: {k} " + Q.unknown_name_message("column", c, sorted(columns)))
        out.append(dict(f))
    return out


# =============================================================================================
# Running a spec
# =============================================================================================
def _executor_of(scheduler, executor):
    """(executor for :func:`sweep`, Dask client to close or None) for ``scheduler``."""
    if executor is not None or scheduler == "local":
        return executor, None
    if scheduler == "serial":
        return "serial", None
    if isinstance(scheduler, str) and "://" in scheduler:
        try:
            from distributed import Client
        except ImportError as e:  # pragma: no cover - depends on the install
            raise ImportError("--scheduler ADDRESS needs dask[distributed]") from e
        try:
            client = Client(scheduler, timeout="20s")
        except OSError as e:
            raise _err(f"cannot connect to the Dask scheduler at {scheduler}: {e}") from None
        return client, client
    raise _err(f"scheduler must be 'local', 'serial' or a Dask address like tcp://HOST:PORT, got {scheduler!r}")


#: [sweep] keys that do not change the rows (left out of a results directory's identity)
_COSMETIC_SWEEP_KEYS = ("name", "description", "batch_size", "on_unstable")


def spec_identity(data: dict) -> dict:
    """What makes two specs (parsed TOML data) the same sweep: every section but ``[[figures]]``, without the
    cosmetic ``[sweep]`` keys (``name``, ``description``, ``batch_size``, ``on_unstable``)."""
    ident = {k: v for k, v in data.items() if k != "figures"}
    if isinstance(ident.get("sweep"), dict):
        ident["sweep"] = {k: v for k, v in ident["sweep"].items() if k not in _COSMETIC_SWEEP_KEYS}
    return {"spec": ident}


def _stored_spec(d: Path) -> dict | None:
    """The parsed ``spec.toml`` of a results directory (None: none there)."""
    p = Path(d) / "spec.toml"
    if not p.is_file():
        return None
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{p} is not valid TOML: {e}") from None


def _figure_files(data: dict | None) -> set:
    figs = (data or {}).get("figures", [])
    if not isinstance(figs, list):
        return set()
    return {f["file"] for f in figs if isinstance(f, dict) and isinstance(f.get("file"), str)}


def run_spec(spec, out, *, scheduler="local", executor=None, workers=None, threads_per_worker=None,
             skip_unstable=None, batch_size=None, progress=True, figures=True):
    """Run a spec (path, dict or :class:`Spec`) into ``out``; draw its figures; return the table.

    scheduler: "local" (process pool of ``workers``), "serial" (this process) or a Dask scheduler
    address ``tcp://HOST:PORT`` (a ``distributed.Client`` is opened and closed); ``executor`` overrides it.
    skip_unstable: record points with an unstable lr as skipped (default: the spec's ``on_unstable``);
    otherwise such a point is a SpecError before any work. Writes ``out/spec.toml``, ``out/run.json``,
    ``out/results.parquet`` and the figures (see :func:`quadsgd.sweeps.sweep` for resume and the store).
    """
    spec = spec if isinstance(spec, Spec) else load_spec(spec)
    skip = spec.on_unstable == "skip" if skip_unstable is None else bool(skip_unstable)
    if not skip:
        for i, p in enumerate(spec.points):
            try:
                Q.check_stable(p)
            except ValueError as e:
                raise _err(f"{spec.label(i)}: {e}. To record unstable points as skipped instead, set "
                           f"on_unstable = \"skip\" in [sweep] or pass --skip-unstable") from None
    if out is None:  # nothing persisted: no directory to claim
        import contextlib

        claiming = contextlib.nullcontext(None)
    else:
        claiming = claim_output(out, SWEEP_KIND, spec_identity(spec.data), holder="sweep", reentrant=True,
                                hint=lambda diff: " -- a results directory holds the rows of one spec")
    with claiming as claim:
        old = _stored_spec(claim.path) if claim is not None and claim.resumed else None
        executor, client = _executor_of(scheduler, executor)
        try:
            df = sweep(spec.function(), spec.points, executor, out=out, seed=spec.seed,
                       validate=Q.check_stable if skip else None, on_invalid="skip",
                       batch_size=batch_size or spec.batch_size, max_workers=workers,
                       threads_per_worker=threads_per_worker, progress=progress, fingerprint=spec.fingerprint,
                       metadata={"spec": spec.name, "spec_path": spec.path, "scheduler": str(scheduler),
                                 "on_unstable": "skip" if skip else "error", "config": spec.data},
                       config_files={"spec.toml": spec.text}, desc=spec.name)
        finally:
            if client is not None:
                client.close()
        if figures and spec.figures and out is not None:
            draw_figures(df, spec.figures, out)
        for f in sorted(_figure_files(old) - _figure_files(spec.data)):  # figures the spec no longer lists
            (claim.path / f).unlink(missing_ok=True)
    return df
