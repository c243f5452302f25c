"""The report: ``report.md`` (the regime premises measured at the branch point, a table of verdicts, linked
figures, config and versions) and ``verdicts.json`` (a list of verdict objects; a real-network verdict's
``premises`` hold its premises, :mod:`validation.real.premises`). Files are written atomically
(:mod:`sgdtraj.files`: temporary file in the same directory, fsync, ``os.replace``; mode 0644 under the usual
umask)."""
from __future__ import annotations

import json
import math
from pathlib import Path

from sgdtraj.files import atomic_write_text, write_json

from .verdict import FAIL, NOT_DECIDED, PASS, STATES, Verdict, decide

__all__ = ["write_report", "write_json_atomic", "verdict_text", "failing_checks", "state_counts",
           "counts_text"]


def write_json_atomic(path: Path, obj) -> None:
    """Atomic JSON; infinities stay readable as ``"inf"`` / ``"-inf"``, NaN is ``null``."""
    write_json(path, obj, nonfinite="string")


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
    git = env.get("git", "unknown")
    return f"{git} (uncommitted changes)" if env.get("git_dirty") else str(git)


def premise_note(v: Verdict) -> str:
    """``" (premise not met: plateau, ...)"`` next to a verdict whose premises do not all hold, else ``""``."""
    from .real.premises import not_met

    missing = not_met(v)
    return f" (premise not met: {', '.join(missing)})" if missing else ""


def state_counts(verdicts) -> dict[str, int]:
    """``{"PASS": n, "FAIL": n, "NOT DECIDED": n}`` (errors count as NOT DECIDED)."""
    return {s: sum(v.state == s for v in verdicts) for s in STATES}


def counts_text(verdicts) -> str:
    """``"10 PASS, 3 FAIL, 3 NOT DECIDED of 16 claims"``."""
    c = state_counts(verdicts)
    return f"{c[PASS]} PASS, {c[FAIL]} FAIL, {c[NOT_DECIDED]} NOT DECIDED of {len(verdicts)} claims"


def premise_lines(v: Verdict) -> list[str]:
    """Markdown bullet lines of a verdict's premises (for its detail section)."""
    from .real.premises import of_verdict

    lines = []
    for p in of_verdict(v):
        conds = "; ".join(f"{c.description} = {_fmt(c.value)} (rule {c.comparison} {_fmt(c.threshold)})"
                          for c in p.conditions)
        lines.append(f"- premise `{p.id}` {p.title}: {conds}: {'met' if p.met else '**not met**'}")
    return lines + [""] if lines else []


def regime_section(verdicts: list[Verdict]) -> list[str]:
    """Markdown lines: every premise carried by the verdicts (value, rule, met / not met), before any verdict."""
    from .real.premises import ALL_REAL, of_verdict

    seen: dict[str, tuple] = {}
    for v in verdicts:
        for p in of_verdict(v):
            seen.setdefault(p.id, (p, []))[1].append(v.id)
    if not seen:
        return []
    step = next((p.details.get("branch_step") for p, _ in seen.values() if p.id == "plateau"), None)
    rep_steps = sorted({r["step"] for v in verdicts for r in (v.details or {}).get("replicates") or []
                        if isinstance(r, dict) and "step" in r})
    where = f" (step {step})" if step is not None else ""
    if rep_steps:
        where = (f"s of the replicates (steps {', '.join(map(str, rep_steps))}; each value is the worst replicate's, "
                 f"the numbers below are replicate 0's)")
    lines = ["## Regime at the branch point", "",
             f"The real-network claims test the paper only where the trajectory is in the paper's regime. Measured "
             f"at the branch point{where} with rules fixed in code before "
             f"measuring (`validation/real/premises.py`); a claim whose premise is not met is NOT DECIDED: its "
             f"value is still shown below, with the premise that fails.", "",
             "| premise | applies to | measured | rule | status |", "|---|---|---|---|---|"]
    for p, claims in seen.values():
        applies = p.applies_to
        if p.applies_to == ALL_REAL and len(claims) > 1:
            applies = f"{ALL_REAL} ({len(claims)})"
        for i, c in enumerate(p.conditions):
            desc = c.description.replace("|", "\\|")
            title = p.title if i == 0 else ""
            status = ("met" if p.met else "**not met**") if i == len(p.conditions) - 1 else ""
            lines.append(f"| {title} | {applies if i == 0 else ''} | {desc} = {_fmt(c.value)} | "
                         f"{c.comparison} {_fmt(c.threshold)} ({'holds' if c.met else 'fails'}) | {status} |")
    lines.append("")
    plat = seen.get("plateau")
    if plat:
        d = plat[0].details
        lines += [f"Plateau: mean fresh-batch training loss {_fmt(d.get('prev_quarter_loss'))} -> "
                  f"{_fmt(d.get('last_quarter_loss'))} (ratio {_fmt(d.get('ratio'))}) over the last two quarters of "
                  f"{d.get('steps')} updates.", ""]
    mem = seen.get("not-memorised")
    if mem:
        d = mem[0].details
        lines += [f"Memorisation at step {d.get('step')}: held-out {_fmt(d.get('heldout_loss'))} vs fresh training "
                  f"{_fmt(d.get('fresh_train_loss'))} (eval-mode BN: {_fmt(d.get('heldout_loss_eval_bn'))} vs "
                  f"{_fmt(d.get('fresh_train_loss_eval_bn'))}); clean training subset loss "
                  f"{_fmt(d.get('clean_train_loss'))}, validation loss {_fmt(d.get('clean_val_loss'))} (accuracy "
                  f"{_fmt(d.get('clean_val_acc'))}).", ""]
    return lines


