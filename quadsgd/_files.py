"""Files and provenance, written once for quadsgd, realnet and validation.

* Atomic writes: every file goes to a temporary file in the same directory (named ``.NAME.XXXX.tmp``,
  mode 0644 under the usual umask), is fsynced and moved into place with :func:`os.replace`; the
  directory is fsynced too. A crash never leaves a half-written file behind; the temporary files of a
  killed writer are removed by :func:`remove_stale_temps`.
* JSON: :func:`jsonable` turns numpy / torch scalars and arrays, paths and dataclasses into JSON types;
  non-finite floats become ``null`` (or the strings ``"inf"``/``"-inf"`` with ``nonfinite="string"``).
* Provenance, one schema everywhere: :func:`provenance` = time, command, host, seed, config,
  ``versions`` (python and packages), ``git`` (commit hash or ``"unknown"``), ``git_dirty`` (uncommitted
  changes to tracked files: True / False / None when unknown) and ``platform``.
* Output directories, one rule for every command (``realnet train``, ``realnet sidetrip``, ``quadsgd sweep``,
  ``validation reproduce``): :func:`claim_output` decides whether a command may write into its ``--out``
  and takes the directory's lock (:class:`DirectoryLock`); see "Output directories" below.

Output directories
------------------
Every output directory a command writes holds an ownership marker ``DIR/.sgd-trajectories.json``
(written atomically when the directory is first claimed)::

    {"format": "sgd-trajectories-output-v1", "kind": "run" | "sidetrip" | "sweep" | "report",
     "identity": {...what decides "the same job"...}, "created": ..., "command": [...]}

and, while a command writes into it, the lock ``DIR/.lock`` (``fcntl.flock``, exclusive, non-blocking;
the file holds the pid, host and command of the last holder). :func:`claim_output` (``path, kind,
identity``) checks, **before writing anything**:

* the path: not an existing file, not under a file, writable (:class:`OutputError` naming ``--out``);
* the lock: a directory another process is writing to is refused with the holder's pid;
* the owner: a missing or empty directory is claimed; a directory with a marker of the same kind and
  the same identity is resumed; any other non-empty directory is refused -- another kind of output
  ("--out ... is a realnet run directory"), the same kind with another identity (the changed keys are
  named), or files that are not an output of these tools at all;
* the ancestors: an output directory inside another one is refused, unless this process holds the outer
  one (``validation reproduce`` writes its run into ``OUT/run`` and its side-trips into ``OUT/sidetrips``).

Then it creates the directory, takes the lock, writes the marker and removes the temporary files a
killed writer left (:func:`remove_stale_temps`, in the directory and in its subdirectories that are not
themselves output directories). The returned :class:`OutputClaim` is a context manager: when the command
fails, what the claim created is removed again (a directory that was missing or empty before), unless the
command said that what it wrote is worth keeping (:meth:`OutputClaim.keep`: a first checkpoint, a finished
claim, a resume state); what existed before is never removed.

Backward compatibility: directories written before markers existed are recognised by their layout
(:func:`output_kind`: a run has ``config.json`` and ``checkpoints/``, a side-trip a ``config.json`` naming
the side-trip, a sweep ``run.json`` and ``parts/``, a report ``verdicts.json`` / ``parts/`` with a
``config.json`` naming the mode). A command adopts such a directory of its own kind when the identity its
files record equals the command's (``legacy_identity``), and writes the marker then; other kinds are refused.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as _dt
import io
import json
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

__all__ = [
    "atomic_write_bytes", "atomic_write_text", "atomic_output", "write_json", "read_json", "write_csv", "read_csv",
    "jsonable", "package_versions", "git_info", "environment", "provenance", "remove_stale_temps", "TEMP_SUFFIX",
    "MARKER", "LOCK_NAME", "KINDS", "OutputError", "DirectoryLock", "OutputClaim", "claim_output", "output_kind",
    "check_output_path", "identity_diff", "describe_diff", "held_output", "delegate_env", "DELEGATE_ENV",
]

TEMP_SUFFIX = ".tmp"
_UMASK = os.umask(0o022)
os.umask(_UMASK)

#: distributions whose versions are recorded with every result (None when not installed)
_PACKAGES = ("sgd-trajectories", "numpy", "scipy", "numba", "matplotlib", "tqdm", "hypothesis", "pandas", "pyarrow",
             "dask", "distributed", "torch", "torchvision", "scikit-learn")


def _fsync_dir(d: Path) -> None:
    try:
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass


@contextlib.contextmanager
def atomic_output(path: str | Path, fsync: bool = True):
    """Context manager yielding a temporary path beside ``path``; on success it is moved onto ``path``.

    For writers that need a file name (parquet, torch.save): ``with atomic_output(p) as tmp: write(tmp)``.
    On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        yield Path(tmp)
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if fsync:
        _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same directory, fsync, os.replace)."""
    path = Path(path)
    with atomic_output(path, fsync=fsync) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
    return path


def atomic_write_text(path: str | Path, text: str, fsync: bool = True) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def remove_stale_temps(directory: str | Path, recursive: bool = False) -> list[Path]:
    """Delete the temporary files (``.NAME.XXXX.tmp``) an interrupted atomic write left in ``directory``.

    Call it only where no other writer is active (e.g. under the directory's lock). Returns what was removed.
    """
    d = Path(directory)
    if not d.is_dir():
        return []
    pattern = f".*{TEMP_SUFFIX}"
    found = d.rglob(pattern) if recursive else d.glob(pattern)
    removed = []
    for p in found:
        if p.is_file():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


def jsonable(obj: Any, nonfinite: str = "null") -> Any:
    """Recursively convert to JSON types: numpy / torch scalars and arrays, paths, dataclasses, tuples.

    Non-finite floats become None (``nonfinite="null"``) or ``"inf"`` / ``"-inf"`` / None for NaN
    (``nonfinite="string"``). Other objects become their ``str``.
    """
    if isinstance(obj, dict):
        return {str(k): jsonable(v, nonfinite) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, nonfinite) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(dataclasses.asdict(obj), nonfinite)
    if isinstance(obj, Path):
        return str(obj)
    np = sys.modules.get("numpy")
    if np is not None:
        if isinstance(obj, np.ndarray):
            return jsonable(obj.tolist(), nonfinite)
        if isinstance(obj, np.generic):
            obj = obj.item()
    if hasattr(obj, "item") and hasattr(obj, "numel") and obj.numel() == 1:  # torch scalar tensor
        obj = obj.item()
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        if nonfinite == "string" and not math.isnan(obj):
            return "inf" if obj > 0 else "-inf"
        return None
    return str(obj)


def write_json(path: str | Path, obj: Any, nonfinite: str = "null", indent: int = 2) -> Path:
    """Atomic JSON file of ``jsonable(obj)`` (strict JSON: no NaN literals)."""
    return atomic_write_text(path, json.dumps(jsonable(obj, nonfinite), indent=indent, allow_nan=False) + "\n")


def read_json(path: str | Path) -> Any:
    """Parsed JSON; ValueError naming the file when it is corrupt."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as e:
        raise ValueError(f"corrupt JSON file {str(path)!r}: {e}") from None


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return repr(float(v))  # shortest exact representation; 'nan'/'inf' for non-finite
    if hasattr(v, "item"):
        return _fmt(v.item())
    return str(v)


def write_csv(path: str | Path, columns: Sequence[str], rows: Iterable[Sequence[Any] | dict]) -> Path:
    """Write a CSV atomically. ``rows`` are sequences in ``columns`` order or dicts keyed by column."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        if isinstance(r, dict):
            r = [r.get(c) for c in columns]
        w.writerow([_fmt(v) for v in r])
    return atomic_write_text(path, buf.getvalue())


def read_csv(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def package_versions() -> dict[str, str | None]:
    """``python`` and the version of every distribution of :data:`_PACKAGES` (None when not installed);
    ``quadsgd``/``realnet`` (this source tree) and, when torch is loaded, ``cuda`` and ``cudnn``."""
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    from . import __version__

    out["quadsgd"] = __version__
    out["realnet"] = __version__
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch"] = str(torch.__version__)
        out["cuda"] = str(torch.version.cuda)
        try:
            out["cudnn"] = str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else "none"
        except Exception:  # pragma: no cover
            out["cudnn"] = "unknown"
    return out


def git_info(cwd: str | Path | None = None) -> tuple[str, bool | None]:
    """(commit hash of the source tree or ``"unknown"``, uncommitted changes to tracked files or None)."""
    cwd = Path(cwd) if cwd is not None else Path(__file__).resolve().parent
    try:
        r = subprocess.run(["git", "-C", str(cwd), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if r.returncode != 0 or not r.stdout.strip():
            return "unknown", None
        d = subprocess.run(["git", "-C", str(cwd), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10)
        return r.stdout.strip(), (bool(d.stdout.strip()) if d.returncode == 0 else None)
    except (OSError, subprocess.SubprocessError):
        return "unknown", None


def environment() -> dict[str, Any]:
    """``versions``, ``git``, ``git_dirty``, ``platform`` (the reproducibility part of :func:`provenance`)."""
    git, dirty = git_info()
    return {"versions": package_versions(), "git": git, "git_dirty": dirty, "platform": platform.platform()}


def provenance(seed: int | None = None, config: Any = None, **extra: Any) -> dict[str, Any]:
    """Everything needed to know what produced a result: time, command, host, seed, config, versions, git."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    return jsonable({
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": [sys.executable, *sys.argv],
        "host": socket.gethostname(),
        "seed": seed,
        "config": config,
        **environment(),
        **extra,
    })



