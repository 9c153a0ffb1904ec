"""``possm-brand``: run the POSSM decoder as a BRAND node (:class:`~possm_plugin.adapters.brand.BrandNode`).

BRAND's supervisor starts it as ``possm-brand -n NICKNAME -i HOST -p PORT [-s SOCKET]``; the node reads
its parameters from ``supergraph_stream`` (see :mod:`possm_plugin.adapters.brand` and docs/brand.md).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import signal
import sys
import threading

from possm_plugin.adapters.brand import BrandNode
from possm_plugin.adapters.redis_io import RedisOptions, RedisUnavailable
from possm_plugin.cli.formatter import HelpFormatter
from possm_plugin.errors import PossmError, StreamError

__all__ = ["build_parser", "main"]

log = logging.getLogger("possm_plugin.adapters.brand")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="possm-brand",
        description="POSSM decoder as a BRAND node: parameters from supergraph_stream, spikes in, predictions out.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("-n", "--nickname", required=True, help="the node's nickname in the graph")
    p.add_argument("-i", "--redis_host", "--host", dest="host", default="127.0.0.1", help="Redis host")
    p.add_argument("-p", "--redis_port", "--port", dest="port", type=int, default=6379, help="Redis port")
    p.add_argument("-s", "--redis_socket", "--socket", dest="socket", default=None, help="Redis unix socket (instead of host/port)")
    p.add_argument("--username", default=None, help="Redis ACL user")
    p.add_argument("--password", default=None, help="Redis password (better: the POSSM_REDIS_PASSWORD environment variable)")
    p.add_argument("--tls", action="store_true", help="connect with TLS")
    p.add_argument("--tls-ca-cert", default=None, help="CA bundle to verify the server with")
    p.add_argument("--tls-cert", default=None, help="client certificate")
    p.add_argument("--tls-key", default=None, help="client key")
    p.add_argument("--connect-timeout", type=float, default=10.0, help="seconds to wait for Redis at start-up")
    p.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="override the graph's 'log' parameter")
    return p


def _setup_logging(nickname: str, level: str) -> tuple[logging.Handler, int]:
    """Attach a stderr handler in BRAND's format to the package logger; returns it and the old level."""
    pkg = logging.getLogger("possm_plugin")
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter(f"[{nickname}] %(levelname)s: %(message)s"))
    old = pkg.level
    pkg.addHandler(h)
    pkg.setLevel(getattr(logging, str(level).upper(), logging.INFO))
    return h, old


def main(argv: list[str] | None = None) -> int:
    """Run the node; returns the exit status (0: stopped by a signal, 1: error)."""
    args = build_parser().parse_args(argv)
    handler, old_level = _setup_logging(args.nickname, args.log_level or "INFO")
    options = RedisOptions(
        host=args.host, port=args.port, socket=args.socket, username=args.username, password=args.password,
        ssl=args.tls, ssl_ca_certs=args.tls_ca_cert, ssl_certfile=args.tls_cert, ssl_keyfile=args.tls_key,
    )
    stop = threading.Event()

    def on_signal(signum, frame):  # noqa: ARG001
        log.info("%s received; stopping", signal.Signals(signum).name)
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    node = BrandNode(args.nickname, options, stop=stop)
    try:
        try:
            node.connect(args.connect_timeout)
        except StreamError as exc:
            log.error("%s", exc)
            return 1
        try:
            params = node.load_parameters()
            if args.log_level is None:
                logging.getLogger("possm_plugin").setLevel(getattr(logging, params.log.upper(), logging.INFO))
            node.setup(params)
        except (PossmError, RedisUnavailable, ImportError) as exc:
            log.error("%s", exc)
            node.post_state("error", code=1, message=str(exc))
            return 1
        gc.collect()
        gc.freeze()  # the model and everything set up so far stay out of later collections: shorter pauses
        try:
            stats = node.run()
        except PossmError as exc:
            log.error("%s", exc)
            node.post_state("error", code=1, message=str(exc))
            return 1
        log.info("stopped: %s", json.dumps(stats))
        node.post_state("done", stats=stats)
        return 0
    finally:
        node.close()
        for s, h in old.items():
            signal.signal(s, h)
        logging.getLogger("possm_plugin").removeHandler(handler)
        logging.getLogger("possm_plugin").setLevel(old_level)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
