"""``possm``: the command group. One module per subcommand under :mod:`possm_plugin.cli`; each
exposes ``add_parser(subparsers)`` (which sets ``func``) so tests can call :func:`main` directly."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from possm_plugin.cli.formatter import HelpFormatter
from possm_plugin.errors import PossmError

__all__ = ["build_parser", "main", "SUBCOMMANDS"]

# subcommand -> module (relative to this package)
SUBCOMMANDS = {
    "simulate": ".simulate",
    "train": ".train",
    "finetune": ".finetune",
    "evaluate": ".evaluate",
    "info": ".info",
    "plugins": ".plugins",
    "demo": ".demo",
    "pretrain": ".pretrain",
    "compile": ".compile",
    "import": ".import_data",
    "closed-loop": ".closed_loop",
}


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("possm-plugin")
    except Exception:
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="possm",
        description="POSSM neural decoding: simulate data, train, fine-tune, evaluate, inspect checkpoints and plugins.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="logging level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for _name, mod in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(mod, __package__)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith(__package__):
                continue  # subcommand not built in this version
            raise
        module.add_parser(sub)
    return parser


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    setup_logging(args.log_level)
    try:
        return int(args.func(args) or 0)
    except PossmError as exc:
        print(f"possm {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"possm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
