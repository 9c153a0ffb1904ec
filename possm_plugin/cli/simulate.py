"""``possm simulate``: write simulated sessions, or stream one live over LSL.

Files: ``possm simulate --sessions 2 --seed 0 --out data/sim`` writes ``data/sim/sim-m0-seed0-s000.npz``
and ``sim-m0-seed0-s001.npz`` (motor reaching; ``--task handwriting`` or ``phonemes`` for the other
tasks). The seed is part of the id, so ``--seed 99`` writes other sessions under other ids;
``--id-prefix sim-m0`` gives the seedless ids the bundled checkpoint was trained on (``sim-m0-s000``).

Live: ``possm simulate --lsl`` streams session ``--session-index`` of the same subject and seed in real
time: the spikes on the LSL stream ``--name`` (spike events, or ``--form binned`` counts; channel
labels are the session's unit ids) and the true velocity on ``--labels-name``, looping when
``--duration`` exceeds the segment (see :mod:`possm_plugin.sim.lsl`). Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import logging
import sys

from possm_plugin.cli.formatter import HelpFormatter
from possm_plugin.sim.lsl import add_stream_arguments

__all__ = ["add_parser", "run"]

log = logging.getLogger("possm_plugin.cli.simulate")

TASKS = {
    "motor": ("simulate_motor_sessions", "m0"),
    "handwriting": ("simulate_handwriting_sessions", "h0"),
    "phonemes": ("simulate_phoneme_sessions", "p0"),
}


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "simulate",
        help="write simulated sessions (NPZ), or stream one live over LSL (--lsl)",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=HelpFormatter,
    )
    p.add_argument("--sessions", type=int, default=2, help="how many sessions to write")
    p.add_argument("--seed", type=int, default=0, help="base seed (a session depends only on seed, subject and index)")
    p.add_argument("--out", default=None, help="output directory of the session files")
    p.add_argument("--task", choices=sorted(TASKS), default="motor", help="which simulated task")
    p.add_argument("--duration", type=float, default=None,
                   help="session length in s when writing files (default 120); streaming time with --lsl (default: until Ctrl-C)")
    p.add_argument("--subject", default=None, help="subject name (default m0 / h0 / p0 by task)")
    p.add_argument("--first-index", type=int, default=0, help="index of the first session written")
    p.add_argument("--id-prefix", default=None,
                   help="session ids are PREFIX-s000, ... (default sim-SUBJECT-seedSEED, plus -hw / -ph for those tasks)")
    p.add_argument("--lsl", action="store_true", help="stream a simulated motor session over LSL instead of writing files")
    add_stream_arguments(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from possm_plugin.errors import ConfigError

    if args.lsl:
        if args.task != "motor":
            raise ConfigError("--lsl streams a motor session (spikes + true velocity); drop --task")
        from possm_plugin.adapters.lsl_log import set_liblsl_log_level
        from possm_plugin.sim.lsl import run_from_args

        set_liblsl_log_level(getattr(args, "log_level", "INFO"))  # before anything talks to liblsl, as possm-lsl
        args.subject = args.subject or "m0"
        return run_from_args(args)
    if not args.out:
        raise ConfigError("say where to write the sessions: --out DIR (or stream live with --lsl)")
    from possm_plugin import sim
    from possm_plugin.sim.spiking import MIN_SESSION_S

    if args.duration is not None and not args.duration >= MIN_SESSION_S:
        raise ConfigError(f"--duration must be at least {MIN_SESSION_S:g} s when writing sessions, got {args.duration:g}")
    func_name, default_subject = TASKS[args.task]
    func = getattr(sim, func_name)
    sessions = func(
        args.sessions, seed=args.seed, subject=args.subject or default_subject,
        duration_s=120.0 if args.duration is None else args.duration, first_index=args.first_index, id_prefix=args.id_prefix,
    )
    paths = sim.write_sessions(sessions, args.out)
    for s, path in zip(sessions, paths):
        print(f"{path}  {s.task}, {s.n_units} units, {len(s.spike_times)} spikes, {s.duration:.1f} s, {len(s.trials)} trials")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from possm_plugin.cli.main import main

    sys.exit(main(["simulate", *sys.argv[1:]]))
