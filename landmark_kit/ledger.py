"""Measured results kept in git, so the tables in docs/ are rendered from them, never typed.

A benchmark or measurement script run with ``--record`` appends its result as one JSON line to
``benchmarks/results/<name>.jsonl`` with the date, the machine (:func:`machine`) and
its command line; :func:`render` turns a ledger into ``<name>.md`` (a table plus the commands that made its
rows), which docs include as a generated block (``python -m landmark_kit.readme``). Figures measured on
another machine (a GPU box) render on any machine this way. Rows measured before the ledger existed carry a
``source`` naming the note they were transcribed from; the table marks them ``[n]`` and lists the sources
under it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .artifacts import write_text

REPO = Path(__file__).resolve().parents[1]
LEDGER = REPO / "benchmarks" / "results"

Column = str | Callable[[dict], object]


def machine() -> str:
    """One line naming the machine a figure was measured on: CPU model, cores, GPU when present."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {len(os.sched_getaffinity(0))} cores usable"
    try:
        import torch

        if torch.cuda.is_available():
            text += f", {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return text


def markdown_table(rows: list[dict]) -> str:
    """Rows of equal keys as a markdown table (the keys are the header); what generated blocks hold."""
    if not rows:
        return ""
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(row[key]) for key in header) + " |" for row in rows]
    return "\n".join(lines) + "\n"


class LedgerError(ValueError):
    """A ledger line that is not a JSON object: names the file and line."""


def record(name: str, result: dict, *, argv: list[str] | None = None, folder: str | os.PathLike = LEDGER) -> dict:
    """Append ``result`` (with date, machine and the command line) to ``folder/<name>.jsonl``; returns the
    entry. The file is rewritten whole through a temporary file, so a kill never leaves half a line."""
    argv = sys.argv if argv is None else argv
    script = Path(argv[0])
    if script.is_absolute() and script.is_relative_to(REPO):
        script = script.relative_to(REPO)
    command = shlex.join(["python", str(script), *argv[1:]])
    entry = {"date": _dt.date.today().isoformat(), "machine": machine(), "command": command, **result}
    path = Path(folder) / f"{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text() if path.is_file() else ""
    write_text(path, old + json.dumps(entry, sort_keys=False) + "\n")
    return entry


def entries(name: str, folder: str | os.PathLike = LEDGER) -> list[dict]:
    """Every entry of ``folder/<name>.jsonl``, oldest first; a bad line is a :class:`LedgerError`."""
    path = Path(folder) / f"{name}.jsonl"
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LedgerError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise LedgerError(f"{path}:{number}: a JSON object expected, got {type(row).__name__}")
        rows.append(row)
    return rows


def _cell(row: dict, column: Column) -> str:
    value = column(row) if callable(column) else row.get(column, "")
    if isinstance(value, float):  # three significant decimals for ratios, fewer as figures grow
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "" if value is None else str(value)


def render(name: str, columns: dict[str, Column], *, intro: str = "", folder: str | os.PathLike = LEDGER) -> Path:
    """``folder/<name>.md``: a table of the ledger's entries (``columns``: header -> key or function of the
    entry), then each distinct command once; transcribed rows (with a ``source``) are marked and listed."""
    rows = entries(name, folder)
    sources = list(dict.fromkeys(row["source"] for row in rows if row.get("source")))
    table = [{"date": row.get("date", "") + (f" [{sources.index(row['source']) + 1}]" if row.get("source") else ""),
              "machine": row.get("machine", ""), **{h: _cell(row, c) for h, c in columns.items()}} for row in rows]
    lines = [intro.rstrip(), ""] if intro else []
    lines += [markdown_table(table).rstrip()]  # empty for an empty ledger
    commands = list(dict.fromkeys(row["command"] for row in rows if row.get("command")))
    lines += ["", f"Commands (`--record` appends to `benchmarks/results/{name}.jsonl`):", ""]
    lines += [f"    {command}" for command in commands]
    if sources:
        lines += [""] + [f"[{n}] {source}  " for n, source in enumerate(sources, 1)]
    path = Path(folder) / f"{name}.md"
    write_text(path, "\n".join(lines).rstrip() + "\n")
    return path


@dataclass(frozen=True)
class Table:
    """What a script records to and renders: ledger ``name``, its columns (header -> key or function of an
    entry) and a line above the table."""

    name: str
    columns: dict[str, Column]
    intro: str = ""

    def render(self, folder: str | os.PathLike = LEDGER) -> Path:
        return render(self.name, self.columns, intro=self.intro, folder=folder)


def parse_args(parser: argparse.ArgumentParser, table: Table) -> argparse.Namespace:
    """``parser``'s arguments plus ``--record`` and ``--table``; with ``--table`` render and exit."""
    parser.add_argument("--record", action="store_true",
                        help=f"append the result to benchmarks/results/{table.name}.jsonl and render its .md")
    parser.add_argument("--table", action="store_true", help=f"only render benchmarks/results/{table.name}.md")
    args = parser.parse_args()
    if args.table:
        print(table.render())
        raise SystemExit(0)
    return args


def publish(table: Table, results: list[dict], record_it: bool) -> None:
    """Print each result as JSON; with ``record_it`` append them to the ledger and render its table."""
    for result in results:
        print(json.dumps(result, indent=2))
    if record_it:
        for result in results:
            record(table.name, result)
        print(table.render())
