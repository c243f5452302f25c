"""A worker process of :func:`validation.real.prefetching.prefetch`:
``python -m validation.real._prefetch_worker PARENT_PID``.

Reads one JSON request per line on stdin -- ``{"cfg": RealConfig fields, "out": OUT, "run": run dir, "request":
[name, key, options]}`` -- computes that side-trip into ``OUT/sidetrips/<key>`` (no progress bar) and answers one
JSON line on stdout: ``{"key": key, "timings": {...}}`` or ``{"key": key, "error": "Type: message"}``. Anything
else the side-trip prints goes to stderr. Exits at the end of stdin, and with its parent (even on SIGKILL).
A separate interpreter started with ``-m`` (not a fork, not a re-run of the caller's ``__main__``).
"""
from __future__ import annotations

import json
import os
import sys


def main(parent: int) -> int:
    from sgdtraj.workers import exit_with_parent

    exit_with_parent(parent)
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr  # the protocol owns the real stdout
    from .prefetching import prefetch_one

    for line in sys.stdin:
        if not line.strip():
            continue
        msg = json.loads(line)
        name, key, opts = msg["request"]
        try:
            recs = prefetch_one(msg["cfg"], msg["out"], msg["run"], (name, key, opts))
            reply = {"key": key, "timings": recs}
        except Exception as exc:  # noqa: BLE001 - the parent leaves the side-trip to its claim
            reply = {"key": key, "error": f"{type(exc).__name__}: {exc}"}
        replies.write(json.dumps(reply) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(int(sys.argv[1])))
    except KeyboardInterrupt:
        sys.exit(130)