# =============================================================================================
# Output directories: ownership marker, lock, claim (module docstring, "Output directories")
# =============================================================================================
MARKER = ".sgd-trajectories.json"
LOCK_NAME = ".lock"
MARKER_FORMAT = "sgd-trajectories-output-v1"
#: the kinds of output directories, and how messages name them
KINDS = {"run": "a realnet run", "sidetrip": "a realnet side-trip", "sweep": "a quadsgd sweep",
         "report": "a validation report", "posthoc": "a realnet post-hoc merge"}


class OutputError(ValueError):
    """An output directory cannot be used (the message names the option, e.g. ``--out``, and the path).

    ``reason``: ``"path"`` (a file, under a file, not writable), ``"busy"`` (another process holds its lock),
    ``"foreign"`` (it holds something else: another kind of output, or files that are no output of these
    tools), ``"identity"`` (the same kind of output of another job; ``diff`` = {key: (stored, now)}),
    ``"nested"`` (inside another output directory).
    """

    def __init__(self, message: str, reason: str = "path", path: Path | None = None, diff: dict | None = None):
        super().__init__(message)
        self.reason = reason
        self.path = path
        self.diff = diff or {}


def _q(p) -> str:
    return repr(str(p))


def _lock_holder(lock_path: Path) -> tuple[str | None, str | None, str | None]:
    """(pid, host, what) recorded by the last holder of a lock file (None where unknown)."""
    try:
        parts = lock_path.read_text().strip().split(maxsplit=2)
    except OSError:
        return None, None, None
    parts += [None] * (3 - len(parts))
    return parts[0], parts[1], parts[2]


