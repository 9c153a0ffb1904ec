"""``possm import FORMAT FILE --out DIR --session-id ID``: recorded data -> a session file.

Formats: binned (an NPZ file of binned counts) and nwb (Neurodata Without Borders, with pynwb); one
module each (import_binned.py, import_nwb.py). Each writes DIR/<ID>.npz in the session format, with
the fingerprint of its content, and prints where. One session id per recording: a model refuses a
known id whose content differs.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from possm_plugin.cli.formatter import HelpFormatter
from possm_plugin.data.session import Session
from possm_plugin.errors import DataError

__all__ = ["add_parser", "write_session", "FORMATS"]

# format -> module (relative to this package)
FORMATS = {"binned": ".import_binned", "nwb": ".import_nwb"}


def add_parser(sub) -> None:
    p = sub.add_parser("import", help="turn a recording (binned NPZ, NWB) into a session file",
                       description=__doc__.split("\n\n", 1)[1], formatter_class=HelpFormatter)
    fmt = p.add_subparsers(dest="format", metavar="FORMAT", required=True)
    for mod in FORMATS.values():
        importlib.import_module(mod, __package__).add_parser(fmt)


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments every format takes."""
    p.add_argument("file", metavar="FILE", help="the recording to import")
    p.add_argument("--out", required=True, help="directory of the session file (written as OUT/<session-id>.npz)")
    p.add_argument("--session-id", required=True,
                   help="the session's id (its units become ID/u000, ...): one id per recording, never reused for another")
    p.add_argument("--subject", default=None, help="subject id")
    p.add_argument("--overwrite", action="store_true", help="replace OUT/<session-id>.npz even if it holds another recording")


def write_session(session: Session, out: str | Path, *, overwrite: bool = False) -> Path:
    """Save ``session`` as ``out/<session_id>.npz`` and print one line saying where and what.

    An existing file of that name is replaced only if it holds the same recording (same fingerprint)
    or ``overwrite`` is set: otherwise two recordings would end up known under one id."""
    path = Path(out) / f"{session.session_id}.npz"
    if path.exists() and not overwrite:
        try:
            old = Session.load(path).fingerprint
        except DataError:
            old = "unreadable"
        if old != session.fingerprint:
            raise DataError(f"{str(path)} already holds another recording (fingerprint {old}, this one {session.fingerprint}); "
                            "choose another --session-id, or --overwrite")
    path = session.save(path)
    print(f"{path}  {session.n_units} units, {len(session.spike_times)} spikes, {session.duration:.1f} s, "
          f"{len(session.trials)} trials, targets {','.join(session.target_names)} / {session.target_scale:g}, "
          f"fingerprint {session.fingerprint}")
    return path
