"""Output directories, one rule for every command that writes one.

Every output directory holds an ownership marker ``DIR/.sgd-trajectories.json`` (written atomically when
the directory is first claimed)::

    {"format": "sgd-trajectories-output-v1", "kind": KIND, "description": "a ...",
     "identity": {...what decides "the same job"...}, "created": ..., "command": [...]}

and, while a command writes into it, the lock ``DIR/.lock`` (``fcntl.flock``, exclusive, non-blocking;
the file holds the pid, host and command of the last holder). Owners declare their kinds with
:func:`register_kind`; this module knows nothing of what they write. :func:`claim_output` (``path, kind,
identity``) checks, **before writing anything**:

* the path: not an existing file, not under a file, writable (:class:`OutputError` naming ``--out``);
* the lock: a directory another process is writing to is refused with the holder's pid;
* the owner: a missing or empty directory is claimed; a directory with a marker of the same kind and
  the same identity is resumed; any other non-empty directory is refused -- another kind of output, the
  same kind with another identity (the changed keys are named), or files without a marker;
* the ancestors: an output directory inside another one is refused, unless this process holds the outer
  one (or a live parent process delegated it: :func:`delegate_env`).

Then it creates the directory, takes the lock, writes the marker and removes the temporary files a killed
writer left. The returned :class:`OutputClaim` is a context manager: when the command fails, what the claim
created is removed again (a directory that was missing or empty before), unless the command said that what
it wrote is worth keeping (:meth:`OutputClaim.keep`); what existed before is never removed.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from .files import TEMP_SUFFIX, jsonable, read_json, remove_stale_temps, write_json

__all__ = [
    "MARKER", "LOCK_NAME", "KINDS", "register_kind", "OutputError", "DirectoryLock", "OutputClaim", "claim_output",
    "output_kind", "check_output_path", "identity_diff", "describe_diff", "held_output", "delegate_env",
    "DELEGATE_ENV",
]

MARKER = ".sgd-trajectories.json"
LOCK_NAME = ".lock"
MARKER_FORMAT = "sgd-trajectories-output-v1"
#: the kinds of output directories registered by their owners (:func:`register_kind`), and how messages name them
KINDS: dict[str, str] = {}


def register_kind(kind: str, description: str) -> str:
    """Declare a kind of output directory (e.g. ``register_kind("sweep", "a parameter sweep")``); returns ``kind``.

    ``description`` is how messages name such a directory; it is also stored in each marker, so a process
    that never imported the owner still names a foreign directory properly. Registering twice with another
    description is a ValueError.
    """
    if KINDS.get(kind, description) != description:
        raise ValueError(f"output kind {kind!r} is registered already as {KINDS[kind]!r}")
    KINDS[kind] = description
    return kind


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
    directory this process holds (e.g. outputs computed by worker processes): such a nested claim is
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


def output_kind(path) -> str | None:
    """The kind of output directory ``path`` is (its marker's ``kind``), or None."""
    d = Path(path)
    m = _read_marker(d) if d.is_dir() else None
    return None if m is None else str(m.get("kind") or "unknown")


def _kind_word(kind: str, marker: dict | None = None) -> str:
    if marker is not None and isinstance(marker.get("description"), str):
        return marker["description"]
    return KINDS.get(kind, f"an output ({kind})")


def _dir_word(d: Path) -> str:
    m = _read_marker(d)
    return _kind_word(str(m.get("kind")) if m else "unknown", m)


def _is_empty(d: Path) -> bool:
    """No entries but a lock file and temporary files of killed writers."""
    with os.scandir(d) as entries:
        return all(e.name == LOCK_NAME or (e.name.startswith(".") and e.name.endswith(TEMP_SUFFIX)) for e in entries)


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


def _decide(p: Path, kind: str, identity: Any, label: str, hint) -> bool:
    """Whether ``p`` is fresh (missing or empty) for ``kind``/``identity``; False: the same job, resumed.
    OutputError when the directory belongs to something else."""
    marker = _read_marker(p)
    if marker is None:
        if _is_empty(p):
            return True
        raise OutputError(f"{label} {_q(p)} is not empty and holds no output of these tools; refusing to "
                          f"write into it (choose a new or empty directory)", "foreign", p)
    if marker.get("corrupt"):
        raise OutputError(f"{label} {_q(p)} has a damaged ownership file {MARKER}; refusing to write into "
                          f"it (choose another {label}, or repair the file)", "foreign", p)
    if marker.get("kind") != kind:
        raise OutputError(f"{label} {_q(p)} is {_kind_word(str(marker.get('kind')), marker)} directory, not "
                          f"{_kind_word(kind)} directory; refusing to write into it (choose another {label})",
                          "foreign", p)
    diff = identity_diff(marker.get("identity"), identity)
    if diff:
        extra = hint(diff) if hint is not None else ""
        raise OutputError(f"{label} {_q(p)} holds {_kind_word(kind)} of another job ({describe_diff(diff)})"
                          f"{extra}; use the same settings to resume it, or a new {label}", "identity", p, diff)
    return False


def claim_output(path, kind: str, identity: Any = None, *, label: str = "--out", holder: str | None = None,
                 hint: Callable[[dict], str] | None = None, reentrant: bool = False) -> OutputClaim:
    """Check, create, lock and mark the output directory ``path`` for a job (module docstring).

    kind: a kind declared with :func:`register_kind`. identity: what decides "the same job" (JSON-able;
    compared exactly, key by key). label: how messages name the option (``--out``). holder: the command,
    for lock messages (default: the kind). hint: ``f(diff) -> str`` appended to the message for another job
    of the same kind. reentrant: nested claims of the same directory by this process share this claim.

    Returns an :class:`OutputClaim` (a context manager: released at exit, abandoned on an exception).
    Raises :class:`OutputError` (a ValueError) before anything is written.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be a registered output kind ({', '.join(KINDS) or 'none yet'}); got {kind!r}")
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
        fresh = _decide(p, kind, identity, label, hint)
    else:
        fresh = True
    for a in rp.parents:
        if a in _HELD or _delegated(a):
            break  # inside an output directory this process (or its parent, for it) writes: OUT/run of a report
        if output_kind(a) is not None:
            raise OutputError(f"{label} {_q(p)} lies inside {_dir_word(a)} directory {_q(a)}; choose a directory "
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
        try:
            claim.fresh = fresh = _decide(p, kind, identity, label, hint) and fresh
        except OutputError:
            claim.fresh = False
            raise
        if _read_marker(p) is None:
            try:
                write_json(p / MARKER, {"format": MARKER_FORMAT, "kind": kind, "description": KINDS[kind],
                                        "identity": identity,
                                        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                                        "command": [sys.executable, *sys.argv]})
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
