"""The metrics BCI labs report for a cursor task, from the task's trial records.

- ``success_rate``: successful trials / all trials.
- ``time_to_target_s``: target onset -> the start (``enter``) of the hold that succeeded, successful
  trials only; ``median`` and ``p90``. The hold itself is not counted.
- ``dial_in_s``: median over successful trials of first entry -> start of the successful hold (0 when
  the first entry was held).
- ``path_efficiency``: mean over successful trials of the straight distance from the cursor at onset
  to where the successful hold began, divided by the path the cursor travelled between them (1 is a
  straight line).
- ``itr_bps``: Fitts' information transfer rate, bits/s: the sum over successful trials of the index of
  difficulty ``log2(1 + D / W)`` (D: distance from the cursor at onset to the target centre, W: target
  diameter) divided by the total time of all trials (onset to end, failures and holds included).

Metrics that have no successful trial to measure are None.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["trial_metrics", "summarize", "METRIC_KEYS", "metrics_table", "fmt"]

METRIC_KEYS = ("success_rate", "time_to_target_s", "dial_in_s", "path_efficiency", "itr_bps")


def trial_metrics(trials, *, target_radius_cm: float) -> list[dict]:
    """Per finished trial: ``success``, ``duration_s``, ``time_to_target_s``, ``dial_in_s``,
    ``path_efficiency``, ``bits`` (index of difficulty if successful, else 0), ``reentries``."""
    out = []
    for tr in trials:
        if tr.outcome == "running":
            continue
        ok = tr.outcome == "success"
        d = float(np.linalg.norm(tr.target - tr.start_pos))
        rec = {"success": ok, "duration_s": tr.end_s - tr.onset_s, "reentries": tr.reentries, "breaks": tr.breaks,
               "time_to_target_s": None, "dial_in_s": None, "path_efficiency": None, "bits": 0.0}
        if ok:
            rec["time_to_target_s"] = tr.hold_start_s - tr.onset_s
            rec["dial_in_s"] = tr.hold_start_s - tr.first_entry_s
            straight = float(np.linalg.norm(tr.hold_pos - tr.start_pos))
            rec["path_efficiency"] = 1.0 if tr.path_cm <= 1e-9 else min(1.0, straight / tr.path_cm)
            rec["bits"] = math.log2(1.0 + d / (2.0 * target_radius_cm))
        out.append(rec)
    return out


def _median(xs):
    return float(np.median(xs)) if len(xs) else None


def summarize(per_trial: list[dict]) -> dict:
    """The issue's metrics over trials (possibly pooled over runs): the keys of :data:`METRIC_KEYS`."""
    n = len(per_trial)
    ok = [r for r in per_trial if r["success"]]
    ttt = [r["time_to_target_s"] for r in ok]
    total = sum(r["duration_s"] for r in per_trial)
    return {
        "success_rate": len(ok) / n if n else None,
        "time_to_target_s": {"median": _median(ttt), "p90": float(np.percentile(ttt, 90)) if ttt else None},
        "dial_in_s": _median([r["dial_in_s"] for r in ok]),
        "path_efficiency": float(np.mean([r["path_efficiency"] for r in ok])) if ok else None,
        "itr_bps": sum(r["bits"] for r in ok) / total if total > 0 else None,
    }


def fmt(x, spec: str = "{:.2f}") -> str:
    """A number for a table, ``-`` for a metric that does not exist (e.g. no successful trial)."""
    return "-" if x is None else spec.format(x)


def metrics_table(report: dict) -> str:
    """The metrics of every decoder of a report (``{"decoders": {NAME: metrics}}``) as a Markdown table."""
    rows = ["| decoder | success rate | time to target median / p90 (s) | dial-in (s) | path efficiency | Fitts ITR (bits/s) |",
            "| --- | --- | --- | --- | --- | --- |"]
    for name, m in report["decoders"].items():
        t = m["time_to_target_s"]
        rows.append(f"| `{name}` | {fmt(m['success_rate'])} | {fmt(t['median'])} / {fmt(t['p90'])} | {fmt(m['dial_in_s'])} | "
                    f"{fmt(m['path_efficiency'])} | {fmt(m['itr_bps'])} |")
    return "\n".join(rows)
