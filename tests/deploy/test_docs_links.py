"""Every relative link of the documentation leads somewhere: README.md, docs/*.md and the other
Markdown pages of the repository link to files that exist and to headings those files have.

The README is the front door and docs/ holds the detail, so sections move between them; a link
left pointing at a heading that moved renders fine and leads nowhere. Markdown is read with
markdown-it-py (CommonMark: links inside code spans and fenced blocks are not links), and
headings become anchors the way GitHub makes them.
"""

from __future__ import annotations

import functools
import itertools
import re
from pathlib import Path
from urllib.parse import unquote

import pytest
from markdown_it import MarkdownIt
from markdown_it.token import Token

REPO = Path(__file__).resolve().parents[2]
PAGES = sorted(
    [
        REPO / "README.md",
        *(REPO / "docs").glob("*.md"),
        REPO / "operator/RBAC.md",
        REPO / "charts/flashsale/README.md",
        *(REPO / "terraform").glob("**/README.md"),
    ]
)
# an `<img src="...">` (or another tag's src/href) written as HTML in the Markdown
HTML_TARGET = re.compile(r"""\b(?:src|href)\s*=\s*["']([^"']+)["']""")
# what GitHub drops from a heading's text to make its anchor: everything but letters, digits,
# `_`, `-` and spaces (github-slugger); each space then becomes a `-`
NOT_IN_SLUG = re.compile(r"[^\w\- ]")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def slug(text: str) -> str:
    """GitHub's anchor for a heading whose rendered text is `text`."""
    return NOT_IN_SLUG.sub("", text.strip().lower()).replace(" ", "-")


def plain(inline: Token) -> str:
    """The rendered text of an inline token: its text and code spans, markup dropped."""
    return "".join(
        child.content for child in inline.children or [] if child.type in ("text", "code_inline")
    )


@functools.cache
def tokens(page: Path) -> list[Token]:
    return MarkdownIt("commonmark").enable("table").parse(page.read_text())


@functools.cache
def anchors(page: Path) -> frozenset[str]:
    """The anchors of a page's headings; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for opening, inline in itertools.pairwise(tokens(page)):
        if opening.type != "heading_open":
            continue
        base = slug(plain(inline))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return frozenset(found)


def targets(page: Path) -> list[str]:
    """Every link and image target of a page, as written."""
    found = []
    for token in tokens(page):
        if token.type == "html_block":
            found += HTML_TARGET.findall(token.content)
        for child in token.children or []:
            if child.type == "link_open":
                found.append(str(child.attrs["href"]))
            elif child.type == "image":
                found.append(str(child.attrs["src"]))
            elif child.type == "html_inline":
                found += HTML_TARGET.findall(child.content)
    return found


def broken(page: Path) -> list[str]:
    """The relative targets of a page that name no file, or a heading its file lacks."""
    bad = []
    for target in targets(page):
        if SCHEME.match(target) or target.startswith("//"):
            continue  # another site: not checked offline
        path, _, anchor = target.partition("#")
        file = (page.parent / unquote(path)).resolve() if path else page
        if not file.exists():
            bad.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and unquote(anchor) not in anchors(file):
            bad.append(f"{target}: no such heading in {file.name}")
    return bad


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert page.is_file()
    assert not broken(page), f"{page.relative_to(REPO)}: broken links {broken(page)}"


def test_the_pages_link_to_each_other() -> None:
    """The README links every page of docs/, and every page of docs/ links back to it."""
    readme = set(targets(REPO / "README.md"))
    for page in (REPO / "docs").glob("*.md"):
        assert any(t.partition("#")[0] == f"docs/{page.name}" for t in readme), page.name
        assert any(t.partition("#")[0] == "../README.md" for t in targets(page)), page.name


def test_anchors_are_made_as_github_makes_them() -> None:
    assert slug("One front door: before and after (round 2)") == (
        "one-front-door-before-and-after-round-2"
    )
    assert slug("The shopper's pages") == "the-shoppers-pages"
    assert slug("Chaos (make chaos)") == "chaos-make-chaos"
    assert slug("Dependencies: the locks") == "dependencies-the-locks"
    assert slug("snake_case and  two spaces") == "snake_case-and--two-spaces"


def test_a_broken_link_is_found(tmp_path: Path) -> None:
    """The check is shown to catch a missing file, a missing heading and a heading that moved,
    and not to be fooled by code."""
    (tmp_path / "other.md").write_text("# Other\n\n## Moved here\n\n## Moved here\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n## The `spike` (make loadtest)\n\n"
        "[ok](#the-spike-make-loadtest) [ok](other.md#moved-here-1) [ok](other.md)\n"
        '[web](https://example.com/x#y) <img src="other.md" alt="">\n'
        "[gone](missing.md) [moved](#moved-here) [no](other.md#moved-here-2)\n"
        "`[code](nowhere.md)`\n\n```\n[fenced](nowhere.md)\n```\n"
    )
    assert broken(page) == [
        "missing.md: no such file",
        "#moved-here: no such heading in page.md",
        "other.md#moved-here-2: no such heading in other.md",
    ]
