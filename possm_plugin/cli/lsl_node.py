"""``possm-lsl``: the LSL decoder node.

``possm-lsl --inlet spikes`` resolves the LSL stream ``spikes`` (spike events or binned counts, see
docs/lsl.md), decodes it chunk by chunk with the bundled default checkpoint, and publishes the
predictions on the LSL outlet ``possm``, until Ctrl-C / SIGTERM (or ``--duration``), then prints a
summary (counts, latency p50/p99).

Exit codes: 0 after a clean stop, 1 for a configuration, checkpoint or unit problem (one line saying
what and how to fix it), 2 when no inlet appeared within ``--resolve-timeout`` seconds, 130 when
interrupted before decoding started.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from possm_plugin.cli.formatter import HelpFormatter
from possm_plugin.errors import ConfigError, PluginError, PossmError, StreamError
from possm_plugin.realtime.unit_map import pick_session, session_units, unknown_units

__all__ = ["build_parser", "main", "parse_options", "format_summary"]

log = logging.getLogger("possm_plugin.cli.lsl_node")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="possm-lsl",
        description="Decode a live LSL spike stream with POSSM and publish the predictions on an LSL outlet.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--inlet", metavar="NAME", default=None, help="name of the LSL spike stream to decode")
    p.add_argument("--predicate", default=None, help="any LSL XPath predicate selecting the stream (with or instead of --inlet)")
    p.add_argument("--checkpoint", default=None, help="checkpoint (.yaml/.safetensors/stem/directory, or a bundled name: default, chewie); default: the bundled `default`")
    p.add_argument("--outlet", default="possm", help="name of the LSL outlet for the predictions")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=1, help="CPU threads of torch and BLAS (one stream decodes fastest on 1)")
    p.add_argument("--prewarm", type=float, default=1.5, metavar="MS",
                   help="run one throwaway step when the data reach this many ms before a chunk's end, so the real step finds "
                        "its code and weights in the CPU caches (0: off)")
    p.add_argument("--session", default=None, help="map the stream's channels, in order, to this known session's units")
    p.add_argument("--chunk-width", type=float, default=None, help="chunk width in s (must match the checkpoint's)")
    p.add_argument("--chunk-step", type=float, default=None, help="chunk step in s (must match the checkpoint's)")
    p.add_argument("--resolve-timeout", type=float, default=5.0, help="seconds to wait for the inlet")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="logging level; liblsl's own INFO lines show only at DEBUG")
    p.add_argument("--duration", type=float, default=None,
                   help="stop after decoding this many seconds; with --calibrate counted from the end of calibration, "
                        "when decoding starts (default: run until Ctrl-C)")
    p.add_argument("--telemetry", action="store_true", help="also publish <outlet>-telemetry (compute_ms, publish_ms, n_spikes, chunk_index per chunk)")
    p.add_argument("--source", default="lsl", help="registered source plugin (see `possm plugins`)")
    p.add_argument("--source-opt", action="append", default=[], metavar="KEY=VALUE", help="option of the source (repeatable)")
    p.add_argument("--sink", default="lsl", help="registered sink plugin")
    p.add_argument("--sink-opt", action="append", default=[], metavar="KEY=VALUE", help="option of the sink (repeatable)")
    p.add_argument("--calibrate", type=float, default=None, metavar="SECONDS",
                   help="calibrate unseen units online: collect SECONDS of spikes and --labels, run unit identification, then decode")
    p.add_argument("--labels", default=None, metavar="NAME", help="LSL stream with the behaviour to calibrate on (e.g. velocity)")
    p.add_argument("--calibrate-epochs", type=int, default=None,
                   help="unit-identification epochs of --calibrate (default: as `possm finetune`, at least 300 optimiser steps)")
    p.add_argument("--save-checkpoint", default=None, metavar="PATH", help="with --calibrate: also write the calibrated checkpoint here")
    p.add_argument("--json-summary", action="store_true", help="print the summary as one JSON object on stdout")
    return p


# -- options -------------------------------------------------------------------------------------------
def _value(text: str) -> Any:
    low = text.strip().lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_options(items: list[str], *, what: str) -> dict[str, Any]:
    """``["key=value", ...]`` -> ``{"key": value}`` (ints, floats, booleans and None recognised)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--{what}-opt {item!r} must look like key=value")
        out[key.strip().replace("-", "_")] = _value(val)
    return out


def _factory(kind: str, name: str):
    try:
        from possm_plugin.plugins import manager
    except ImportError:  # pragma: no cover - the plugin manager is part of the package
        manager = None
    if manager is not None:
        return manager.get_source(name) if kind == "source" else manager.get_sink(name)
    if name != "lsl":  # pragma: no cover
        raise PluginError(f"no {kind} plugin {name!r} (only 'lsl' is built in)")
    from possm_plugin.adapters.lsl import LSLSink, LSLSource

    return LSLSource if kind == "source" else LSLSink