DELEGATE_ENV = "SGD_TRAJECTORIES_DELEGATED_OUTPUT"


def delegate_env(path) -> dict[str, str]:
    """Environment entries for worker processes that write output directories inside ``path``, an output
    directory this process holds (e.g. a report's side-trips computed by workers): such a nested claim is
    allowed in the worker while this process still holds ``path``'s lock (its pid is in the lock file)."""
    rp = Path(path).resolve()
    if rp not in _HELD:
        raise ValueError(f"delegate_env: {str(rp)!r} is not an output directory this process holds")
    return {DELEGATE_ENV: json.dumps([str(rp), os.getpid()])}


def _delegated(a: Path) -> bool:
    """Whether ``a`` is the directory a live parent process holds and delegated to this worker."""
    raw = os.environ.get(DELEGATE_ENV)
    if not raw:
        return False
    try:
        path, pid = json.loads(raw)
    except (ValueError, TypeError):
        return False
    if Path(path) != a or _lock_holder(a / LOCK_NAME)[0] != str(pid):
        return False
    try:
        _probe_lock(a, "", "")
    except OutputError:
        return True  # locked, and the lock file names the delegating process as its holder
    return False  # nobody holds the lock any more: the delegation is void


def _busy_error(root: Path, what: str, label: str) -> OutputError:
    path = root / LOCK_NAME
    pid, host, holder = _lock_holder(path)
    who = f"process {pid}" if pid else "another process"
    if host and host != socket.gethostname():
        who += f" on {host}"
    return OutputError(f"{label} {_q(root)}: another {holder or what} is writing to it ({who} holds its lock "
                       f"{_q(path)}); wait for it to finish or choose another {label}", "busy", root)


