"""``possm compile [--json]``: compile the CPU inference step now (or check that it is cached).

The compiled engine (:class:`~possm_plugin.engines.numba_step.NumbaEngine`) compiles on its first use after an
install or upgrade (~10-30 s for the three built-in backbones) and Numba keeps the result on disk. A
decoder compiles when it is built, never on a live chunk, but a node's first start then takes that
long: run this once when deploying (``scripts/setup.sh`` does) so that every node starts in under a
second.
"""

from __future__ import annotations

import argparse
import json

from possm_plugin.cli.formatter import HelpFormatter

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "compile",
        help="compile the CPU inference step ahead of time (cached on disk)",
        description="Compile the Numba inference step of every built-in backbone, or load it from Numba's cache, "
        "and say where the cache is. Run once after installing, so that decoder nodes start at once.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from possm_plugin import engines

    error = engines.numba_error()
    if error is not None:
        doc = {"available": False, "error": error, "seconds": 0.0, "cache": None}
    else:
        from possm_plugin.engines.numba_step import cache_directory, warm_up

        doc = {"available": True, "error": None, "seconds": round(warm_up(), 3), "cache": cache_directory()}
    if args.json:
        print(json.dumps(doc))
    elif not doc["available"]:
        print(f"possm compile: Numba is not available ({doc['error']}); decoders use the torch engine")
    else:
        print(f"possm compile: inference step ready in {doc['seconds']:.1f} s (cache: {doc['cache'] or 'none: compiled per process'})")
    return 0 if doc["available"] else 1
