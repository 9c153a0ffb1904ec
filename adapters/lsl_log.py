"""liblsl's own log lines (``... api_config.cpp:126   INFO| Loaded default config`` on stderr).

liblsl writes them itself, below Python's logging, at its ``[log] level`` (default 0: information).
:func:`set_liblsl_log_level` sets that level from the command line's ``--log-level`` before liblsl
starts: ``DEBUG`` leaves liblsl's default (its INFO lines show), ``INFO`` and ``WARNING`` keep its
warnings and errors, ``ERROR`` only its errors. A level set in the configuration file liblsl reads
(``LSLAPICFG``, ``./lsl_api.cfg``, ``~/lsl_api/lsl_api.cfg``, ``/etc/lsl_api/lsl_api.cfg``) wins,
and everything else in that file is kept: the file's text, with the level added, is handed to
liblsl through ``pylsl.set_config_content`` (liblsl >= 1.17.7; pylsl has no other log-level API).
"""

from __future__ import annotations

import configparser
import logging
import os
import re
from pathlib import Path

__all__ = ["LIBLSL_LEVELS", "liblsl_config_file", "set_liblsl_log_level"]

log = logging.getLogger("possm_plugin.adapters.lsl")

#: liblsl's log level for each Python level (liblsl: -2 errors, -1 warnings, 0 information); None: its default
LIBLSL_LEVELS = {"DEBUG": None, "INFO": -1, "WARNING": -1, "ERROR": -2, "CRITICAL": -2}


def liblsl_config_file() -> Path | None:
    """The configuration file liblsl reads, in its order of search (None: none exists)."""
    env = os.environ.get("LSLAPICFG")
    for p in ([Path(env)] if env else []) + [Path("lsl_api.cfg"), Path.home() / "lsl_api" / "lsl_api.cfg", Path("/etc/lsl_api/lsl_api.cfg")]:
        if p.is_file():
            return p
    return None


def set_liblsl_log_level(level: str) -> int | None:
    """Set liblsl's log level for the Python logging ``level`` (see the module doc). Call it before
    anything talks to liblsl. Returns the liblsl level set, or None when left alone (``DEBUG``, a level
    in the configuration file, an unreadable file, or a liblsl without ``lsl_set_config_content``)."""
    want = LIBLSL_LEVELS.get(level.upper())
    if want is None:
        return None
    path = liblsl_config_file()
    text = ""
    if path is not None:
        try:
            text = path.read_text()
            cfg = configparser.ConfigParser(strict=False, interpolation=None)
            cfg.read_string(text)
        except (OSError, UnicodeError, configparser.Error) as exc:
            log.debug("liblsl's configuration %s is not readable here (%s); its log level is left alone", path, exc)
            return None
        if cfg.has_option("log", "level"):
            return None
    header = re.search(r"(?mi)^[ \t]*\[log\][ \t]*$", text)
    if header:
        text = f"{text[: header.end()]}\nlevel = {want}{text[header.end():]}"
    else:
        text = f"{text}\n[log]\nlevel = {want}\n"
    import pylsl

    try:
        pylsl.set_config_content(text)
    except (NotImplementedError, AttributeError):
        log.debug("this liblsl cannot take its configuration from pylsl; its log level is left alone")
        return None
    return want