class DirectoryLock:
    """An exclusive, non-blocking ``fcntl.flock`` on ``DIR/.lock``, held until :meth:`close` (or exit).

    The lock file records the holder (``pid host what``) for the message another process gets:
    :class:`OutputError` (a ValueError, ``reason="busy"``) naming the directory and the holder's pid.
    No-op where fcntl is missing.
    """

    def __init__(self, root, what: str = "sweep", label: str = "--out"):
        self.root = Path(root)
        self.path = self.root / LOCK_NAME
        self.what = what
        self._fh = open(self.path, "a+")
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self._fh.close()
                raise _busy_error(self.root, what, label) from None
        try:  # "a+": after truncating, writes land at offset 0
            self._fh.truncate(0)
            self._fh.write(f"{os.getpid()} {socket.gethostname()} {what}\n")
            self._fh.flush()
        except OSError:  # pragma: no cover - the lock holds even when the note cannot be written
            pass

    @property
    def closed(self) -> bool:
        return self._fh.closed

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


def _probe_lock(root: Path, what: str, label: str) -> None:
    """Raise the "busy" OutputError when another process holds ``root/.lock``; writes nothing."""
    path = root / LOCK_NAME
    if not path.is_file():
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        return
    try:
        fh = open(path, "rb")
    except OSError:
        return
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise _busy_error(root, what, label) from None
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    finally:
        fh.close()


def _read_marker(d: Path) -> dict | None:
    p = d / MARKER
    if not p.is_file():
        return None
    try:
        m = read_json(p)
    except (OSError, ValueError):
        return {"kind": "unknown", "corrupt": True}
    return m if isinstance(m, dict) else {"kind": "unknown", "corrupt": True}


def _layout_kind(d: Path) -> str | None:
    """The kind of an output directory written before markers existed, from its files (None: not one)."""
    if (d / "run.json").is_file() and ((d / "parts").is_dir() or (d / "results.parquet").is_file()):
        return "sweep"
    cfg = d / "config.json"
    if cfg.is_file():
        try:
            c = read_json(cfg)
        except (OSError, ValueError):
            c = None
        if isinstance(c, dict):
            if "sidetrip" in c and "run" in c:
                return "sidetrip"
            if (d / "checkpoints").is_dir() or {"dataset", "model", "steps"} <= set(c):
                return "run"
            if "mode" in c and ((d / "parts").is_dir() or (d / "verdicts.json").is_file()):
                return "report"
    if (d / "checkpoints").is_dir() and any((d / "checkpoints").glob("step_*.pt")):
        return "run"
    if (d / "verdicts.json").is_file() and (d / "report.md").is_file():
        return "report"
    return None


