"""Complete, atomic, integrity-checked checkpoints.

A checkpoint file ``RUN/checkpoints/step_000000123.pt`` holds the state after 123 optimizer updates:
model ``state_dict`` (uncompiled, unwrapped from DDP), optimizer ``state_dict`` (momentum buffers),
the lr schedule state, the step, RNG states (torch CPU, CUDA, numpy, python), the position in the
batch order and the resolved config -- everything needed to branch off or resume bit-exactly.

On disk: ``MAGIC`` + 8-byte payload length + 32-byte SHA-256 of the payload + the ``torch.save``
payload. The file is written atomically (temp file + ``os.replace``); a truncated or corrupted file
raises :class:`CheckpointError` naming the file. Loading uses ``torch.load(weights_only=True)``.

Retention (:class:`RetentionRule`): which steps a run writes and which it keeps, declared before training.
:class:`CheckpointWriter` writes off the training thread (snapshot to host memory on the caller's thread;
serialise, hash, write, rename and prune in the background) and removes a checkpoint the rule does not keep
only after a later one is complete on disk, so the last good checkpoint is never lost.
"""
from __future__ import annotations

import hashlib
import io
import os
import random
import re
import shutil
import threading
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from sgdtraj.files import atomic_write_bytes

__all__ = [
    "CheckpointError", "save_checkpoint", "load_checkpoint", "checkpoint_path", "list_checkpoints",
    "find_checkpoint", "capture_rng_state", "restore_rng_state", "FORMAT", "previous_good_checkpoint",
    "load_run_checkpoint", "RetentionRule", "CheckpointWriter", "to_host", "DiskPlan", "plan_disk", "free_bytes",
]

MAGIC = b"REALNET-CKPT\x01\n"
FORMAT = "realnet-checkpoint-v1"
_NAME = re.compile(r"^step_(\d{9,})\.pt$")


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt or not a realnet checkpoint."""


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{int(step):09d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[int]:
    """Sorted steps that have a checkpoint file in ``run_dir/checkpoints``."""
    d = Path(run_dir) / "checkpoints"
    if not d.is_dir():
        return []
    steps = []
    for p in d.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_file():
            steps.append(int(m.group(1)))
    return sorted(steps)


def find_checkpoint(run_dir: str | Path, step: int) -> Path:
    """Path of the checkpoint at ``step``; ValueError listing the available steps if there is none."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {str(run_dir)!r}")
    p = checkpoint_path(run_dir, step)
    if not p.is_file():
        avail = list_checkpoints(run_dir)
        shown = ", ".join(map(str, avail)) if avail else "none"
        raise ValueError(f"step {step} is not checkpointed in run {str(run_dir)!r}; available steps: {shown}")
    return p


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Serialise ``payload`` (tensors, numbers, strings, lists, dicts) and write it atomically."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **payload}, buf)
    data = buf.getvalue()
    header = MAGIC + len(data).to_bytes(8, "little") + hashlib.sha256(data).digest()
    return atomic_write_bytes(path, header + data)


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read and verify a checkpoint; :class:`CheckpointError` (naming the file) if it is damaged."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {str(path)!r}")
    raw = path.read_bytes()
    n = len(MAGIC)
    if not raw.startswith(MAGIC):
        raise CheckpointError(f"not a realnet checkpoint (bad header): {str(path)!r}")
    if len(raw) < n + 40:
        raise CheckpointError(f"truncated checkpoint (header incomplete, {len(raw)} bytes): {str(path)!r}")
    size = int.from_bytes(raw[n:n + 8], "little")
    digest = raw[n + 8:n + 40]
    data = raw[n + 40:]
    if len(data) != size:
        raise CheckpointError(
            f"truncated or corrupt checkpoint {str(path)!r}: payload has {len(data)} bytes, header says {size}")
    if hashlib.sha256(data).digest() != digest:
        raise CheckpointError(f"corrupt checkpoint {str(path)!r}: SHA-256 of the payload does not match")
    try:
        obj = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # pragma: no cover - the checksum catches damage first
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {e}") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"unexpected checkpoint format in {str(path)!r}")
    return obj


