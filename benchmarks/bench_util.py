"""Helpers shared by the latency benchmarks."""

from __future__ import annotations

import shutil
import subprocess
import sys


def rt_prefix(priority: int | None) -> list[str]:
    """``chrt -f N`` (SCHED_FIFO, as BRAND's supervisor runs nodes with ``run_priority``) when allowed,
    else nothing (and a note on stderr)."""
    if not priority:
        return []
    chrt = shutil.which("chrt")
    if chrt is None or subprocess.run([chrt, "-f", str(priority), "true"], capture_output=True).returncode != 0:
        print(f"note: cannot use real-time priority {priority} here (chrt missing or not permitted); running without", file=sys.stderr)
        return []
    return [chrt, "-f", str(priority)]
