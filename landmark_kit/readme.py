"""README blocks generated from run outputs, never pasted by hand.

A block in a markdown file looks like::

    <!-- generated from runs/tr-rd/transfer.md -->
    ...whatever the last refresh wrote...
    <!-- end generated -->

``python -m landmark_kit.readme [README.md ...]`` replaces each block's body with the current content of the
file it names (a path relative to the repository root), so tables in the README are always those a script
wrote from a run; a named file that does not exist is an error naming the block. Scripts that write such
files head them with :func:`landmark_kit.ledger.machine` so the reader knows where the figures come from.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from .artifacts import write_text
from .ledger import REPO, machine, markdown_table  # noqa: F401 (machine, markdown_table: re-exported)

BLOCK = re.compile(r"(<!-- generated from (?P<path>\S+) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.S)


def refresh(markdown: str | os.PathLike, root: str | os.PathLike = REPO) -> int:
    """Rewrite every generated block of ``markdown`` from the file it names; returns how many were found."""
    path, root = Path(markdown), Path(root)
    text = path.read_text()
    count = 0

    def body(match: re.Match) -> str:
        nonlocal count
        source = root / match["path"]
        if not source.is_file():
            raise FileNotFoundError(f"{path}: block 'generated from {match['path']}': {source} does not exist "
                                    f"(run the command written above the block first)")
        count += 1
        content = source.read_text()
        return f"{match.group(1)}{content if content.endswith(chr(10)) else content + chr(10)}{match.group(4)}"

    new = BLOCK.sub(body, text)
    if new != text:
        write_text(path, new)
    return count


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", default=[str(REPO / "README.md")])
    args = ap.parse_args(argv)
    for name in args.files:
        print(f"{name}: {refresh(name)} generated block(s) refreshed")


if __name__ == "__main__":
    main()