def previous_good_checkpoint(run_dir: str | Path, step: int) -> int | None:
    """The latest checkpoint before ``step`` that reads back intact (None: there is none)."""
    for s in reversed([s for s in list_checkpoints(run_dir) if s < step]):
        try:
            load_checkpoint(checkpoint_path(run_dir, s))
        except CheckpointError:
            continue
        return s
    return None


def load_run_checkpoint(run_dir: str | Path, step: int, map_location: Any = "cpu", use: str = "") -> dict[str, Any]:
    """:func:`load_checkpoint` of the run's checkpoint at ``step``; a damaged file raises a
    :class:`CheckpointError` that names it and the previous good step, with ``use`` (e.g. ``"--step"``) as the
    way to use that one: ``use.format(step=N, path=P)``."""
    path = checkpoint_path(run_dir, step)
    try:
        return load_checkpoint(path, map_location=map_location)
    except CheckpointError as e:
        prev = previous_good_checkpoint(run_dir, step)
        if prev is None:
            raise CheckpointError(f"{e}; no earlier checkpoint of this run is intact") from None
        how = use.format(step=prev, path=str(path)) if use else f"use step {prev}"
        raise CheckpointError(f"{e}; the previous good checkpoint is step {prev} "
                              f"({str(checkpoint_path(run_dir, prev))!r}): {how}") from None


def capture_rng_state() -> dict[str, Any]:
    """torch CPU (+ all CUDA devices), numpy and python RNG states in a ``weights_only``-safe form."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _host(t: Any, what: str) -> torch.Tensor:
    """``t`` as a CPU tensor (RNG states are host data wherever the checkpoint was mapped)."""
    if not isinstance(t, torch.Tensor):
        return torch.as_tensor(t)
    if t.device.type == "meta":
        raise CheckpointError(f"the {what} RNG state was loaded on the meta device and holds no values; "
                              f"load the checkpoint with map_location='cpu' to resume from it")
    return t.detach().cpu()


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set the torch CPU (+ CUDA, when the device count matches), numpy and python RNGs from
    :func:`capture_rng_state`'s dict. The tensors may live on any device (a checkpoint loaded with
    ``map_location='cuda'``): they are read through the host. :class:`CheckpointError` for meta tensors."""
    torch.set_rng_state(_host(state["torch"], "torch").to(torch.uint8))
    npst = state["numpy"]
    key = _host(npst["key"], "numpy").numpy().astype(np.uint32)
    np.random.set_state(("MT19937", key, int(npst["pos"]), int(npst["has_gauss"]), float(npst["cached_gaussian"])))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():  # pragma: no cover - needs a GPU
        cuda = [_host(s, "cuda").to(torch.uint8) for s in state["cuda"]]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# ---------------------------------------------------------------------------------------------
# retention and background writes
# ---------------------------------------------------------------------------------------------


