r"""The durable, resumable store of a sweep's results directory, and its lock.

::

    DIR/.lock             held (fcntl.flock, exclusive, non-blocking) while a sweep writes to DIR
    DIR/.sgd-trajectories.json   the ownership marker (kind "sweep"; sgdtraj.outputs.claim_output)
    DIR/parts/*.parquet   one part per finished batch of points (append-only); each part is written to
                          a temporary file and moved into place (sgdtraj.files.atomic_output), so a
                          killed run loses at most its in-flight batches and never leaves half a part
    DIR/results.parquet   the consolidated table (written by the engine, atomically, fsynced)

:class:`Store` opens (creates) the directory under its lock -- the claim of :func:`sgdtraj.outputs.claim_output`,
which refuses a directory that holds anything but a sweep -- and removes the temporary files a killed
writer left; :meth:`Store.done_ids` says which points are stored (resume); :meth:`Store.read` returns
the parts with each point once; :meth:`Store.compact` replaces many parts by one.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from sgdtraj.files import atomic_output, remove_stale_temps
from sgdtraj.outputs import claim_output, register_kind

__all__ = ["Store", "write_table", "deps", "SWEEP_KIND"]

#: the output-directory kind of a sweep results directory
SWEEP_KIND = register_kind("sweep", "a quadsgd sweep")


def deps():
    """(pandas, pyarrow, pyarrow.compute, pyarrow.parquet); ImportError with the install hint otherwise."""
    try:
        import pandas as pd
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("quadsgd sweeps need pandas and pyarrow: pip install 'sgd-trajectories[sweep]'") from e
    return pd, pa, pc, pq


def write_table(table, path: Path, fsync: bool = False) -> Path:
    """Write a pyarrow table to ``path`` atomically: readers and a killed writer never see a partial
    file. ``fsync`` also survives a power cut (slow on network file systems)."""
    _, _, _, pq = deps()
    with atomic_output(path, fsync=fsync) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


class Store:
    """``DIR/parts/*.parquet``: one file per persisted batch; ``DIR/.lock`` held while open.

    claim: the :class:`sgdtraj.outputs.OutputClaim` of ``DIR`` (default: claimed here as a shared sweep
    store, identity None); the store releases it in :meth:`close` and keeps the directory once a part is written.
    """

    def __init__(self, root, claim=None):
        self.claim = claim if claim is not None else claim_output(root, SWEEP_KIND, None, holder="sweep")
        self.root = Path(root)
        self.parts = self.root / "parts"
        self.parts.mkdir(exist_ok=True)
        self._lock = self.claim.lock
        # a killed run's temporary files, never moved into place: every *.tmp under parts/ (only the
        # store writes there), the hidden atomic-write temporaries in DIR, and the NAME.PID.tmp files
        # of earlier versions
        for tmp in [*self.parts.glob("*.tmp"), *self.root.glob("*.[0-9]*.tmp")]:
            tmp.unlink(missing_ok=True)
        remove_stale_temps(self.root)
        self._seq = 0
        self.written: list[Path] = []

    def close(self) -> None:
        self.claim.release()

    def files(self) -> list[Path]:
        """The stored parts, oldest first (names start with a nanosecond time stamp)."""
        return sorted(self.parts.glob("*.parquet"))

    def write_part(self, table) -> Path:
        """Persist one batch's table as a new part (atomically; no fsync: a part is recomputable)."""
        self._seq += 1
        path = self.parts / f"part-{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}.parquet"
        write_table(table, path)
        self.written.append(path)
        self.claim.keep()
        return path

    def done_ids(self, files) -> set:
        """The point ids stored in ``files``."""
        _, _, _, pq = deps()
        ids = set()
        for f in files:
            ids.update(pq.read_table(f, columns=["point_id"]).column(0).to_pylist())
        return ids

    def read(self, files=None) -> list:
        """Tables of the parts, each point once (the first file holding it wins)."""
        _, pa, pc, pq = deps()
        seen = set()
        out = []
        for f in (self.files() if files is None else files):
            t = pq.read_table(f)
            if seen:
                t = t.filter(pc.invert(pc.is_in(t["point_id"], value_set=pa.array(sorted(seen), pa.string()))))
            seen |= set(t["point_id"].to_pylist())
            if t.num_rows:
                out.append(t)
        return out

    def compact(self, tables, files) -> None:
        """Replace the part ``files`` by one part holding ``tables`` (their content, each point once):
        the new part is in place (atomically) before the old ones are removed, so a kill in between
        leaves duplicates, which :meth:`read` drops."""
        _, pa, _, _ = deps()
        if len(files) <= 1:
            return
        if tables:
            write_table(pa.concat_tables(tables, promote_options="permissive"),
                        self.parts / f"compact-{time.time_ns():020d}-{os.getpid()}.parquet")
        for f in files:
            f.unlink(missing_ok=True)
