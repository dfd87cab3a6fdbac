"""The docs stand alone: every link in README.md and docs/*.md resolves inside the repository (file and
#anchor), and none leaves it. Also: the files the README's curl examples use can be made as written."""

import re
from pathlib import Path

import pytest
from PIL import Image

from scripts.example_inputs import write_examples
from tests.conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
AUTOLINK = re.compile(r"<((?:https?|ftp|mailto):[^>\s]+)>")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def prose(path: Path) -> str:
    """The Markdown without code blocks and inline code, where nothing is a link."""
    return INLINE_CODE.sub("", FENCE.sub("", path.read_text(encoding="utf-8")))


def anchors(path: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens, -1, -2 for repeats."""
    seen: dict[str, int] = {}
    result = set()
    for title in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", title).strip().lower()
        slug = re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def links(path: Path) -> list[str]:
    text = prose(path)
    return LINK.findall(text) + AUTOLINK.findall(text)


def test_docs_exist():
    assert (REPO / "docs" / "API.md").is_file() and len(DOCS) >= 3


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_link_resolves_inside_the_repo(doc):
    found = links(doc)
    assert found or doc.name != "README.md"
    for target in found:
        assert not re.match(r"^[a-z][a-z0-9+.-]*:|^//", target, re.I), f"{doc.name}: link leaves the repo: {target}"
        file_part, _, anchor = target.partition("#")
        resolved = (doc.parent / file_part).resolve() if file_part else doc
        assert resolved.is_relative_to(REPO), f"{doc.name}: {target} points outside the repository"
        assert resolved.exists(), f"{doc.name}: {target} does not exist"
        if anchor:
            assert resolved.suffix == ".md", f"{doc.name}: anchor into a non-Markdown file: {target}"
            assert anchor in anchors(resolved), f"{doc.name}: no heading #{anchor} in {resolved.name}"


def test_the_link_checker_catches_bad_links(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("# Title\n[a](https://example.com) [b](../up.md) [c](#title) <https://cdn.example>\n"
                   "```\n[not a link](https://inside.code)\n```\n")
    assert links(doc) == ["https://example.com", "../up.md", "#title", "https://cdn.example"]
    assert anchors(doc) == {"title"}


def test_example_inputs_for_the_curl_examples(tmp_path):
    photo, mask = write_examples(tmp_path)
    with Image.open(photo) as p, Image.open(mask) as m:
        assert p.size == m.size == (512, 512) and m.mode == "L"
        assert 0 < m.histogram()[255] < 512 * 512  # something to repaint, something kept
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "python -m scripts.example_inputs" in readme and "pip install segmind pillow" in readme
    # The examples write into a temporary folder, never into the clone they are run from.
    assert 'python -m scripts.example_inputs "$OUT"' in readme
    assert all(target.startswith('"$OUT/') for target in re.findall(r" -o (\S+)", readme))


def test_api_contents_list_every_section_in_order():
    """docs/API.md's contents: one entry per `##` section, titled as the section and linking to it."""
    text = FENCE.sub("", (REPO / "docs" / "API.md").read_text(encoding="utf-8"))
    sections = re.findall(r"^##\s+(.+?)\s*$", text, re.M)
    contents = re.findall(r"^- \[([^\]]+)\]\(#([^)]+)\)$", text.split("\n## ", 1)[0], re.M)
    assert [title for title, _ in contents] == sections
    for title, anchor in contents:
        assert anchor == re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-"), title
