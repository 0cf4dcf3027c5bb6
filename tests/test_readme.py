"""README blocks are refreshed from the run files they name, never pasted by hand."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from landmark_kit.ledger import machine
from landmark_kit.readme import refresh


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


ROOT = Path(__file__).resolve().parents[1]
TOP = ("landmark_kit", "stages", "tests", "benchmarks", "training", "cleaning", "ensembles", "submissions", "kernels",
       "docs")
PROCESS_WORDS = re.compile(r"\b(agents?|sessions?|issues? ?#?\d+|seed[ -]\d{3}|the brief|lent)\b", re.I)


def _pages() -> list[Path]:
    """Every page a user reads: the README, docs/, the folder READMEs."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(ROOT.glob("*/README.md"))]


def _user_text() -> list[Path]:
    """The pages plus what else users read: recipe comments, library and stage docstrings, the kernels."""
    recipes = [p for d in ("training", "cleaning", "ensembles", "submissions") for p in (ROOT / d).rglob("*.yaml")]
    code = [*(ROOT / "landmark_kit").glob("*.py"), *(ROOT / "stages").glob("*.py"), *(ROOT / "kernels").rglob("*.py")]
    return _pages() + sorted(recipes) + sorted(code)


def test_docs_name_only_files_in_the_repository():
    """In pages, recipes and docstrings, a path under a top-level folder or a bare ``*.py`` / ``*.md`` name must
    exist (globs: match something)."""
    names = {p.name for d in TOP for p in (ROOT / d).rglob("*.[pm][yd]")} | {p.name for p in ROOT.glob("*.md")}
    path = re.compile(r"(?<![\w/.<-])((?:%s)/[\w./*<>-]*[\w*>])" % "|".join(TOP))
    bare = {"page": r"(?<![\w/.-])([\w-]+\.(?:py|md))\b", "code": r"\(([\w-]+\.md)[,)]"}  # code: cited docs only
    dead = []
    for page in _user_text():
        text = page.read_text()
        for ref in path.findall(text):
            if "<" in ref or "{" in ref or len(Path(ref).stem) == 1:  # placeholders: <name>, {a,b}, x.yaml
                continue
            found = next(ROOT.glob(ref), None) if "*" in ref else (ROOT / ref).exists() or (page.parent / ref).exists()
            if not found:
                dead.append(f"{page.relative_to(ROOT)}: {ref}")
        kind = "code" if page.suffix == ".py" else "page"
        dead += [f"{page.relative_to(ROOT)}: {name}" for name in re.findall(bare[kind], text) if name not in names]
    assert not dead, "files named but not in the repository:\n" + "\n".join(dead)


def test_docs_say_nothing_about_how_the_project_is_made():
    """Papers and competitions by name; no words about the making (sessions, issue numbers, seed numbers)."""
    found = [f"{p.relative_to(ROOT)}:{n}: {line.strip()[:100]}" for p in _user_text()
             for n, line in enumerate(p.read_text().splitlines(), 1) if PROCESS_WORDS.search(line)]
    assert not found, "\n".join(found)
