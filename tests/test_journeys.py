"""README journeys 2-4 executed verbatim: the shell lines of their code blocks (continuations joined, trailing
`# comments` dropped) and the files of their ```yaml blocks, with the documented placeholders substituted from
one table (a value per data set), run in a temp folder with the venv's Python on the real photos
(../shared/realdev, skipped when absent) and on a synthetic competition. Every line must exit 0 and print what
the README promises; a line that is neither run nor skipped here with its reason fails the test."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from httpserver import Server

from landmark_kit.data import image_path, read_train_csv, scan_split

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
REALDEV = ROOT.parent / "shared" / "realdev"
JOURNEYS = ("2", "4", "3")  # run order: journey 3 submits what journey 4 tuned

# The placeholder table: README name -> per data set, its value (a path relative to the run folder, where
# prepare() builds it, or a recipe) and what it is. Tiny sizes, so both data sets run in minutes on 2 CPU cores.
# R is filled by the journey's own data lines, by the GLDv2 lines (synthetic) or by `from-folders PHOTOS`
# (realdev); the other source's lines write to R-other instead, so every data line runs on both data sets.
TINY_TRAINING = ("training/synthetic-tiny.yaml", "every training feature on a small budget (about 1 min)")
PLACEHOLDERS = {
    "R": {"synthetic": ("R", "the GLDv2 lines' download of a local bucket holding COMPETITION's shards"),
          "realdev": ("R", "`from-folders PHOTOS`: all 91 photos of ../shared/realdev")},
    "PHOTOS": {"synthetic": ("photos", "COMPETITION's train photos, one folder per landmark, + distractors/"),
               "realdev": (str(REALDEV), "the flat <landmark>__<photo> folder itself")},
    "TRAIN_RECIPE.yaml": {"synthetic": TINY_TRAINING, "realdev": TINY_TRAINING},
    "V": {"synthetic": ("V", "a second synthetic competition (VALIDATION)"),
          "realdev": ("V", "from-folders of SUBSET with --half second")},
    "V2": {"synthetic": ("R", "R itself (a labelled folder: the v2.1 solutions came with the test shards)"),
           "realdev": ("V2", "from-folders of SUBSET, first half")},
}
COMPETITION = dict(landmarks=4, seed=3, train_mean=5.0, test_per_landmark=2.0, index_per_landmark=2.0, workers=1,
                   min_side=256, max_side=320)  # 13 train, 17 test, 24 index images
VALIDATION = {**COMPETITION, "landmarks": 3, "seed": 5}  # 13 train, 13 test, 8 index
# realdev's tuning folders: its landmarks of 3-5 photos and 6 distractors (29 photos; tuning cost grows with
# queries x shortlist pairs, and all of realdev as V takes 5-6 minutes per tuning run here)
SUBSET = ("berliner_dom", "ettlingen_fountain", "kyiv_dolltheater", "kyiv_maidan", "maupertuis_nle",
          "prague_ministry")
SOURCE = {"synthetic": "gldv2", "realdev": "from-folders"}  # the 00_data command that fills R
# Lines changed beyond placeholders, each with its reason.
APPENDED = {"00_data.py gldv2": (["--base-url", "{bucket}", "--no-progress"],
                                 "no internet in tests: GLDv2's bucket is a local HTTP server over shards of the "
                                 "synthetic competition (train 0-9, index 0-9, test 0-19), md5 files and metadata")}
SKIPPED: dict[str, str] = {}  # README line (as extracted) -> why it is not run; none at present
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*(\.yaml)?$")


@dataclass
class Command:
    journey: str
    text: str  # as in the README, continuation lines joined, comment dropped
    argv: list[str]


def journey_sections(text: str | None = None) -> dict[str, str]:
    """Journey number -> its text, from its bold heading (`**2. ...**`) to the next journey or section."""
    text = README.read_text() if text is None else text
    sections, current = {}, None
    for line in text.splitlines():
        heading = re.match(r"^\*\*(\d)\. ", line)
        if heading:
            current = heading.group(1)
            sections[current] = []
        elif line.startswith("## "):
            current = None
        if current:
            sections[current].append(line)
    return {k: "\n".join(v) for k, v in sections.items()}


def commands(journey: str, section: str) -> list[Command]:
    """The shell lines of a section's indented code blocks (fenced blocks hold files, not commands)."""
    found, pending, fenced = [], "", False
    for line in section.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if fenced or not line.startswith("    "):
            assert not pending, f"journey {journey}: continuation line ends its block: {pending}"
            continue
        body = line.strip()
        if body.endswith("\\"):
            pending += body[:-1].strip() + " "
            continue
        argv = shlex.split(pending + body, comments=True)
        pending = ""
        if argv:
            found.append(Command(journey, shlex.join(argv), argv))
    return found