class RetentionRule(NamedTuple):
    """Which steps a run checkpoints and which of those stay on disk (declared before training).

    Written: step 0, every ``every``-th step, ``listed``, ``branches`` and ``last``. Kept: step 0, ``listed``,
    ``branches``, ``last``, the multiples of ``keep_every`` (0: every written step) and every written step
    within ``window`` steps of a branch step (the dense window a side-trip around it reads).
    """

    every: int  # write every K steps (0: only the listed steps, 0 and the last)
    keep_every: int  # keep the written steps at multiples of K (0: keep every written step)
    listed: frozenset  # extra steps written and kept (checkpoint_steps)
    branches: frozenset  # steps side-trips branch from: written and kept, with a window around each
    window: int  # steps on each side of a branch step whose written checkpoints are kept
    last: int  # the final step of the run: written and kept

    def writes(self, step: int) -> bool:
        return (step == 0 or step == self.last or step in self.listed or step in self.branches
                or bool(self.every and step % self.every == 0))

    def keeps(self, step: int) -> bool:
        if step == 0 or step == self.last or step in self.listed or step in self.branches:
            return True
        if not self.keep_every or step % self.keep_every == 0:
            return True
        return any(abs(step - b) <= self.window for b in self.branches)

    def written(self, start: int, stop: int) -> list[int]:
        """Steps in ``(start, stop]`` that get a checkpoint."""
        extra = {s for s in self.listed | self.branches | {self.last} if start < s <= stop}
        grid = set(range((start // self.every + 1) * self.every, stop + 1, self.every)) if self.every else set()
        return sorted(grid | extra)


class DiskPlan(NamedTuple):
    """Projected disk use of the checkpoints a session writes (:func:`plan_disk`)."""

    checkpoint_bytes: int  # estimated size of one checkpoint file
    written: int  # checkpoints this session writes
    kept: int  # of which stay on disk at the end
    peak_bytes: int  # the most this session adds at any time (kept + the latest unkept + one being written)
    free_bytes: int  # free space under the run directory now

    def line(self, out: str | Path) -> str:
        gb = 1e9
        return (f"checkpoints: {self.written} written, {self.kept} kept, ~{self.checkpoint_bytes / 1e6:.1f} MB each; "
                f"projected disk use up to {self.peak_bytes / gb:.2f} GB, {self.free_bytes / gb:.2f} GB free under "
                f"{str(out)!r}")


def free_bytes(path: str | Path) -> int:
    """Free bytes on the file system holding ``path`` (or its nearest existing parent)."""
    p = Path(path).resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    return int(shutil.disk_usage(p).free)


def plan_disk(rule: RetentionRule, start: int, stop: int, checkpoint_bytes: int, out: str | Path) -> DiskPlan:
    """Disk use of the checkpoints written for updates ``start + 1 .. stop`` under ``rule``."""
    written = rule.written(start, stop)
    kept = sum(1 for s in written if rule.keeps(s))
    transient = min(2, len(written) - kept)  # an unkept checkpoint lives until the next one is on disk
    peak = (kept + transient) * int(checkpoint_bytes)
    return DiskPlan(int(checkpoint_bytes), len(written), kept, peak, free_bytes(out))


def to_host(tree: Any) -> Any:
    """A copy of ``tree`` with every tensor copied to host memory (a snapshot the caller may keep mutating)."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().to("cpu", copy=True)
    if isinstance(tree, dict):
        return {k: to_host(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [to_host(v) for v in tree]
    if isinstance(tree, tuple):
        return tuple(to_host(v) for v in tree)
    return tree


class CheckpointWriter:
    """Writes a run's checkpoints in a background thread and prunes them by a :class:`RetentionRule`.

    :meth:`submit` waits for the previous write (one in flight at most, so host memory holds at most two
    snapshots), snapshots ``payload`` to host memory and returns; the thread serialises, hashes and writes the
    file atomically, then removes the earlier checkpoints the rule does not keep. An error of the thread is
    raised by the next :meth:`submit`, :meth:`wait` or :meth:`close`. ``background=False`` writes inline.
    """

    def __init__(self, run_dir: str | Path, rule: RetentionRule | None = None, background: bool = True):
        self.run_dir, self.rule, self.background = Path(run_dir), rule, bool(background)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _write(self, step: int, payload: dict[str, Any]) -> None:
        try:
            save_checkpoint(checkpoint_path(self.run_dir, step), payload)
            if self.rule is not None:
                for s in list_checkpoints(self.run_dir):
                    if s < step and not self.rule.keeps(s):
                        try:
                            os.remove(checkpoint_path(self.run_dir, s))
                        except FileNotFoundError:
                            pass
        except BaseException as e:  # raised on the training thread by the next call
            self._error = e

    def wait(self) -> None:
        """Block until the write in flight is on disk; raise its error if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def submit(self, step: int, payload: dict[str, Any]) -> None:
        """Write ``payload`` as the checkpoint of ``step`` (returns once it is snapshotted to host memory)."""
        self.wait()
        snap = to_host(payload)
        if not self.background:
            self._write(step, snap)
            self.wait()
            return
        self._thread = threading.Thread(target=self._write, args=(int(step), snap), name=f"checkpoint-{step}")
        self._thread.start()

    def close(self, raise_errors: bool = True) -> None:
        """Finish the write in flight (an error is raised unless ``raise_errors`` is False)."""
        try:
            self.wait()
        except BaseException:
            if raise_errors:
                raise