def output_kind(path) -> str | None:
    """The kind of output directory ``path`` is (its marker's ``kind``, else its layout), or None."""
    d = Path(path)
    if not d.is_dir():
        return None
    m = _read_marker(d)
    if m is not None:
        return str(m.get("kind") or "unknown")
    return _layout_kind(d)


def _kind_word(kind: str) -> str:
    return KINDS.get(kind, f"an output ({kind})")


def _is_empty(d: Path) -> bool:
    """No entries but a lock file and temporary files of killed writers."""
    for e in os.scandir(d):
        if e.name == LOCK_NAME or (e.name.startswith(".") and e.name.endswith(TEMP_SUFFIX)):
            continue
        return False
    return True


def check_output_path(path, label: str = "--out") -> Path:
    """``path`` as an absolute path; :class:`OutputError` (``reason="path"``) naming ``label`` when it is
    empty, an existing file, under a file or not writable. Writes nothing."""
    if path is None or not str(path).strip():
        raise OutputError(f"{label} needs a directory name (e.g. {label} runs/r0)", "path")
    p = Path(os.path.abspath(os.path.expanduser(str(path))))
    cur = p
    while not os.path.lexists(cur) and cur.parent != cur:
        cur = cur.parent
    if not cur.is_dir():
        if cur == p:
            raise OutputError(f"{label} {_q(path)} is an existing file, not a directory", "path", p)
        raise OutputError(f"{label} {_q(path)} lies under {_q(cur)}, which is a file, not a directory", "path", p)
    if not os.access(cur, os.W_OK | os.X_OK):
        where = "" if cur == p else f" (its existing parent {_q(cur)} is not writable)"
        raise OutputError(f"{label} {_q(path)} is not writable{where}: permission denied", "path", p)
    return p


def _plain_identity(identity: Any) -> Any:
    """``identity`` as its JSON round trip (what a marker stores), so comparisons are exact."""
    return json.loads(json.dumps(jsonable(identity), allow_nan=False))


_MISSING = object()