def yaml_files(section: str) -> dict[str, str]:
    """```yaml blocks whose first line is `# NAME.yaml...`: the files the journey tells the reader to write."""
    files = {}
    for block in re.findall(r"^```yaml\n(.*?)^```", section, re.S | re.M):
        name = re.match(r"#\s*(\S+\.yaml)", block)
        assert name, f"a yaml block must start with `# NAME.yaml`: {block[:60]!r}"
        files[name.group(1).rstrip(":")] = block
    return files


def all_commands() -> list[Command]:
    sections = journey_sections()
    return [c for j in JOURNEYS for c in commands(j, sections[j])]


def placeholders_in(argv: list[str]) -> set[str]:
    return {tok.split("/")[0] for tok in argv if PLACEHOLDER.match(tok.split("/")[0])}


def test_journeys_have_commands_and_every_placeholder_is_documented_and_in_the_table():
    sections = journey_sections()
    assert set(JOURNEYS) <= set(sections)
    cmds = all_commands()
    for j in JOURNEYS:
        assert [c for c in cmds if c.journey == j], f"journey {j}: no commands found"
    used = set().union(*(placeholders_in(c.argv) for c in cmds))
    prose = "\n".join(sections[j] for j in JOURNEYS)
    assert used == set(PLACEHOLDERS), f"README placeholders {sorted(used)} vs the table {sorted(PLACEHOLDERS)}"
    for name in used:
        assert f"`{name}`" in prose, f"placeholder {name} is not explained in the journeys' text"
    assert set(SKIPPED) <= {c.text for c in cmds}, "SKIPPED names a line the README no longer has"
    assert "mine.yaml" in yaml_files(sections["2"])


def test_command_extraction_joins_continuations_and_drops_comments():
    section = ("**2. x**\n\n```yaml\n# a.yaml: note\nk: 1\n```\n\n    python s.py --a R \\\n"
               "        --b 'x y'   # comment\n    python t.py  # only a comment\n")
    got = commands("2", section)
    assert [c.argv for c in got] == [["python", "s.py", "--a", "R", "--b", "x y"], ["python", "t.py"]]
    assert yaml_files(section) == {"a.yaml": "# a.yaml: note\nk: 1\n"}


# ------------------------------------------------------------------------------------------------- data sets


def gldv2_bucket(competition: Path, root: Path) -> None:
    """A GLDv2-layout bucket holding ``competition``'s images: tar shards per split, md5 files, metadata and
    the v2.1 ground truth (the competition's solutions)."""
    for split, count in (("train", 10), ("index", 10), ("test", 20)):
        ids = scan_split(competition, split)
        for s in range(count):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as tar:
                for i in ids[s::count]:
                    tar.add(image_path(competition, split, i), f"{i[0]}/{i[1]}/{i[2]}/{i}.jpg")
            name = f"images_{s:03d}"
            (root / split).mkdir(parents=True, exist_ok=True)
            (root / split / f"{name}.tar").write_bytes(buf.getvalue())
            (root / "md5sum" / split).mkdir(parents=True, exist_ok=True)
            (root / "md5sum" / split / f"md5.{name}.txt").write_text(
                f"{hashlib.md5(buf.getvalue()).hexdigest()}  {name}.tar\n")
    train = read_train_csv(competition / "train.csv")
    (root / "metadata").mkdir()
    (root / "metadata" / "train.csv").write_text(
        "id,url,landmark_id\n" + "".join(f"{r.id},http://x/{r.id}.jpg,{r.landmark_id}\n" for r in train.itertuples()))
    clean = train.groupby("landmark_id")["id"].agg(" ".join)
    (root / "metadata" / "train_clean.csv").write_text(
        "landmark_id,images\n" + "".join(f"{k},{v}\n" for k, v in clean.items()))
    for split in ("index", "test"):
        (root / "metadata" / f"{split}.csv").write_text("id\n" + "".join(f"{i}\n" for i in scan_split(competition,
                                                                                                      split)))
    (root / "ground_truth").mkdir()
    for track in ("recognition", "retrieval"):
        shutil.copyfile(competition / f"{track}_solution.csv",
                        root / "ground_truth" / f"{track}_solution_v2.1.csv")