def _make(kind: str, name: str, opts: dict[str, Any]):
    factory = _factory(kind, name)
    try:
        return factory(**opts)
    except TypeError as exc:
        raise ConfigError(f"{kind} {name!r} rejected its options {sorted(opts)}: {exc}") from None


# -- summary -------------------------------------------------------------------------------------------
def format_summary(s: dict) -> str:
    def ms(d: dict) -> str:
        if not d or not d.get("n"):
            return "n/a"
        return f"p50 {d['p50']:.3f} ms, p99 {d['p99']:.3f} ms, max {d['max']:.3f} ms (n={d['n']})"

    lines = [
        f"possm-lsl summary ({s.get('runtime_s', 0):.1f} s)",
        f"  chunks decoded {s['chunks_decoded']}, skipped {s['chunks_skipped']}, oversized {s['chunks_oversized']}, "
        f"resets {s['resets']}",
        f"  spikes in {s['spikes_in']}, decoded {s['spikes_decoded']}, dropped {s['spikes_dropped']} "
        f"(late {s['spikes_late']}, invalid {s['spikes_invalid']}, unknown {s['spikes_unknown']}, "
        f"duplicate {s['spikes_duplicate']}, future {s['spikes_future']}, truncated {s['spikes_truncated']}, skipped {s.get('spikes_skipped', 0)})",
        f"  compute per chunk: {ms(s['compute_ms'])}",
        f"  chunk end -> publish: {ms(s['publish_ms'])}",
    ]
    cal = s.get("calibration")
    if cal:
        r2 = cal.get("valid_r2")
        lines.append(f"  calibration: R2 {'n/a' if r2 is None else f'{r2:.3f}'}, {cal.get('new_units', 0)} new units, "
                     f"{100 * cal.get('trainable_fraction', 0):.2f}% of parameters trained in {cal.get('seconds', 0):.1f} s")
    extra = {k: s[k] for k in ("predictions_published", "source_losses", "source_returns", "acquire_errors", "publish_errors") if k in s}
    if extra:
        lines.append("  " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in extra.items()))
    return "\n".join(lines)


# -- the node ------------------------------------------------------------------------------------------
def _map_units(args, model, doc, source) -> tuple[list[str], str | None]:
    """The unit id of each stream channel and the session to decode as (None: calibrate)."""
    stream_units = list(source.unit_ids)
    known_sessions = model.session_vocab.ids
    if args.session:
        if args.session not in model.session_vocab:
            raise ConfigError(f"--session {args.session!r} is not in the checkpoint; known sessions: {', '.join(known_sessions) or 'none'}")
        sess_units = session_units(model, args.session)
        if stream_units and len(stream_units) != len(sess_units):
            raise ConfigError(
                f"--session {args.session!r} maps channels in order, but the stream has {len(stream_units)} channels "
                f"and the session {len(sess_units)} units"
            )
        log.info("mapping the stream's %d channels in order to session %r", len(sess_units), args.session)
        return sess_units, args.session
    if args.calibrate:
        return stream_units, None  # unit ids from the labels, n_units, or the electrodes seen while calibrating
    if not stream_units:
        raise ConfigError(
            "the stream names no units (no channel labels); pass --session ID to map its channels, in order, to a known "
            f"session ({', '.join(known_sessions) or 'none'}), or calibrate with --calibrate SECONDS --labels NAME "
            "(the units are then the electrodes seen while calibrating, or 0..N-1 with --source-opt n_units=N)"
        )
    unknown = unknown_units(model, stream_units)
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        hint = "" if getattr(source, "has_labels", True) else " (the stream has no channel labels, so its units are its channel indices)"
        raise ConfigError(
            f"{len(unknown)} of the stream's {len(stream_units)} units are unknown to the checkpoint: {shown}{hint}. "
            f"Calibrate them online with `possm-lsl --inlet NAME --calibrate 60 --labels BEHAVIOUR_STREAM`, or, if the "
            f"stream comes from the array of a known session, map its channels in order with --session ID "
            f"(known: {', '.join(known_sessions) or 'none'})"
        )
    return stream_units, pick_session(model, stream_units, doc.get("default_session")) or doc.get("default_session")


def _skip_backlog(source, why: str) -> None:
    """Decode from fresh data after a pause in reading (a source with ``skip_backlog``, e.g. LSL, drops
    what queued meanwhile and logs it): otherwise the first pull brings seconds of queued spikes and the
    decoder publishes a burst of stale predictions (chunk end -> publish up to the pause's length)."""
    skip = getattr(source, "skip_backlog", None)
    if callable(skip):
        skip(why)