def replicate_lines(v: Verdict) -> list[str]:
    """Markdown lines: the interval and one row per replicate (branch step, seed, value, state, what decided it,
    figure) of a verdict combined from replicates (:func:`validation.real.replication.combine`)."""
    reps = v.details.get("replicates")
    iv = v.details.get("interval")
    if not reps or not iv:
        return []
    scale = "geometric mean" if iv.get("scale") == "log" else "mean"
    lines = [f"Replicates: {iv.get('n')} ({scale} {_fmt(v.value)}, {iv.get('confidence', 0.95):.0%} t interval "
             f"[{_fmt(iv.get('low'))}, {_fmt(iv.get('high'))}], {iv.get('dof')} degrees of freedom; the state is "
             f"decided on the interval).", "",
             "| replicate | branch step | seed | value | state | premises not met | figure |",
             "|---|---|---|---|---|---|---|"]
    for r in reps:
        fig = f"[{r['figure']}]({r['figure']})" if r.get("figure") else "-"
        unmet = ", ".join(r.get("unmet_premises") or []) or "-"
        state = "ERROR: " + str(r["error"]) if r.get("error") else r.get("state")
        lines.append(f"| {r['index']} | {r['step']} | {r['seed']} | {_fmt(r.get('value'))} | {state} | {unmet} | "
                     f"{fig} |")
    return lines + [""]


def _rule_text(c: dict) -> str:
    return f"{_fmt(c['value'])}, rule {c['comparison']} {_fmt(c['threshold'])}"


def failing_checks(v: Verdict, markdown: bool = True) -> list[str]:
    """``check NAME = VALUE, rule OP THRESHOLD`` for every failing sub-check of ``v``."""
    q = "`" if markdown else ""
    return [f"check {q}{name}{q} = {_rule_text(c)}" for name, c in v.checks.items() if not c["passed"]]


def unmet_premises_text(v: Verdict, markdown: bool = True) -> list[str]:
    """``premise NAME = VALUE, rule OP THRESHOLD`` for every premise of ``v`` that is not met."""
    q = "`" if markdown else ""
    return [f"premise {q}{p['name']}{q} = {_fmt(p['value'])}, rule {p['rule']}" for p in v.unmet_premises()]


def verdict_text(v: Verdict, markdown: bool = True) -> str:
    """The state (``PASS`` / ``FAIL`` / ``NOT DECIDED``, or ``ERROR`` for a claim that could not be evaluated)
    and what decided it: NOT DECIDED names the premises not met; FAIL names the failing sub-checks with their
    value and rule (``FAIL: check loss_gap = 0.62, rule < 0.15``; when the statistic itself fails, the failing
    sub-checks follow ``also``)."""
    def bold(w):
        return f"**{w}**" if markdown else w

    if v.error:
        return bold("ERROR")
    if v.state == NOT_DECIDED:
        return f"{bold(NOT_DECIDED)}: {'; '.join(unmet_premises_text(v, markdown))}"
    failing = failing_checks(v, markdown)
    if v.passed or not failing:
        return bold(v.state)
    main_ok = not math.isnan(v.value) and decide(v.value, v.comparison, v.threshold)
    return f"{bold(v.state)}: {'; '.join(failing)}" if main_ok else f"{bold(v.state)}; also {'; '.join(failing)}"