def photo_folders(competition: Path, out: Path) -> Path:
    """The competition's train photos in one folder per landmark, its non-landmark test photos in distractors/."""
    for r in read_train_csv(competition / "train.csv").itertuples():
        (out / f"landmark-{r.landmark_id}").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image_path(competition, "train", r.id), out / f"landmark-{r.landmark_id}" / f"{r.id}.jpg")
    solution = pd.read_csv(competition / "recognition_solution.csv", dtype=str, keep_default_na=False)
    (out / "distractors").mkdir()
    for i in solution.loc[solution["landmarks"] == "", "id"]:
        shutil.copyfile(image_path(competition, "test", i), out / "distractors" / f"{i}.jpg")
    return out


def prepare(dataset: str, run: Path, competition: Path) -> dict[str, str]:
    """Build the data set's inputs under ``run``; returns the placeholder values (paths relative to ``run``)."""
    from landmark_kit.folders import build
    from landmark_kit.synthetic import SyntheticConfig, generate

    values = {name: per_set[dataset][0] for name, per_set in PLACEHOLDERS.items()}
    if dataset == "synthetic":
        photo_folders(competition, run / values["PHOTOS"])
        generate(run / values["V"], SyntheticConfig(**VALIDATION), progress=False)
    else:
        subset = run / "subset"
        subset.mkdir()
        distractors = sorted(REALDEV.glob("distractor__*"))[:6]
        for photo in [p for name in SUBSET for p in sorted(REALDEV.glob(f"{name}__*"))] + distractors:
            (subset / photo.name).symlink_to(photo)
        build(subset, run / values["V"], half="second")
        build(subset, run / values["V2"])
    return values


def substitute(cmd: Command, values: dict[str, str], dataset: str, extra: dict[str, str]) -> list[str]:
    argv = [sys.executable if cmd.argv[0] == "python" else cmd.argv[0]]
    source = cmd.argv[2] if cmd.argv[1:2] == ["stages/00_data.py"] else None
    if source is not None and source != SOURCE[dataset]:
        values = {**values, "R": "R-other"}
    for tok in cmd.argv[1:]:
        head, sep, rest = tok.partition("/")
        argv.append(values[head] + sep + rest if head in values else tok)
    for key, (flags, _reason) in APPENDED.items():
        if key in cmd.text:
            argv += [f.format(**extra) for f in flags]
    return argv


