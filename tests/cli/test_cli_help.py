"""``--help`` of every command and subcommand (``possm ...``, ``possm-lsl``, ``possm-brand``): one shared
formatter, each default shown once, no reStructuredText markup from the docstrings."""

from __future__ import annotations

import argparse
import re

import pytest

from possm_plugin.adapters.brand import build_parser as brand_parser
from possm_plugin.cli.formatter import HelpFormatter, plain_text
from possm_plugin.cli.lsl_node import build_parser as lsl_parser
from possm_plugin.cli.main import SUBCOMMANDS
from possm_plugin.cli.main import build_parser as possm_parser

MARKUP = re.compile(r"``|:[a-z]+:`")


def walk(parser: argparse.ArgumentParser):
    """``parser`` and every subcommand parser below it, depth first."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from walk(sub)


PARSERS = {p.prog: p for top in (possm_parser(), lsl_parser(), brand_parser()) for p in walk(top)}


def test_every_subcommand_is_walked():
    progs = set(PARSERS)
    assert {f"possm {name}" for name in SUBCOMMANDS} <= progs
    assert {"possm", "possm-lsl", "possm-brand", "possm import binned", "possm import nwb"} <= progs


@pytest.mark.parametrize("prog", sorted(PARSERS))
def test_help_shows_each_default_once_and_no_markup(prog):
    parser = PARSERS[prog]
    assert isinstance(parser._get_formatter(), HelpFormatter), f"{prog} formats its help with another class"
    text = parser.format_help()
    for empty in ("(default: None)", "(default: False)", "(default: [])"):
        assert empty not in text, f"{prog}: {empty}"
    assert not MARKUP.search(text), f"{prog}: reST markup in --help: {MARKUP.search(text).group(0)!r}"
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.help and "default" in action.help.lower():  # it names its own default: nothing is added
            assert formatter._get_help_string(action) == plain_text(action.help), (prog, action.dest)


def test_meaningful_defaults_are_shown_and_options_never_split_at_hyphens():
    demo = PARSERS["possm demo"].format_help()
    assert "seconds of live decoding (default: 20.0)" in demo
    assert "(default: the bundled one)" in demo and demo.count("default") == demo.count("(default")
    assert "Redis port (default: 6379)" in " ".join(PARSERS["possm-brand"].format_help().split())
    simulate = PARSERS["possm simulate"].format_help()
    assert "`--session-index`" in simulate and "`possm_plugin.sim.lsl`" in simulate  # roles and literals, plain
    assert "\n\nLive:" in simulate  # the description keeps its paragraphs


def test_plain_text_turns_roles_and_literals_into_backquotes():
    assert plain_text("see :mod:`possm_plugin.sim.lsl` and :func:`~possm_plugin.data.identity.check_sessions`") == (
        "see `possm_plugin.sim.lsl` and `check_sessions`"
    )
    assert plain_text("run ``possm demo``, then :py:class:`Foo`") == "run `possm demo`, then `Foo`"
