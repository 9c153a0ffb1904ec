"""Text for the terminal: the one ``--help`` formatter of every command (``possm``, its subcommands,
``possm-lsl``, ``possm-brand``), and aligned plain-text tables.

Help texts:

- A default is appended as ``(default: X)`` only when it says something: not for ``None``, not for
  on/off flags, and not when the help text already names its default (``default: the bundled one``).
- Descriptions and help texts are often a module's docstring, written in reStructuredText: literals
  (two backquotes) become single backquotes and roles (``:mod:`x```, ``:func:`~a.b```) become their
  target (`` `x` ``, `` `b` ``), so a terminal never shows the markup.
"""

from __future__ import annotations

import argparse
import re
import textwrap

__all__ = ["HelpFormatter", "plain_text", "text_table"]

_LITERAL = re.compile(r"``(.+?)``", re.DOTALL)
_ROLE = re.compile(r":(?:[a-z]+:)?[a-z]+:`(~?)([^`]+)`")
_NO_DEFAULT = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._HelpAction, argparse._VersionAction,
               argparse._CountAction, argparse._StoreConstAction, argparse._AppendConstAction)


def _role(m: re.Match) -> str:
    target = m.group(2)
    if m.group(1):  # ~a.b.c: show only the last part, as Sphinx does
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


def plain_text(text: str) -> str:
    """``text`` without reStructuredText markup: literals and roles become `` `...` ``."""
    return _LITERAL.sub(r"`\1`", _ROLE.sub(_role, text))


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter with meaningful defaults and plain text (see the module doc)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        """Descriptions: each paragraph (blank-line separated) filled on its own."""
        paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", plain_text(text))]
        return "\n\n".join(
            textwrap.fill(p, width, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False, break_long_words=False)
            for p in paragraphs if p
        )

    def _split_lines(self, text: str, width: int) -> list[str]:
        """Help texts: options such as ``--session-index`` are never broken at their hyphens."""
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False, break_long_words=False)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = plain_text(action.help or "")
        default = action.default
        if (
            default is None
            or default is argparse.SUPPRESS
            or isinstance(action, _NO_DEFAULT)
            or (isinstance(default, (list, tuple)) and not default)  # repeatable options start empty
            or "default" in text.lower()
            or not (action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE))
        ):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def text_table(rows: list[list[str]]) -> str:
    """Rows of cells (the first row: the header) as left-aligned columns two spaces apart."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