# ------------------------------------------------------------------------------------------- printed outputs


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def check(argv: list[str], out: str, run: Path) -> None:
    """What the README promises each kind of line prints; an unknown kind of line fails (add it here)."""
    lines = out.strip().splitlines()
    script = argv[2] if argv[1] == "-m" else Path(argv[1]).name
    sub = argv[3] if argv[1] == "-m" and len(argv) > 3 else argv[2] if len(argv) > 2 else ""
    if script == "00_data.py" and sub == "gldv2":
        summary = json.loads(lines[-1])
        assert not summary["failed"] and (summary["completed"] or summary["skipped"]), summary
        root, split = run / _flag(argv, "--out"), _flag(argv, "--split")
        assert scan_split(root, split)
        wanted = {"train": ["train.csv", "train_clean.csv"], "index": [],
                  "test": ["recognition_solution.csv", "retrieval_solution.csv"]}[split]
        assert all((root / f).is_file() for f in wanted), wanted
    elif script == "00_data.py" and sub == "from-folders":
        assert json.loads(lines[-1])["landmarks"] > 0
        assert (run / _flag(argv, "--out") / "train.csv").is_file()
    elif script == "01_clean.py":
        report = json.loads(out)
        assert report["kept"] > 0 and "reasons" in report, report
        name = _flag(argv, "--name")
        assert (run / "runs" / "cleaning" / name / "train_clean.csv").is_file(), "stage 01 output not in runs/cleaning/"
    elif script == "02_train.py":
        assert lines[-1].endswith("model.pt") and (run / lines[-1]).is_file(), lines[-1:]
    elif script == "03_ensemble.py":
        printed = dict(re.findall(r"^test -> (\w+) neighbours: (\S+)$", out, re.M))
        assert set(printed) == {"train", "index"} and all((run / p).is_file() for p in printed.values()), out
    elif script == "04_predict.py":
        rec, ret = (run / p for p in lines[-2:])
        assert rec.name == "recognition.csv" and ret.name == "retrieval.csv", lines[-2:]
        assert rec.is_file() and ret.is_file()
        workdir = (run / _flag(argv, "--workdir")).resolve()
        assert rec.resolve().parent.parent == workdir / "submissions", f"{rec}: not under {workdir}/submissions/"
        if "--tune-on" in argv:
            assert (workdir / "tuned.yaml").is_file() and (workdir / "tuned-ensemble.yaml").is_file()
    elif script == "05_score.py":
        assert "GAP" in out or "mAP@100" in out, out
    elif script == "landmark_kit.transfer":
        assert "GAP" in out and "mAP@100" in out, out
        assert (run / _flag(argv, "--workdir") / "transfer.md").is_file()
    elif script == "landmark_kit.kaggle" and sub == "build":
        assert any(line.endswith("kernel/kernel-metadata.json") for line in lines), out
        assert (run / _flag(argv, "--out") / "kernel" / "kernel-metadata.json").is_file()
    elif script == "landmark_kit.kaggle" and sub == "run-local":
        submission = run / lines[-1]
        assert submission.suffix == ".csv" and submission.is_file(), lines[-1:]
        valid = subprocess.run([sys.executable, str(ROOT / "stages" / "05_score.py"), "--validate", str(submission),
                                "--data-root", str(run / _flag(argv, "--competition-root"))],
                               capture_output=True, text=True, cwd=run)
        assert valid.returncode == 0, valid.stdout + valid.stderr
    elif script == "landmark_kit.kaggle" and sub == "push":
        assert "kaggle kernels push" in out, out
    elif script == "landmark_kit.kaggle" and sub == "estimate":
        assert out.startswith("Rates measured on") and "hours" in out, out
    else:
        pytest.fail(f"no output check for README line {shlex.join(argv)}: add one to tests/test_journeys.py")


# ----------------------------------------------------------------------------------------------------- run


DATASETS = ["synthetic", pytest.param("realdev", marks=pytest.mark.skipif(
    not REALDEV.is_dir(), reason=f"{REALDEV} absent: the real-photo journeys need ../shared/realdev"))]


@pytest.mark.slow
@pytest.mark.parametrize("dataset", DATASETS)
def test_readme_journeys_run_verbatim(dataset, tmp_path):
    from landmark_kit.synthetic import SyntheticConfig, generate

    run = tmp_path / "run"
    run.mkdir()
    (run / "stages").symlink_to(ROOT / "stages")  # the README runs from a checkout's root; recipes resolve via the kit
    competition = tmp_path / "competition"
    generate(competition, SyntheticConfig(**COMPETITION), progress=False)
    values = prepare(dataset, run, competition)
    sections = journey_sections()
    for name, body in yaml_files(sections["2"]).items():
        (run / name).write_text(body)
    gldv2_bucket(competition, tmp_path / "bucket")
    bucket = Server(tmp_path / "bucket")  # GLDv2's bucket over HTTP, with Range, on loopback
    extra = {"bucket": bucket.url}  # kaggle build's pip download of the wheels Kaggle lacks is real (PyPI)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    ran, timings, failures = [], [], []
    try:
        for cmd in all_commands():
            if cmd.text in SKIPPED:
                continue
            argv = substitute(cmd, values, dataset, extra)
            start = time.perf_counter()
            done = subprocess.run(argv, capture_output=True, text=True, cwd=run, env=env, timeout=1800)
            timings.append((round(time.perf_counter() - start, 1), cmd.text))
            if done.returncode != 0:
                tail = "\n    ".join((done.stderr or done.stdout).strip().splitlines()[-3:]) or "(no output)"
                failures.append(f"journey {cmd.journey}: `{cmd.text}` exited {done.returncode}:\n    {tail}")
                break  # later lines build on this one
            check(argv, done.stdout, run)
            ran.append(cmd.text)
    finally:
        bucket.close()
        print(f"{dataset}: seconds per README line:\n" + "\n".join(f"{s:7.1f}  {t}" for s, t in timings))
    assert not failures, "\n".join(failures)
    missed = [c.text for c in all_commands() if c.text not in ran and c.text not in SKIPPED]
    assert not missed, f"README lines neither run nor skipped with a reason: {missed}"
