"""The results ledger: measured rows kept in git, tables in docs rendered from them and kept in step."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil

import pytest

from landmark_kit import ledger
from landmark_kit.readme import REPO, refresh


def test_record_then_render_a_table_with_commands_and_sources(tmp_path):
    ledger.record("b", {"n": 1200, "rate": 0.8125}, argv=[str(REPO / "benchmarks" / "x.py"), "--a", "1 2"],
                  folder=tmp_path)
    (tmp_path / "b.jsonl").write_text((tmp_path / "b.jsonl").read_text() + json.dumps(
        {"date": "2026-11-26", "machine": "lent box", "command": "python x.py --gpu", "source": "note 5",
         "n": 8000, "rate": 1.44}) + "\n")
    rows = ledger.entries("b", tmp_path)
    assert rows[0]["command"] == "python benchmarks/x.py --a '1 2'" and "cores usable" in rows[0]["machine"]
    text = ledger.render("b", {"pairs": "n", "ratio": "rate", "twice": lambda r: 2 * r["n"]},
                         intro="Intro.", folder=tmp_path).read_text()
    lines = text.splitlines()
    assert lines[0] == "Intro." and lines[2] == "| date | machine | pairs | ratio | twice |"
    assert re.fullmatch(r"\| \d{4}-\d\d-\d\d \| .*cores usable \| 1,200 \| 0.812 \| 2,400 \|", lines[4])
    assert lines[5] == "| 2026-11-26 [1] | lent box | 8,000 | 1.440 | 16,000 |"
    assert "    python benchmarks/x.py --a '1 2'" in lines and "    python x.py --gpu" in lines
    assert lines[-1].startswith("[1] note 5")


def test_a_bad_ledger_line_names_file_and_line(tmp_path):
    (tmp_path / "b.jsonl").write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(ledger.LedgerError, match=r"b.jsonl:2: a JSON object expected"):
        ledger.entries("b", tmp_path)
    (tmp_path / "b.jsonl").write_text('{"a": 1\n')
    with pytest.raises(ledger.LedgerError, match=r"b.jsonl:1: not JSON"):
        ledger.entries("b", tmp_path)


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TABLED = sorted(p.stem for p in (REPO / "benchmarks").glob("*.py") if "\nTABLE = ledger.Table(" in p.read_text())


def test_every_benchmark_records():
    assert {"bench_extract", "bench_gldv2", "bench_scoring", "bench_search", "bench_train", "bench_verify",
            "compare_cleaning", "bench_memory"} <= set(TABLED)


@pytest.mark.parametrize("script", TABLED)
def test_committed_tables_are_rendered_from_their_ledgers(script, tmp_path):
    """Nobody edited a results table by hand: re-rendering each committed ledger gives the committed .md."""
    module = _script(script)
    folder = tmp_path / "results"
    shutil.copytree(ledger.LEDGER, folder)
    path = module.TABLE.render(folder)
    assert path.parent == folder and len(ledger.entries(path.stem, folder)) >= 1
    assert path.read_text() == (ledger.LEDGER / path.name).read_text()


def test_docs_blocks_from_tracked_results_are_up_to_date(tmp_path):
    """Blocks generated from benchmarks/results (tracked, unlike runs/) match their files in this checkout."""
    for page in [REPO / "README.md", REPO / "kernels" / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = page.read_text()
        tracked = re.sub(r"<!-- generated from (?!benchmarks/results/)\S+ -->\n.*?<!-- end generated -->", "",
                         text, flags=re.S)
        if "<!-- generated from benchmarks/results/" not in tracked:
            continue
        copy = tmp_path / page.name
        copy.write_text(tracked)
        refresh(copy, REPO)
        assert copy.read_text() == tracked, f"{page}: run python -m landmark_kit.readme {page.relative_to(REPO)}"


def test_scripts_get_record_and_table_flags_and_print_results(capsys, monkeypatch):
    import argparse
    import sys

    table = ledger.Table("never-written", {"n": "n"})
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=3)
    monkeypatch.setattr(sys, "argv", ["x.py", "--record"])
    args = ledger.parse_args(parser, table)
    assert args.record and not args.table and args.n == 3
    ledger.publish(table, [{"n": 1}, {"n": 2}], record_it=False)
    assert [json.loads(chunk) for chunk in capsys.readouterr().out.replace("}\n{", "}\x00{").split("\x00")] == [
        {"n": 1}, {"n": 2}]
    assert not (ledger.LEDGER / "never-written.jsonl").exists()
