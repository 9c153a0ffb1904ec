"""The user documentation holds together: every relative Markdown link in the README, docs/*.md and the
examples' READMEs points at a file of this repository (and at a heading of it, for ``#anchor`` links),
and no page sends a user to a path outside the repository."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted({ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("examples/**/README.md")})
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    out, fence = [], None
    for n, line in enumerate(text.splitlines(), 1):
        m = re.match(r"\s*(```|~~~)", line)
        if m:
            fence = None if fence == m.group(1) else (fence or m.group(1))
            continue
        if fence is None:
            out.append((n, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose_lines(page.read_text()):
        m = HEADING.match(line)
        if m:
            s = slug(m.group(1))
            out.add(s if s not in seen else f"{s}-{seen[s]}")
            seen[s] = seen.get(s, 0) + 1
    return out


def links(page: Path) -> list[tuple[int, str]]:
    return [(n, m.group(1)) for n, line in prose_lines(page.read_text()) for m in LINK.finditer(line)]


def broken_links(page: Path) -> list[str]:
    bad = []
    for n, target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / unquote(path)).resolve() if path else page
        where = f"{page.relative_to(ROOT)}:{n}: ({target})"
        if not dest.exists():
            bad.append(f"{where} no such file")
        elif ROOT not in dest.parents and dest != ROOT:
            bad.append(f"{where} points outside the repository")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{where} no heading with anchor #{anchor} in {dest.relative_to(ROOT)}")
    return bad


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    assert not broken_links(page), "\n".join(broken_links(page))


def test_the_link_check_finds_a_broken_link_and_a_missing_anchor(tmp_path, monkeypatch):
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.md").write_text("# B page\n\n## Some `code` heading (x)\n")
    page = tmp_path / "docs" / "a.md"
    page.write_text("[ok](b.md#some-code-heading-x) [gone](c.md) [anchor](b.md#nope) [web](https://x.org/y)\n"
                    "```\n[in code](nowhere.md)\n```\n")
    bad = broken_links(page)
    assert len(bad) == 2 and "c.md) no such file" in bad[0] and "#nope" in bad[1]


def test_the_index_lists_every_page():
    index = (ROOT / "docs" / "README.md").read_text()
    listed = {(ROOT / "docs" / t).resolve() for _, t in links(ROOT / "docs" / "README.md")}
    missing = [p.name for p in ROOT.glob("docs/*.md") if p.name != "README.md" and p.resolve() not in listed]
    assert not missing, f"docs/README.md does not link {missing}"
    assert "docs/README.md" in (ROOT / "README.md").read_text() and index


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_paths_outside_the_repository(page):
    text = page.read_text()
    found = re.findall(r"(?:/work/|/home/|/root/|/Users/|\bshared/data\b)[^\s`)\"']*", text)
    assert not found, f"{page.relative_to(ROOT)} points at paths a user does not have: {found}"
