"""``possm import nwb FILE --out DIR --session-id ID --target SERIES``: an NWB file -> a session file.

Spikes from the Units table, the behaviour from the TimeSeries ``--target`` (a name such as
``hand_vel`` or a path; without ``--target`` the error lists the file's series), trials from the ``trials`` table
(``--intervals``). Needs pynwb (``pip install possm-plugin[nwb]``); see
:func:`possm_plugin.data.importers.load_nwb` for everything it reads.
"""

from __future__ import annotations

from possm_plugin.cli.formatter import HelpFormatter
from possm_plugin.cli.import_data import add_common_arguments, write_session


def add_parser(sub) -> None:
    p = sub.add_parser("nwb", help="a Neurodata Without Borders file (Units table, a behaviour series, trials)",
                       description=__doc__.split("\n\n", 1)[1], formatter_class=HelpFormatter)
    add_common_arguments(p)
    p.add_argument("--target", default=None, help="the behaviour series to decode, e.g. hand_vel (without it: the error lists them)")
    p.add_argument("--columns", type=int, nargs="+", default=None, help="columns of the series to keep (default all)")
    p.add_argument("--derive-velocity", action="store_true", help="differentiate the series (position -> velocity)")
    p.add_argument("--target-scale", type=float, default=None, help="targets are divided by it (default: their RMS, 2 digits)")
    p.add_argument("--intervals", default="trials", help="the intervals table defining trials ('none': one trial)")
    p.add_argument("--start", default="start_time", help="column of each trial's start")
    p.add_argument("--stop", default="stop_time", help="column of each trial's stop")
    p.add_argument("--start-offset", type=float, default=0.0, help="seconds added to the start column")
    p.add_argument("--stop-offset", type=float, default=0.0, help="seconds added to the stop column")
    p.add_argument("--unit-label", choices=["id", "electrode"], default="id", help="name units by unit id or by electrode")
    p.set_defaults(func=run)


def run(args) -> int:
    from possm_plugin.data.importers.nwb import load_nwb, nwb_series
    from possm_plugin.errors import ConfigError

    if not args.target:
        names = [f"{row['path']} {row['shape']}" for row in nwb_series(args.file)]
        raise ConfigError(f"say which behaviour series to decode: --target NAME; {args.file} has {names or 'none'}")
    session = load_nwb(
        args.file, target=args.target, columns=args.columns, derive_velocity=args.derive_velocity,
        target_scale=args.target_scale, intervals=None if args.intervals.lower() == "none" else args.intervals,
        start=args.start, stop=args.stop, start_offset=args.start_offset, stop_offset=args.stop_offset,
        unit_label=args.unit_label, session_id=args.session_id, subject=args.subject,
    )
    write_session(session, args.out, overwrite=args.overwrite)
    return 0
