"""Plug-in points: a stage-00 data source is one decorated function; unknown names list the registered ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from httpserver import stage00


def test_a_data_source_is_one_decorated_function(tmp_path, capsys):
    stage = stage00()

    def arguments(parser):
        parser.add_argument("--out", required=True)

    @stage.data_source("empty", "an empty competition folder", arguments)
    def empty(args):
        (Path(args.out) / "train").mkdir(parents=True)
        return {"images": 0, "failed": {}}

    assert stage.main(["empty", "--out", str(tmp_path / "r")]) == 0
    assert json.loads(capsys.readouterr().out) == {"images": 0, "failed": {}} and (tmp_path / "r" / "train").is_dir()
    stage.data_source("broken", "fails one file", arguments)(lambda args: {"failed": {"a.tar": "md5 mismatch"}})
    assert stage.main(["broken", "--out", str(tmp_path / "b")]) == 1
    assert "failed: a.tar: md5 mismatch" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        stage.main(["nope", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert all(name in err for name in ("gldv2", "revisited", "from-folders", "kaggle", "empty"))
