"""Typed side-trip results: summary fields and tables (CSV files as typed column arrays), saved and loaded.

A side-trip's result is a dataclass (a :class:`SideTripResult` subclass) whose fields are

* the numbers of its ``summary.json``, in file order (typed: ``float``, ``int``, ``str``, ``np.ndarray``,
  small dataclasses such as :class:`Metrics`, lists and dicts of those), and
* its tables: one :class:`Table` per CSV file (``TABLES`` maps the field to the file name), whose fields are
  the CSV columns in file order as typed arrays (``int64``, ``float64`` or ``str``), one entry per row.

``result.save(dir)`` writes ``config.json``, ``run_info.json`` (when the result carries them), every CSV and
``summary.json`` (last: its presence marks a finished side-trip); ``Result.load(dir)`` reads them back.
CSV numbers round-trip exactly (shortest ``repr``; ``nan``/``inf`` kept); in ``summary.json`` non-finite
numbers are ``null`` and load as NaN (or None for fields typed ``float | None``). A field with a default that
a saved result lacks (added to the result class later) loads as its default, a missing table with a default
as that default (e.g. empty), so results saved by earlier versions stay readable.

``result["key"]`` / ``result.summary`` give the summary as the dict the side-trip functions returned before
they returned typed results (nested dataclasses as dicts), so ``summary["train_min_loss"]`` keeps working.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from sgdtraj.files import read_csv, read_json, write_csv, write_json

__all__ = ["Table", "column", "SideTripResult", "Metrics"]

_DTYPES = {"int": np.int64, "float": np.float64, "str": np.str_}


def column(kind: str, doc: str = ""):
    """A :class:`Table` column: ``kind`` = ``"int"`` | ``"float"`` | ``"str"``; ``doc`` says what it holds."""
    if kind not in _DTYPES:
        raise ValueError(f"column kind must be one of {tuple(_DTYPES)}, got {kind!r}")
    return field(metadata={"kind": kind, "doc": doc})


@dataclass(frozen=True, eq=False)
class Table:
    """One CSV file as typed columns. Subclasses declare the columns, in file order, with :func:`column`.

    Every column is a 1-D array of the same length (the number of rows); missing numbers are NaN.
    """

    def __post_init__(self):
        n = None
        for f in fields(self):
            kind = f.metadata["kind"]
            v = getattr(self, f.name)
            if kind == "float":
                if not isinstance(v, np.ndarray):
                    v = [math.nan if x is None else x for x in v]
                a = np.array(v, dtype=np.float64)
            elif kind == "int":
                a = np.array(v, dtype=np.int64)
            else:
                a = np.array(v, dtype=np.str_) if len(v) else np.zeros(0, dtype=np.str_)
            if a.ndim != 1:
                raise ValueError(f"{type(self).__name__}.{f.name} must be 1-D, got shape {a.shape}")
            if n is not None and len(a) != n:
                raise ValueError(f"{type(self).__name__}: column {f.name!r} has {len(a)} rows, expected {n}")
            n = len(a)
            object.__setattr__(self, f.name, a)

    @classmethod
    def columns(cls) -> list[str]:
        """Column names in file order."""
        return [f.name for f in fields(cls)]

    def __len__(self) -> int:
        cols = self.columns()
        return len(getattr(self, cols[0])) if cols else 0

    def blank(self) -> dict[str, np.ndarray]:
        """Cells written empty in the CSV ("not applicable"): {column: boolean mask}. Default: none."""
        return {}

    def rows(self) -> list[list]:
        """The rows as Python values (what the CSV holds; blank cells are None)."""
        cols = {c: getattr(self, c).tolist() for c in self.columns()}
        for c, mask in self.blank().items():
            cols[c] = [None if m else v for v, m in zip(cols[c], np.asarray(mask, bool).tolist())]
        return [list(r) for r in zip(*cols.values())]

    def write(self, path: str | Path) -> Path:
        """Write the CSV atomically (header = :meth:`columns`)."""
        return write_csv(path, self.columns(), self.rows())

    @classmethod
    def read(cls, path: str | Path) -> "Table":
        """Read a CSV written by :meth:`write` (columns by name; an empty cell is NaN)."""
        rows = read_csv(path)
        values: dict[str, list] = {}
        for f in fields(cls):
            kind = f.metadata["kind"]
            conv = {"int": int, "str": str, "float": lambda s: float(s) if s != "" else math.nan}[kind]
            try:
                values[f.name] = [conv(r[f.name]) for r in rows]
            except KeyError:
                raise ValueError(f"{str(path)!r} has no column {f.name!r}") from None
        return cls(**values)

    def select(self, mask) -> "Table":
        """The rows where ``mask`` (boolean array or index array) selects."""
        return type(self)(**{c: getattr(self, c)[mask] for c in self.columns()})

    def to_dict(self) -> dict[str, np.ndarray]:
        return {c: getattr(self, c) for c in self.columns()}

    def to_pandas(self):
        """The table as a ``pandas.DataFrame`` (pandas imported on demand)."""
        import pandas as pd

        return pd.DataFrame(self.to_dict())


@dataclass
class Metrics:
    """Loss and accuracy of a model: train = a fixed training subset, val = the validation split (eval mode,
    BatchNorm statistics recomputed; see the package docstring)."""

    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float


_META = ("wall_s", "config", "run_info")


@dataclass(eq=False)
class SideTripResult:
    """Base of the side-trip results; see the module docstring.

    run: the run directory. step: the checkpoint the side-trip branched from. wall_s: its wall time (s).
    config / run_info: the contents of ``config.json`` / ``run_info.json`` (None when not known).
    """

    NAME: ClassVar[str] = ""
    #: table field -> CSV file name
    TABLES: ClassVar[dict[str, str]] = {}

    run: str
    step: int
    wall_s: float = field(default=math.nan, kw_only=True)
    config: dict | None = field(default=None, kw_only=True, repr=False)
    run_info: dict | None = field(default=None, kw_only=True, repr=False)

    # ---------------------------------------------------------------- the summary (summary.json)
    @property
    def summary(self) -> dict[str, Any]:
        """``summary.json`` as a dict: ``sidetrip``, the summary fields in order, ``wall_s`` (non-finite kept)."""
        out: dict[str, Any] = {"sidetrip": self.NAME}
        for f in fields(self):
            if f.name in _META or f.name in self.TABLES:
                continue
            out[f.name] = _plain(getattr(self, f.name))
        out["wall_s"] = self.wall_s
        return out

    def __getitem__(self, key: str):
        return self.summary[key]

    def __contains__(self, key) -> bool:
        return key in self.summary

    def __iter__(self):
        return iter(self.summary)

    def keys(self):
        return self.summary.keys()

    def get(self, key: str, default=None):
        return self.summary.get(key, default)

    def headline(self) -> dict[str, Any]:
        """A few key numbers (what the CLI prints)."""
        return self.headline_of(self.summary)

    @staticmethod
    def headline_of(summary: dict[str, Any]) -> dict[str, Any]:
        """The headline numbers of a summary dict (subclasses choose them)."""
        return summary

    # ---------------------------------------------------------------- files
    def save(self, directory: str | Path) -> Path:
        """Write config.json / run_info.json (if known), the CSV files and summary.json (last) into ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        if self.config is not None:
            write_json(d / "config.json", self.config)
        if self.run_info is not None:
            write_json(d / "run_info.json", self.run_info)
        for name, fname in self.TABLES.items():
            getattr(self, name).write(d / fname)
        write_json(d / "summary.json", self.summary)
        return d

    @classmethod
    def load(cls, directory: str | Path) -> "SideTripResult":
        """The result saved in ``directory`` (by :meth:`save` or the side-trip itself)."""
        d = Path(directory)
        p = d / "summary.json"
        if not p.is_file():
            raise FileNotFoundError(f"no summary.json in {str(d)!r} (not a finished {cls.NAME} side-trip)")
        summary = read_json(p)
        if summary.get("sidetrip") != cls.NAME:
            raise ValueError(f"{str(p)!r} is a {summary.get('sidetrip')!r} side-trip, not {cls.NAME!r}")
        hints = typing.get_type_hints(cls)
        kw: dict[str, Any] = {}
        for f in fields(cls):
            optional = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            if f.name in cls.TABLES:
                q = d / cls.TABLES[f.name]
                if not q.is_file() and optional:
                    continue  # a table added after this result was saved: its default (empty)
                kw[f.name] = hints[f.name].read(q)
            elif f.name in ("config", "run_info"):
                q = d / f"{f.name}.json"
                kw[f.name] = read_json(q) if q.is_file() else None
            else:
                if f.name not in summary:
                    if optional:
                        continue  # a field added after this result was saved: its default
                    raise ValueError(f"{str(p)!r} has no key {f.name!r}")
                kw[f.name] = from_json(hints[f.name], summary[f.name])
        return cls(**kw)


