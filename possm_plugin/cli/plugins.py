"""``possm plugins``: every discovered hook implementation, with its distribution and version, and
the plugins that failed to load."""

from __future__ import annotations

import argparse
import json
import os
import sys

from possm_plugin.cli.formatter import HelpFormatter, text_table

__all__ = ["add_parser", "collect", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "plugins",
        help="list plugins (backbones, sources, sinks, decoder nodes) and failures",
        description=(
            "List every hook implementation found in the 'possm_plugin' entry-point group, with the "
            "distribution and version providing it, and every plugin that failed to load. "
            "POSSM_PLUGINS (comma list of entry-point or distribution names, 'builtin' or 'none') restricts what loads."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    p.add_argument("--strict", action="store_true", help="exit with status 1 if any plugin failed to load")
    p.set_defaults(func=run)
    return p


def collect() -> dict:
    """What ``possm plugins --json`` prints."""
    from possm_plugin.plugins import manager

    descriptions: dict[tuple[str, str], str] = {}
    rows = manager.list_plugins()
    for kind in manager.HOOKS:
        for e in manager.list_entries(kind):
            descriptions[(kind, e.name)] = e.description
    return {
        "restriction": os.environ.get(manager.ENV_VAR) or None,
        "plugins": [
            {**r._asdict(), "description": descriptions.get((r.hook, r.name), "") if r.name else ""} for r in rows
        ],
        "failures": [vars(f).copy() for f in manager.list_failures()],
        "skipped": [vars(f).copy() for f in manager.list_skipped()],
    }


def run(args: argparse.Namespace) -> int:
    doc = collect()
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        rows = [["HOOK", "NAME", "PLUGIN", "DISTRIBUTION", "VERSION", "DESCRIPTION"]]
        for r in doc["plugins"]:
            rows.append([r["hook"], r["name"] or "-", r["plugin"], r["distribution"] or "-", r["version"] or "-", r["description"]])
        print(text_table(rows))
        if doc["restriction"]:
            print(f"\nPOSSM_PLUGINS={doc['restriction']!r}; not loaded: {', '.join(s['plugin'] for s in doc['skipped']) or 'nothing'}")
        if doc["failures"]:
            print("\nfailed (skipped):")
            for f in doc["failures"]:
                where = f" from {f['distribution']} {f['version']}" if f["distribution"] else ""
                print(f"  {f['plugin']} ({f['target']}{where}): {f['error']}")
    return 1 if args.strict and doc["failures"] else 0
