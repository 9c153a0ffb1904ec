"""Helpers shared by the benchmarks: job scheduling, machine description, torch workers."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path


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


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _l3_cache() -> str | None:
    try:
        return Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
    except OSError:
        return None


def machine_info() -> dict:
    """What a latency figure depends on besides the code: the CPU, its cores, the load on them and the
    versions of the numerical libraries. Recorded in every benchmark JSON committed to ``docs/``."""
    import numpy

    info = {"cpu": _cpu_model(), "cores": os.cpu_count(), "l3_cache": _l3_cache(),
            "python": f"{platform.python_implementation()} {platform.python_version()}", "numpy": numpy.__version__,
            "load_average": [round(x, 2) for x in os.getloadavg()]}
    for mod in ("torch", "numba"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = None
    return info


def run_info(script: str, argv: list[str] | None) -> dict:
    """The command that produced a result (to rerun it), the day, and :func:`machine_info`."""
    import datetime
    import shlex

    args = sys.argv[1:] if argv is None else list(argv)
    return {"command": shlex.join(["python", script, *args]), "date": datetime.date.today().isoformat(),
            "machine": machine_info()}


def write_json(result: dict, out: str | None) -> None:
    """``result`` as one JSON object: on stdout, or (``--out PATH``) into that file, indented, for committing."""
    if out is None:
        print(json.dumps(result))
        return
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}", file=sys.stderr)


def run_jobs(todo: list[tuple], run_job, suite_name: str, *, jobs: int, threads: int, init_worker, log, total: int,
             then=None, keys: tuple[str, ...] = ("r2", "epochs")) -> tuple[dict, dict]:
    """Run benchmark jobs ``(kind, args, key)`` as ``run_job(kind, suite_name, args) -> (result, wall, cpu)``,
    in ``jobs`` spawned worker processes (``init_worker(threads)`` in each) or in this one for ``jobs <= 1``.
    ``then(key, result)`` returns the jobs that become possible once ``key`` is done (e.g. those that need
    a pretrained checkpoint). Returns ``({key: result}, {"cpu_s", "jobs": {key: wall/cpu}})``."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from multiprocessing import get_context

    results: dict[tuple, dict] = {}
    timing: dict = {"cpu_s": 0.0, "jobs": {}}

    def record(key, out, wall, cpu) -> list[tuple]:
        results[key] = out
        timing["cpu_s"] += cpu
        name = "/".join(map(str, key))
        timing["jobs"][name] = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}
        brief = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items() if k in keys}
        log(f"[{len(results):3d}/{total}] {name:<44} {brief}  ({wall:.1f} s wall, {cpu:.1f} s cpu)")
        return list(then(key, out)) if then is not None else []

    if jobs <= 1:
        init_worker(threads)
        queue = list(todo)
        while queue:
            kind, args, key = queue.pop(0)
            queue.extend(record(key, *run_job(kind, suite_name, args)))
        return results, timing
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"), initializer=init_worker,
                             initargs=(threads,)) as pool:
        pending = {pool.submit(run_job, kind, suite_name, args): key for kind, args, key in todo}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                key = pending.pop(fut)
                for kind, args, k2 in record(key, *fut.result()):
                    pending[pool.submit(run_job, kind, suite_name, args)] = k2
    return results, timing


def init_torch_worker(threads: int) -> None:
    """A job worker's torch: ``threads`` intra-op threads, one inter-op thread."""
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
