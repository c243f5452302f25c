"""The report: ``report.md`` (a table of verdicts, linked figures, config and versions) and
``verdicts.json`` (a list of verdict objects). Files are written atomically."""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from .verdict import Verdict

__all__ = ["write_report", "write_json_atomic", "environment", "git_hash"]


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json_atomic(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def git_hash() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment() -> dict:
    from importlib import metadata

    versions = {}
    for pkg in ("numpy", "scipy", "numba", "matplotlib", "torch", "torchvision", "scikit-learn"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return dict(python=sys.version.split()[0], platform=platform.platform(), packages=versions,
                git_hash=git_hash())


def _fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if isinstance(x, float) and math.isnan(x):
        return "-"
    if isinstance(x, float) and (abs(x) >= 1e4 or (abs(x) < 1e-3 and x != 0)):
        return f"{x:.3g}"
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def write_report(out: Path, verdicts: list[Verdict], config: dict) -> None:
    """Write ``out/verdicts.json`` and ``out/report.md``."""
    out = Path(out)
    write_json_atomic(out / "verdicts.json", [v.to_dict() for v in verdicts])
    n_pass = sum(v.passed for v in verdicts)
    lines = [
        "# Reproduction report: Training trajectories, mini-batch losses and the curious role of the learning rate",
        "",
        f"{n_pass} of {len(verdicts)} claims verified. Mode: `{config.get('mode')}`. "
        f"Git: `{config.get('environment', {}).get('git_hash', 'unknown')}`.",
        "",
        "Each row: the claim's id, the statistic that tests it, the measured value (with its standard "
        "error or CI half-width where one applies), the pass rule (fixed in code before the "
        "measurement) and the verdict. Sub-tests that must also hold are listed under the table.",
        "",
        "| id | statistic | value | rule | verdict | figure |",
        "|---|---|---|---|---|---|",
    ]
    for v in verdicts:
        unc = "" if math.isnan(v.uncertainty) else f" +- {_fmt(v.uncertainty)}"
        verdict = "ERROR" if v.error else ("PASS" if v.passed else "FAIL")
        fig = f"[{v.figure}]({v.figure})" if v.figure else "-"
        stat = v.statistic.replace("|", "\\|")
        lines.append(f"| `{v.id}` | {stat} | {_fmt(v.value)}{unc} | {v.comparison} {_fmt(v.threshold)} | "
                     f"**{verdict}** | {fig} |")
    lines += ["", "## Claims in detail", ""]
    for v in verdicts:
        verdict = "ERROR" if v.error else ("PASS" if v.passed else "FAIL")
        lines += [f"### `{v.id}` - {verdict}", "", f"*Claim:* {v.claim}", "",
                  f"*Statistic:* {v.statistic} = **{_fmt(v.value)}**"
                  + ("" if math.isnan(v.uncertainty) else f" (+- {_fmt(v.uncertainty)})")
                  + f"; passes if {v.comparison} {_fmt(v.threshold)}.", ""]
        if v.error:
            lines += [f"*Error:* `{v.error}`", ""]
        for name, c in v.checks.items():
            mark = "pass" if c["passed"] else "FAIL"
            lines.append(f"- check `{name}`: {c.get('description', '')} = {_fmt(c['value'])} "
                         f"(rule {c['comparison']} {_fmt(c['threshold'])}): {mark}")
        if v.checks:
            lines.append("")
        scalars = {k: x for k, x in v.details.items() if isinstance(x, (int, float, str)) and not isinstance(x, bool)}
        if scalars:
            lines += ["Numbers: " + "; ".join(f"{k} = {_fmt(x)}" for k, x in scalars.items()), ""]
        if v.figure:
            lines += [f"![{v.id}]({v.figure})", ""]
    env = config.get("environment", {})
    lines += ["## Configuration", "", "```json", json.dumps({k: c for k, c in config.items() if k != "environment"},
                                                            indent=2, default=str), "```", "",
              "## Versions", "", "```json", json.dumps(env, indent=2), "```", ""]
    write_text_atomic(out / "report.md", "\n".join(lines))
