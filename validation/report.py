"""The report: ``report.md`` (a table of verdicts, linked figures, config and versions) and
``verdicts.json`` (a list of verdict objects). Files are written atomically (:mod:`quadsgd._files`: temporary
file in the same directory, fsync, ``os.replace``; mode 0644 under the usual umask)."""
from __future__ import annotations

import json
import math
from pathlib import Path

from quadsgd import _files

from .verdict import Verdict

__all__ = ["write_report", "write_json_atomic", "environment"]


def write_text_atomic(path: Path, text: str) -> None:
    _files.atomic_write_text(path, text)


def write_json_atomic(path: Path, obj) -> None:
    """Atomic JSON; infinities stay readable as ``"inf"`` / ``"-inf"``, NaN is ``null``."""
    _files.write_json(path, obj, nonfinite="string")


def environment() -> dict:
    """:func:`quadsgd._files.environment` (``versions``, ``git``, ``git_dirty``, ``platform``) plus
    ``git_hash``, an alias of ``git`` kept for readers of earlier reports."""
    env = _files.environment()
    env["git_hash"] = env["git"]
    return env


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


def _git_text(env: dict) -> str:
    git = env.get("git", env.get("git_hash", "unknown"))
    return f"{git} (uncommitted changes)" if env.get("git_dirty") else str(git)


def write_report(out: Path, verdicts: list[Verdict], config: dict) -> None:
    """Write ``out/verdicts.json`` and ``out/report.md``."""
    out = Path(out)
    write_json_atomic(out / "verdicts.json", [v.to_dict() for v in verdicts])
    n_pass = sum(v.passed for v in verdicts)
    lines = [
        "# Reproduction report: Training trajectories, mini-batch losses and the curious role of the learning rate",
        "",
        f"{n_pass} of {len(verdicts)} claims verified. Mode: `{config.get('mode')}`. "
        f"Git: `{_git_text(config.get('environment', {}))}`.",
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
