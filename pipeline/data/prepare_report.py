"""Prepare's report: report.json (every finding) and report.md (a summary a person reads), and the
hints a failed run prints."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pipeline.core.data_config import FINDING_ACTIONS

if TYPE_CHECKING:
    pass

from pipeline.data.validation import HINTS, FindingLog

MARKDOWN_LIMIT = 50  # findings listed per kind in report.md (report.json has all)


def report_payload(log: FindingLog, status: str, summary: dict[str, Any]) -> dict[str, Any]:
    kinds = {
        kind: {"count": count, "action": getattr(log.policy, kind), "hint": HINTS[kind]}
        for kind, count in log.counts().items()
    }
    findings = [r.to_dict() for r in log.records]
    return {"status": status, "summary": summary, "kinds": kinds, "findings": findings}


def render_markdown(payload: dict[str, Any]) -> str:
    summary = payload["summary"]
    lines = [f"# Dataset validation report: {payload['status']}", ""]
    lines += [f"- {key}: {value}" for key, value in summary.items() if not isinstance(value, dict)]
    lines += split_table(summary.get("splits", {}))
    lines += ["", "| kind | count | action | what to do |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['count']} | {v['action']} | {v['hint']} |" for k, v in payload["kinds"].items()]
    if not payload["kinds"]:
        lines.append("| (none) | 0 | | |")
    for kind in payload["kinds"]:
        rows = [f for f in payload["findings"] if f["kind"] == kind]
        lines += ["", f"## {kind} ({len(rows)}, {rows[0]['action']})", ""]
        for row in rows[:MARKDOWN_LIMIT]:
            at = f"{row['file']}:{row['line']}" if row["line"] else row["file"]
            lines.append(f"- `{at}`: {row['message']}")
        if len(rows) > MARKDOWN_LIMIT:
            lines.append(f"- ... and {len(rows) - MARKDOWN_LIMIT} more (see report.json)")
    return "\n".join(lines) + "\n"


def split_table(splits: dict[str, dict[str, Any]]) -> list[str]:
    if not splits:
        return []
    names = list(next(iter(splits.values()))["per_class"])
    lines = ["", f"| split | images | backgrounds | boxes | {' | '.join(names)} |"]
    lines.append("|---" * (4 + len(names)) + "|")
    for split, c in splits.items():
        per_class = " | ".join(str(c["per_class"][n]) for n in names)
        lines.append(f"| {split} | {c['images']} | {c['backgrounds']} | {c['boxes']} | {per_class} |")
    return lines


# The fix that keeps the boxes, offered before the policy actions (which would delete them).
KEEPING_FIXES = {
    "unknown_class": "add the class to classes.names or map it: -S '+data.class_map.<name>=<target>'",
    "class_out_of_range": "add the missing classes to classes.names or fix the ids",
}


def policy_choices(kinds: Iterable[str]) -> str:
    """What the user can do about error findings of `kinds`: the fix that keeps the data where there is
    one, then only the policy actions that kind accepts (FINDING_ACTIONS), so no advice is refused."""
    advice = []
    for kind in sorted(set(kinds)):
        accepted = "|".join(action for action in FINDING_ACTIONS[kind] if action != "error")
        policy = f"data.validation.policy.{kind}={accepted}"
        advice.append(
            f"{kind}: {KEEPING_FIXES[kind]}, or {policy}" if kind in KEEPING_FIXES else f"{kind}: {policy}"
        )
    return "; ".join(advice)


def first_errors(log: FindingLog, limit: int = 3) -> str:
    shown = []
    for record in log.errors()[:limit]:
        f = record.finding
        at = f"{f.file}:{f.line}" if f.line else f.file
        shown.append(f"{f.kind} at {at}: {f.message}")
    return "; ".join(shown)
