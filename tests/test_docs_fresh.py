"""The settings reference in docs/reference/ is what the generator makes from the configs today."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from joydataforge.config.describe import shipped
from joydataforge.config.kinds import BUILTIN_CONFIGS
from joydataforge.config.reference import HEADER, render_pages, write_pages

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference"
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_committed_reference_pages_are_fresh() -> None:
    pages = render_pages()
    stale = sorted(
        name
        for name, text in pages.items()
        if not (REFERENCE / name).is_file() or (REFERENCE / name).read_text("utf-8") != text
    )
    extra = sorted(p.name for p in REFERENCE.glob("*.md") if p.name not in pages)
    assert not stale and not extra, (
        f"docs/reference is out of date (differ: {stale or 'none'}; no longer generated: {extra or 'none'}): "
        "run `make docs`"
    )


def test_every_kind_and_setting_is_on_its_page() -> None:
    pages = render_pages()
    text = "\n".join(pages.values())
    for kind, config in shipped(BUILTIN_CONFIGS).items():
        page = next(page for page in pages.values() if f"## `{kind}`\n" in page)
        for name, info in config.model_fields.items():
            assert f"| `{info.alias or name}` |" in page, f"{kind}.{name} missing from its reference page"
        assert f"| `{kind}` |" in pages["index.md"]
    assert "## `input:`" in pages["pipeline.md"] and "| `api_key_env` |" in pages["models.md"]
    assert "Generated from the configs" in text


def test_write_pages_removes_stale_generated_pages_but_not_hand_written_ones(tmp_path: Path) -> None:
    (tmp_path / "gone.md").write_text(HEADER + "# a kind that was removed\n", "utf-8")
    (tmp_path / "notes.md").write_text("# written by hand\n", "utf-8")
    write_pages(tmp_path, {"index.md": HEADER + "# index\n"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.md", "notes.md"]


@pytest.mark.parametrize("page", sorted((ROOT / "docs").rglob("*.md")), ids=lambda p: str(p.relative_to(ROOT)))
def test_links_between_docs_resolve(page: Path) -> None:
    for target in LINK.findall(page.read_text("utf-8")):
        if "://" in target:
            continue
        assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to missing {target}"
