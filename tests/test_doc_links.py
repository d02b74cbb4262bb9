"""Every link of README.md and docs/*.md to a file of the project leads to one, and every
``#anchor`` to a heading of the page it names (GitHub's anchors)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.doc_examples import DOCUMENTS, FENCE, ROOT

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} (.+)$", flags=re.MULTILINE)


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def prose(document: Path) -> str:
    """The document without its code blocks (whose `#` lines are comments, not headings)."""
    return FENCE.sub("", document.read_text())


def leads_somewhere(document: Path, target: str) -> bool:
    path, _, fragment = target.partition("#")
    page = (document.parent / path).resolve() if path else document
    if not page.exists():
        return False
    return not fragment or fragment in {anchor(h) for h in HEADING.findall(prose(page))}


def links(document: Path) -> list[str]:
    return [target for target in LINK.findall(prose(document)) if "://" not in target]


def test_the_pages_have_links() -> None:
    assert {"docs/api.md", "docs/webhooks.md"} <= set(links(ROOT / "README.md"))


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_link_leads_somewhere(document: Path) -> None:
    assert [target for target in links(document) if not leads_somewhere(document, target)] == []


def test_the_anchor_of_a_heading_is_githubs() -> None:
    assert anchor("From `git clone` to a running cluster") == "from-git-clone-to-a-running-cluster"
    assert anchor("Scaling, and scaling down without losing work") == (
        "scaling-and-scaling-down-without-losing-work"
    )
