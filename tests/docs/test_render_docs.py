"""Figures in the README and the docs are rendered from the committed benchmark JSON: a page that differs
from its rendering fails here, with the command that regenerates it."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_renderer():
    spec = importlib.util.spec_from_file_location("render_docs", ROOT / "scripts" / "render_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_committed_figures_are_what_the_json_renders():
    rd = load_renderer()
    bad = rd.stale()
    assert not bad, "stale figures:\n" + "\n".join(bad) + f"\nregenerate with: {rd.COMMAND}"


def test_a_figure_typed_by_hand_is_caught_and_rerendered(tmp_path, monkeypatch, capsys):
    """A copy of the tree where someone typed a figure into a README block and into a report page."""
    rd = load_renderer()
    (tmp_path / "possm_plugin").mkdir()
    (tmp_path / "possm_plugin" / "assets").symlink_to(ROOT / "possm_plugin" / "assets")
    (tmp_path / "benchmarks").symlink_to(ROOT / "benchmarks")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- figures:accuracy -->\n", 1)[1].split("<!-- /figures -->", 1)[0]
    ss = __import__("json").loads((ROOT / "docs" / "accuracy.json").read_text())["single_session"]
    typed = f"{ss['possm_gru']['r2_mean']:.3f}"
    assert typed in block  # the block shows the JSON's figure ...
    (tmp_path / "README.md").write_text(readme.replace(block, block.replace(typed, "0.999")))  # ... someone "updates" it
    acc = tmp_path / "docs" / "accuracy.md"
    acc.write_text(acc.read_text().replace(f"{ss['wiener']['r2_mean']:.3f}", "0.111", 1))
    loop = tmp_path / "docs" / "closed-loop.md"
    assert "| `possm` | 0.64 |" in loop.read_text()
    loop.write_text(loop.read_text().replace("| `possm` | 0.64 |", "| `possm` | 0.94 |"))
    png_mtime = (tmp_path / "docs" / "closed-loop.png").stat().st_mtime_ns
    monkeypatch.setattr(rd, "ROOT", tmp_path)
    monkeypatch.setattr(rd, "DOCS", tmp_path / "docs")

    assert rd.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert "README.md: figure block(s) accuracy" in err and "docs/accuracy.md: the page rendered from its JSON" in err
    assert "docs/closed-loop.md: the page rendered from its JSON" in err
    assert "regenerate with: python scripts/render_docs.py" in err
    assert rd.main([]) == 0
    assert rd.main(["--check"]) == 0
    assert (tmp_path / "README.md").read_text() == readme and acc.read_text() == (ROOT / "docs" / "accuracy.md").read_text()
    assert loop.read_text() == (ROOT / "docs" / "closed-loop.md").read_text()
    assert (tmp_path / "docs" / "closed-loop.png").stat().st_mtime_ns == png_mtime  # no figure redrawn into docs/


def test_an_unknown_block_name_is_an_error():
    rd = load_renderer()
    with pytest.raises(SystemExit, match="X.md: unknown figure block 'nope'"):
        rd.render_blocks("<!-- figures:nope -->\nx\n<!-- /figures -->\n", where="X.md")
