"""README blocks are refreshed from the run files they name, never pasted by hand."""

from __future__ import annotations

import pytest

from landmark_kit.readme import machine, refresh


def test_generated_blocks_take_the_named_files_content(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "t.md").write_text("| a |\n|---|\n| 1 |\n")
    doc = tmp_path / "README.md"
    doc.write_text("intro\n<!-- generated from runs/t.md -->\nstale table\n<!-- end generated -->\noutro\n")
    assert refresh(doc, tmp_path) == 1
    assert doc.read_text() == ("intro\n<!-- generated from runs/t.md -->\n| a |\n|---|\n| 1 |\n"
                               "<!-- end generated -->\noutro\n")
    assert refresh(doc, tmp_path) == 1  # idempotent
    (tmp_path / "runs" / "t.md").unlink()
    with pytest.raises(FileNotFoundError, match="runs/t.md"):
        refresh(doc, tmp_path)


def test_machine_names_cores():
    assert "cores usable" in machine()


def test_readme_is_a_front_door_and_every_relative_link_resolves():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = root / "README.md"
    assert len(readme.read_text().splitlines()) <= 150
    pages = [readme, *sorted((root / "docs").glob("*.md"))]
    assert len(pages) >= 7
    for page in pages:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith(("http://", "https://")):
                assert (page.parent / target).exists(), f"{page.name}: broken link {target}"
