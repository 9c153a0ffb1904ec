"""``possm demo``: simulated array -> ``possm-lsl`` -> live R2, latency and a plot (see
:mod:`possm_plugin.realtime.demo`)."""

from __future__ import annotations

import argparse
import json

from possm_plugin.cli.formatter import HelpFormatter

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "demo",
        help="live demo: simulated spikes over LSL -> possm-lsl -> R2, latency, plot",
        description="Start a simulated spike source and `possm-lsl --inlet spikes` as processes, decode live for "
        "--duration seconds, then print the R2 against the true velocity, the latencies and the counts, and write "
        "DIR/demo.png and DIR/demo.json.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--duration", type=float, default=20.0, help="seconds of live decoding")
    p.add_argument("--out", default="possm-demo", help="directory for demo.png and demo.json")
    p.add_argument("--checkpoint", default=None, help="checkpoint for the decoder (default: the bundled one)")
    p.add_argument("--form", choices=["events", "binned"], default="events", help="spike events or binned counts on the wire")
    p.add_argument("--bin-rate", type=float, default=100.0, help="bins per second of --form binned")
    p.add_argument("--name", default="spikes", help="LSL name of the simulated spike stream")
    p.add_argument("--labels-name", default="velocity", help="LSL name of the true-velocity stream")
    p.add_argument("--outlet", default="possm", help="LSL name of the decoder's outlet")
    p.add_argument("--start-timeout", type=float, default=90.0, help="seconds allowed for the processes to start")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)
    return p


def _quiet_liblsl() -> None:
    """liblsl's own log (config loaded, "transmission broke off" when the demo's streams close) is noise
    in a demo: unless the user points LSLAPICFG at a config of their own, keep only its fatal errors
    (for this process and the ones it starts). Must run before the first liblsl call."""
    import atexit
    import contextlib
    import os
    import tempfile

    if os.environ.get("LSLAPICFG"):
        return
    fd, path = tempfile.mkstemp(prefix="possm-demo-lsl-", suffix=".cfg")
    with os.fdopen(fd, "w") as f:
        f.write("[log]\nlevel = -3\n")
    os.environ["LSLAPICFG"] = path

    def _remove() -> None:
        with contextlib.suppress(OSError):
            os.unlink(path)

    atexit.register(_remove)


def run(args: argparse.Namespace) -> int:
    _quiet_liblsl()
    from possm_plugin.realtime.demo import format_report, run_demo

    if not args.duration > 0:
        from possm_plugin.errors import ConfigError

        raise ConfigError(f"--duration {args.duration!r} must be a positive number of seconds")
    report = run_demo(duration=args.duration, out_dir=args.out, checkpoint=args.checkpoint, form=args.form, bin_rate=args.bin_rate, name=args.name,
                      labels_name=args.labels_name, outlet=args.outlet, start_timeout=args.start_timeout)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
