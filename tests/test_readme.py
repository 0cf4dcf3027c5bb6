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