def _plain(v):
    """Nested dataclasses (not tables) as dicts; lists, tuples and dicts recursively; other values as they are."""
    if dataclasses.is_dataclass(v) and not isinstance(v, type) and not isinstance(v, Table):
        return {f.name: _plain(getattr(v, f.name)) for f in fields(v)}
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, tuple):
        return tuple(_plain(x) for x in v)
    return v


def from_json(tp, v):
    """``v`` (a parsed JSON value) as type ``tp``: float (None -> NaN), int, str, bool, ``X | None``,
    ``np.ndarray`` (float64, None -> NaN), ``list[X]``, ``tuple[X, ...]``, ``dict[str, X]``, dataclasses."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if v is None:
            return None
        return from_json(args[0], v) if len(args) == 1 else v
    if tp is float:
        return math.nan if v is None else float(v)
    if tp is int:
        return int(v)
    if tp in (str, bool):
        return tp(v)
    if tp is np.ndarray:
        return np.array([math.nan if x is None else x for x in v], dtype=np.float64)
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        return [from_json(item, x) for x in v]
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_json(args[0], x) for x in v)
        return tuple(from_json(a, x) for a, x in zip(args, v))
    if origin is dict:
        _, item = typing.get_args(tp) or (str, Any)
        return {k: from_json(item, x) for k, x in v.items()}
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return tp(**{f.name: from_json(hints[f.name], v[f.name]) for f in fields(tp) if f.init})
    return v
