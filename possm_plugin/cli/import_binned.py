"""``possm import binned FILE --out DIR --session-id ID``: an NPZ file of binned counts -> a session file.

The file holds ``rates_hz`` or ``counts`` (bins x units), the behaviour to decode (``--target``, e.g.
``velocity``, bins x C), ``bin_s`` (or give ``--bin-s``) and optionally ``trial_lengths`` (bins per
trial) and ``target`` (reach target per bin); see :func:`possm_plugin.data.importers.load_binned`. Each
bin's count becomes that many spike events at random times inside the bin (``--seed``).
"""

from __future__ import annotations

from possm_plugin.cli.formatter import HelpFormatter
from possm_plugin.cli.import_data import add_common_arguments, write_session


def add_parser(sub) -> None:
    p = sub.add_parser("binned", help="an NPZ file of binned counts (rates_hz or counts, velocity, bin_s, trial_lengths)",
                       description=__doc__.split("\n\n", 1)[1], formatter_class=HelpFormatter)
    add_common_arguments(p)
    p.add_argument("--bin-s", type=float, default=None, help="bin width in seconds, if the file has no bin_s")
    p.add_argument("--target", default="velocity", help="key of the behaviour to decode (velocity, position, ...)")
    p.add_argument("--target-scale", type=float, default=None,
                   help="targets are divided by it for training (default: their std rounded to 1, 2 or 5 x 10^k)")
    p.add_argument("--placement", choices=["uniform", "even"], default="even", help="where events go inside their bin: evenly spread, as every live source puts them, or at seeded random times")
    p.add_argument("--seed", type=int, default=0, help="seed of the uniform placement")
    p.add_argument("--label-at", choices=["end", "center"], default="end", help="where each bin's behaviour is stamped")
    p.set_defaults(func=run)


def run(args) -> int:
    from possm_plugin.data.importers.binned import load_binned

    session = load_binned(
        args.file, session_id=args.session_id, subject=args.subject or "unknown", bin_s=args.bin_s, target=args.target,
        placement=args.placement, seed=args.seed, label_at=args.label_at, target_scale=args.target_scale,
    )
    write_session(session, args.out, overwrite=args.overwrite)
    return 0