def _flatten(x: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    if isinstance(x, dict) and x:
        for k in sorted(x):
            yield from _flatten(x[k], f"{prefix}.{k}" if prefix else str(k))
    else:
        yield (prefix or "identity"), x


def identity_diff(stored: Any, now: Any) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (stored value, value now)} for every key where two identities differ."""
    a = dict(_flatten(_plain_identity(stored)))
    b = dict(_flatten(_plain_identity(now)))
    return {k: (a.get(k, _MISSING), b.get(k, _MISSING)) for k in sorted(set(a) | set(b))
            if a.get(k, _MISSING) != b.get(k, _MISSING)}


def _short(v: Any) -> str:
    if v is _MISSING:
        return "(absent)"
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def describe_diff(diff: dict) -> str:
    """``key: stored (stored) != now (now); ...`` for an :func:`identity_diff` (at most 6 keys shown)."""
    items = [f"{k}: {_short(a)} (stored) != {_short(b)} (now)" for k, (a, b) in diff.items()]
    if len(items) > 6:
        items = items[:6] + [f"... {len(diff) - 6} more"]
    return "; ".join(items)


@dataclass
class OutputClaim:
    """An output directory claimed by this process (see :func:`claim_output`).

    path: the directory (absolute). kind / identity: what it holds. fresh: it was missing or empty when
    claimed (a new job); ``not fresh``: an existing job is resumed. created: the top-most directory the
    claim created (None when ``path`` existed). lock: the :class:`DirectoryLock` held. shared: a nested
    claim of a directory this process already holds (the outer claim owns the lock).
    """

    path: Path
    kind: str
    identity: Any
    fresh: bool
    created: Path | None
    lock: DirectoryLock | None
    label: str = "--out"
    shared: bool = False
    kept: bool = False
    reentrant: bool = False
    _outer: "OutputClaim | None" = field(default=None, repr=False)

    @property
    def resumed(self) -> bool:
        return not self.fresh

    def keep(self) -> None:
        """What the command wrote is worth keeping even if it fails later (no :meth:`abandon`)."""
        self.kept = True
        if self._outer is not None:
            self._outer.keep()

    def release(self) -> None:
        """Release the lock (the marker stays)."""
        if self.shared or self.lock is None:
            return
        if _HELD.get(self.path) is self:
            del _HELD[self.path]
        self.lock.close()

    def abandon(self, force: bool = False) -> bool:
        """Remove what this claim created -- only for a directory that was missing or empty when claimed,
        and unless :meth:`keep` was called (``force``: even then, e.g. for a diverged computation whose
        states must not be resumed). Returns whether anything was removed."""
        if self.shared or not self.fresh or (self.kept and not force):
            return False
        try:
            if self.created is not None:
                shutil.rmtree(self.created, ignore_errors=True)
            elif self.path.is_dir():
                for e in os.scandir(self.path):  # it was empty: everything in it was written by this command
                    if e.is_dir(follow_symlinks=False):
                        shutil.rmtree(e.path, ignore_errors=True)
                    else:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(e.path)
        except OSError:  # pragma: no cover - best effort
            return False
        return True

    def __enter__(self) -> "OutputClaim":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self.abandon()
        self.release()
        return False


#: output directories claimed by this process (resolved path -> claim)
_HELD: dict[Path, OutputClaim] = {}


def held_output(path) -> OutputClaim | None:
    """The claim this process holds on ``path`` (None: not held)."""
    return _HELD.get(Path(os.path.abspath(str(path))).resolve())


def _remove_temps_tree(root: Path) -> None:
    """:func:`remove_stale_temps` in ``root`` and its subdirectories that are not output directories themselves."""
    remove_stale_temps(root)
    for dirpath, dirnames, _ in os.walk(root):
        keep = []
        for name in dirnames:
            sub = Path(dirpath) / name
            if output_kind(sub) is None:
                remove_stale_temps(sub)
                keep.append(name)
        dirnames[:] = keep


def _decide(p: Path, kind: str, identity: Any, label: str, legacy_identity, hint) -> tuple[bool, bool]:
    """(fresh, adopt): may ``kind``/``identity`` use the existing directory ``p``? OutputError otherwise."""
    marker = _read_marker(p)
    if marker is not None:
        if marker.get("corrupt"):
            raise OutputError(f"{label} {_q(p)} has a damaged ownership file {MARKER}; refusing to write into "
                              f"it (choose another {label}, or repair the file)", "foreign", p)
        if marker.get("kind") != kind:
            raise OutputError(f"{label} {_q(p)} is {_kind_word(str(marker.get('kind')))} directory, not "
                              f"{_kind_word(kind)} directory; refusing to write into it (choose another {label})",
                              "foreign", p)
        stored, adopt = marker.get("identity"), False
    elif _is_empty(p):
        return True, False
    else:
        layout = _layout_kind(p)
        if layout is None:
            raise OutputError(f"{label} {_q(p)} is not empty and holds no output of these tools; refusing to "
                              f"write into it (choose a new or empty directory)", "foreign", p)
        if layout != kind:
            raise OutputError(f"{label} {_q(p)} is {_kind_word(layout)} directory, not {_kind_word(kind)} "
                              f"directory; refusing to write into it (choose another {label})", "foreign", p)
        if legacy_identity is None:
            return False, True
        try:
            stored = legacy_identity(p)
        except (OSError, ValueError) as e:
            raise OutputError(f"{label} {_q(p)} looks like {_kind_word(kind)} directory but its files cannot be "
                              f"read ({e}); refusing to write into it", "foreign", p) from None
        adopt = True
    diff = identity_diff(stored, identity)
    if diff:
        extra = hint(diff) if hint is not None else ""
        raise OutputError(f"{label} {_q(p)} holds {_kind_word(kind)} of another job ({describe_diff(diff)})"
                          f"{extra}; use the same settings to resume it, or a new {label}", "identity", p, diff)
    return False, adopt


def claim_output(path, kind: str, identity: Any = None, *, label: str = "--out", holder: str | None = None,
                 legacy_identity: Callable[[Path], Any] | None = None,
                 hint: Callable[[dict], str] | None = None, reentrant: bool = False) -> OutputClaim:
    """Check, create, lock and mark the output directory ``path`` for a job (module docstring).

    kind: ``"run"``, ``"sidetrip"``, ``"sweep"`` or ``"report"``. identity: what decides "the same job"
    (JSON-able; compared exactly, key by key). label: how messages name the option (``--out``).
    holder: the command, for lock messages (default: the kind). legacy_identity: ``f(dir) -> identity`` of a
    directory of this kind written before markers existed (None: adopt it as is). hint: ``f(diff) -> str``
    appended to the message for another job of the same kind.

    Returns an :class:`OutputClaim` (a context manager: released at exit, abandoned on an exception).
    Raises :class:`OutputError` (a ValueError) before anything is written.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    what = holder or kind
    p = check_output_path(path, label)
    rp = p.resolve()
    held = _HELD.get(rp)
    if held is not None:  # claimed by this process already
        if held.kind != kind:
            raise OutputError(f"{label} {_q(p)} is already open in this process as {_kind_word(held.kind)} "
                              f"directory", "foreign", rp)
        if not held.reentrant:
            raise _busy_error(p, what, label)
        return OutputClaim(rp, kind, held.identity, held.fresh, held.created, held.lock, label, shared=True,
                           _outer=held)
    identity = _plain_identity(identity)
    exists = p.is_dir()
    if exists:
        _probe_lock(p, what, label)
        fresh, adopt = _decide(p, kind, identity, label, legacy_identity, hint)
    else:
        fresh, adopt = True, False
    for a in rp.parents:
        if a in _HELD or _delegated(a):
            break  # inside an output directory this process (or its parent, for it) writes: OUT/run of a report
        k = output_kind(a)
        if k is not None:
            raise OutputError(f"{label} {_q(p)} lies inside {_kind_word(k)} directory {_q(a)}; choose a directory "
                              f"outside it", "nested", p)
    created = None
    if not exists:
        top = p
        while not top.parent.exists():
            top = top.parent
        try:
            p.mkdir(parents=True)
        except FileExistsError:  # created concurrently: decide again under the lock below
            pass
        except OSError as e:
            raise OutputError(f"cannot create {label} {_q(path)}: {e.strerror or e}", "path", p) from None
        else:
            created = top
    claim = OutputClaim(rp, kind, identity, fresh, created, None, label, reentrant=reentrant)
    try:
        try:
            claim.lock = DirectoryLock(p, what, label)
        except OSError as e:
            raise OutputError(f"cannot write to {label} {_q(path)}: {e.strerror or e}", "path", p) from None
        # decide again under the lock: another process may have claimed the directory meanwhile (then what
        # is in it is theirs: refuse without removing anything)
        marker = _read_marker(p)
        try:
            if marker is None and not (exists and adopt):
                if not _is_empty(p):
                    fresh, adopt = _decide(p, kind, identity, label, legacy_identity, hint)
                    claim.fresh = fresh
            elif marker is not None:
                _decide(p, kind, identity, label, legacy_identity, hint)
        except OutputError:
            claim.fresh = False
            raise
        if _read_marker(p) is None:
            try:
                write_json(p / MARKER, {"format": MARKER_FORMAT, "kind": kind, "identity": identity,
                                        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                                        "command": [sys.executable, *sys.argv], "adopted": bool(adopt)})
            except OSError as e:
                raise OutputError(f"cannot write to {label} {_q(path)}: {e.strerror or e}", "path", p) from None
        _remove_temps_tree(p)
    except BaseException:
        if claim.lock is not None:
            claim.abandon()
            claim.lock.close()
        elif created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
    _HELD[rp] = claim
    return claim