def run(args: argparse.Namespace) -> int:
    """The node, from parsed arguments (raises :class:`PossmError` for problems; ``main`` prints them)."""
    from possm_plugin.model.checkpoint import load_checkpoint
    from possm_plugin.realtime.runner import DecoderRunner
    from possm_plugin.realtime.streaming import StreamingDecoder
    from possm_plugin.realtime.threads import set_cpu_threads

    if args.threads < 1:
        raise ConfigError(f"--threads {args.threads} must be >= 1")
    if not 0 <= args.prewarm < 1e3 * (args.chunk_step or 0.05):
        raise ConfigError(f"--prewarm {args.prewarm} must be >= 0 ms and shorter than a chunk step")
    set_cpu_threads(args.threads)
    model, doc = load_checkpoint(args.checkpoint)
    cfg = model.config
    for flag, want, have in (("--chunk-width", args.chunk_width, cfg.chunk_width), ("--chunk-step", args.chunk_step, cfg.chunk_step)):
        if want is not None and abs(float(want) - float(have)) > 1e-9:
            raise ConfigError(f"{flag} {want:g} s does not match the checkpoint's {have:g} s; the model was trained with {have:g} s chunks")
    if args.calibrate is not None and not args.labels:
        raise ConfigError("--calibrate SECONDS needs --labels NAME (the LSL stream with the behaviour to calibrate on)")
    if args.calibrate is not None and args.session:
        raise ConfigError("--calibrate learns a new session; --session maps to a known one: use one or the other")
    if args.calibrate is not None and not args.calibrate > 0:
        raise ConfigError(f"--calibrate {args.calibrate!r} must be a positive number of seconds")

    src_opts = parse_options(args.source_opt, what="source")
    if args.source == "lsl":
        if args.inlet:
            src_opts.setdefault("name", args.inlet)
        if args.predicate:
            src_opts.setdefault("predicate", args.predicate)
        if not src_opts.get("name") and not src_opts.get("predicate"):
            raise ConfigError("say which LSL stream to decode: --inlet NAME (or --predicate \"type='Spikes'\")")
        src_opts.setdefault("resolve_timeout", args.resolve_timeout)
    source = _make("source", args.source, src_opts)
    try:
        source.connect(timeout=args.resolve_timeout)
    except StreamError as exc:
        print(f"possm-lsl: {exc}", file=sys.stderr)
        return 2
    try:
        unit_ids, session = _map_units(args, model, doc, source)
        calibration = None
        if session is None:  # online calibration
            from possm_plugin.realtime.calibration import calibrate_online

            model, session, unit_ids, calibration = calibrate_online(
                model, source, labels=args.labels, seconds=args.calibrate, epochs=args.calibrate_epochs,
                resolve_timeout=args.resolve_timeout, save_to=args.save_checkpoint,
            )
        decoder = StreamingDecoder(model, session=session, unit_ids=unit_ids, device=args.device, default_session=doc.get("default_session"),
                                   prewarm=args.prewarm / 1e3 if args.prewarm else None)
        sink_opts = parse_options(args.sink_opt, what="sink")
        if args.sink == "lsl":
            sink_opts.setdefault("name", args.outlet)
            sink_opts.setdefault("telemetry", args.telemetry)
            sink_opts.setdefault("meta", {"decoder": "possm", "session": session, "checkpoint": str(args.checkpoint or "default")})
        sink = _make("sink", args.sink, sink_opts)
        log.info("decoding %d units as session %r on %s; chunks %g s every %g s%s", len(unit_ids), session, decoder.device,
                 decoder.chunk_width, decoder.chunk_step,
                 "" if args.duration is None else f"; for {args.duration:g} s" + (" from now (after calibration)" if calibration else ""))
        if calibration is not None:
            _skip_backlog(source, "calibrating and building the calibrated decoder")
        runner = DecoderRunner(source, decoder, [sink], duration=args.duration)
        summary = runner.run(handle_signals=True)
    finally:
        source.disconnect()
    summary["session"] = session
    if calibration:
        summary["calibration"] = {k: calibration[k] for k in ("valid_r2", "new_units", "trainable_parameters", "trainable_fraction", "seconds") if k in calibration}
    if args.json_summary:
        print(json.dumps(summary))
    else:
        print(format_summary(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    from possm_plugin.cli.main import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    from possm_plugin.adapters.lsl_log import set_liblsl_log_level

    set_liblsl_log_level(args.log_level)  # before anything talks to liblsl
    try:
        return run(args)
    except PossmError as exc:
        print(f"possm-lsl: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("possm-lsl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