def write_report(out: Path, verdicts: list[Verdict], config: dict, kept=()) -> None:
    """Write ``out/verdicts.json`` and ``out/report.md``. ``kept``: ids of verdicts taken over from an earlier
    run into the same directory (named in the report)."""
    out = Path(out)
    write_json_atomic(out / "verdicts.json", [v.to_dict() for v in verdicts])
    lines = [
        "# Reproduction report: Training trajectories, mini-batch losses and the curious role of the learning rate",
        "",
        f"{counts_text(verdicts)}. Mode: `{config.get('mode')}`. "
        f"Git: `{_git_text(config.get('environment', {}))}`.",
        "",
        *regime_section(verdicts),
        "Each row: the claim's id, the statistic that tests it, the measured value (with its standard "
        "error or CI half-width where one applies; a real-network value is the mean over independent replicates "
        "with the half-width of its 95 % t interval, and its state is decided on that interval), the pass rule "
        "(fixed in code before the measurement) and the state. PASS: every premise met, the statistic and all "
        "sub-checks pass. FAIL: "
        "every premise met, the statistic or a sub-check fails (a finding; the failing sub-check is named "
        "with its value and rule). NOT DECIDED: a premise of the claim is not met (named with its value "
        "and rule); the value is shown but decides nothing. Sub-checks and premises are listed under the table.",
        "",
        "| id | statistic | value | rule | verdict | figure |",
        "|---|---|---|---|---|---|",
    ]
    for v in verdicts:
        unc = "" if math.isnan(v.uncertainty) else f" +- {_fmt(v.uncertainty)}"
        reps = v.details.get("replicate_values")
        if reps:
            unc += f" ({len(reps)} replicates: {', '.join(_fmt(float(x)) for x in reps)})"
        fig = f"[{v.figure}]({v.figure})" if v.figure else "-"
        stat = v.statistic.replace("|", "\\|")
        verdict = verdict_text(v).replace("|", "\\|")
        lines.append(f"| `{v.id}` | {stat} | {_fmt(v.value)}{unc} | {v.comparison} {_fmt(v.threshold)} | "
                     f"{verdict} | {fig} |")
    from .real.controls import controls_table, read_controls

    controls = read_controls(out / "controls")
    if controls:
        lines += ["", "## Controls", "",
                  "Each real-network claim's analysis run unchanged on the paper's linear model where the claim is "
                  "true by construction (positive: expected PASS) and where it is false (negative: expected FAIL), "
                  "each from independent replicates (`validation/real/controls.py`; `controls/controls.json`).", "",
                  *controls_table(controls)]
    if kept:
        lines += ["", f"Verdicts taken over from an earlier run into this directory (not re-evaluated by the "
                      f"last command): {', '.join(f'`{i}`' for i in kept)}."]
    lines += ["", "## Claims in detail", ""]
    for v in verdicts:
        verdict = "ERROR" if v.error else v.state
        lines += [f"### `{v.id}` - {verdict}{premise_note(v)}", "", f"*Claim:* {v.claim}", "",
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
        lines += premise_lines(v)
        lines += replicate_lines(v)
        quote = v.details.get("quote") or next((r["details"].get("quote") for r in v.details.get("replicates") or []
                                                if isinstance(r.get("details"), dict)), None)
        if isinstance(quote, str):
            lines += [f"*The paper:* \"{quote}\"", ""]
        scalars = {k: x for k, x in v.details.items()
                   if isinstance(x, (int, float, str)) and not isinstance(x, bool) and k != "quote"}
        if scalars:
            lines += ["Numbers: " + "; ".join(f"{k} = {_fmt(x)}" for k, x in scalars.items()), ""]
        if v.figure:
            lines += [f"![{v.id}]({v.figure})", ""]
    env = config.get("environment", {})
    lines += ["## Configuration", "", "```json", json.dumps({k: c for k, c in config.items() if k != "environment"},
                                                            indent=2, default=str), "```", "",
              "## Versions", "", "```json", json.dumps(env, indent=2), "```", ""]
    atomic_write_text(out / "report.md", "\n".join(lines))
