"""How long a kernel takes: each stage's work counted for given split sizes, times rates measured on this
machine (or read from a YAML measured on another), against the competition's time limit.

Rates measured here: each member group's forward img/s at its input side (random inputs, the extraction
code path: channels-last, float16 autocast on CUDA), JPEG decode + resize img/s of sample images with the
ensemble's loader workers, local features img/s and verified pairs/s with the recipe's settings, and exact
search GFLOP/s. Extraction runs at the slower of forward and decode (they overlap).

    python -m landmark_kit.kaggle estimate --ensemble E [--recipe R] --test 117577 --index 761757 --train 1580470
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from .recipes import RecipeError


@dataclass
class Rates:
    """Throughputs of one machine. ``forward`` maps a member group (``"<side>px[-aspect]"``) to img/s."""

    machine: str = ""
    forward: dict[str, float] = field(default_factory=dict)
    decode: float = 0.0  # img/s, all loader workers together
    local: float = 0.0  # local-feature extraction img/s
    verify: float = 0.0  # verified pairs/s
    search_gflops: float = 0.0  # exact inner-product search


def member_groups(ensemble) -> dict[str, list]:
    """Members decoded together, keyed ``"<side>px[-aspect]"`` (stage 03's ``ensemble.input_group``)."""
    from .ensemble import input_group

    groups: dict[str, list] = {}
    for m in ensemble.members:
        side, aspect = input_group(m)
        groups.setdefault(f"{side}px" + ("-aspect" if aspect else ""), []).append(m)
    return groups


def ensemble_dim(ensemble) -> int:
    """Width of the concatenated descriptor (each member's output on one small image), for the search cost."""
    from .ensemble import build_member

    with torch.inference_mode():
        return sum(build_member(m, torch.device("cpu"))(torch.rand(1, 3, 64, 64)).shape[1] for m in ensemble.members)


def _rate(value: float) -> float:
    """Three significant digits: 0.123 img/s for a big CPU member, 1230 for a GPU."""
    return float(f"{value:.3g}")


def _show(value: float) -> str:
    """A rate as the table prints it: thousands separated, three significant digits below 100."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _timed(fn, repeats: int) -> float:
    """Seconds per call of ``fn`` after one warm-up call."""
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def measure(ensemble, recipe, sample_root: Path, split: str = "test", images: int = 32, batch: int = 16) -> Rates:
    """Rates of this machine for ``ensemble`` and ``recipe`` (a PredictConfig), on ``images`` sample images of
    ``sample_root/<split>``."""
    from torch.utils.data import DataLoader

    from .checkpoint import resolve_device
    from .data import ImageDataset, collate_skip_bad, scan_split
    from .ensemble import build_member
    from .extract import member_tta, square_transform
    from .local import extract_local
    from .ledger import machine
    from .search import knn
    from .verify import verify_pairs

    ids = scan_split(sample_root, split)[:images]
    if len(ids) < 2:
        raise RecipeError(f"{sample_root}/{split}: need at least 2 sample images to measure rates")
    device = resolve_device(ensemble.device)
    amp = torch.autocast(device.type, dtype=torch.float16, enabled=ensemble.amp and device.type == "cuda")
    rates = Rates(machine=machine() + (f", {torch.cuda.get_device_name()}" if device.type == "cuda" else ""))
    largest = 0
    for name, members in member_groups(ensemble).items():
        side = int(name.split("px")[0])
        largest = max(largest, side)
        x = torch.randint(0, 256, (batch, 3, side, side), dtype=torch.uint8, device=device)
        x = x.contiguous(memory_format=torch.channels_last)
        seconds = 0.0
        for m in members:
            tta = member_tta(build_member(m, device), m.image_size, m.scales, m.flip, device)
            with torch.inference_mode(), amp:
                seconds += _timed(lambda: tta(x).float().cpu(), 2)
        rates.forward[name] = _rate(batch / seconds)
    dataset = ImageDataset(sample_root, split, ids, square_transform(largest), max_side=largest)
    loader = DataLoader(dataset, batch_size=batch, num_workers=ensemble.workers, collate_fn=collate_skip_bad,
                        persistent_workers=ensemble.workers > 0)
    rates.decode = _rate(len(ids) / _timed(lambda: [None for _ in loader], 1))  # workers started once
    with tempfile.TemporaryDirectory() as tmp:  # the stage's own code paths: loader workers, joblib workers
        start = time.perf_counter()
        store = extract_local(recipe.local, sample_root, split, ids, tmp, progress=False)
        rates.local = _rate(len(ids) / (time.perf_counter() - start))
        pairs = [(a, b) for i, a in enumerate(ids) for b in ids[i + 1:]][:200]
        start = time.perf_counter()
        verify_pairs(pairs, store, recipe.verify)
        rates.verify = _rate(len(pairs) / (time.perf_counter() - start))
    queries = np.random.default_rng(0).standard_normal((1024, 512)).astype(np.float32)
    database = np.random.default_rng(1).standard_normal((20000, 512)).astype(np.float32)
    seconds = _timed(lambda: knn(queries, database, 100), 1)
    rates.search_gflops = _rate(2 * 1024 * 20000 * 512 / seconds / 1e9)
    return rates


def load_rates(path) -> Rates:
    """Rates measured elsewhere (a YAML written by ``--save-rates``)."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    unknown = set(raw) - set(asdict(Rates()))
    if unknown:
        raise RecipeError(f"{path}: unknown rate field(s) {sorted(unknown)}")
    return Rates(**raw)


def estimate(ensemble, recipe, rates: Rates, test: int, index: int, train: int, dim: int = 512,
             limit_hours: float = 12.0, bundled: tuple[str, ...] = ()) -> list[dict]:
    """Rows ``{step, work, rate, hours}`` for every stage of the kernel, then the total against the limit.
    ``bundled``: splits whose descriptors come with the bundle (not extracted; still searched)."""
    unknown = set(bundled) - {"train", "index"}
    if unknown:
        raise RecipeError(f"only train and index descriptors can be bundled, found {sorted(unknown)}")
    rows = []
    for name, members in member_groups(ensemble).items():
        if name not in rates.forward:
            raise RecipeError(f"no forward rate for member group {name} in the rates ({sorted(rates.forward)})")
        rate = min(rates.forward[name], rates.decode) if rates.decode else rates.forward[name]
        images = test + (0 if "index" in bundled else index) + (0 if "train" in bundled else train)
        names = ", ".join(m.name for m in members) if len(members) <= 3 else f"{len(members)} members"
        rows.append({"step": f"extract {name} ({names})",
                     "work": f"{images:,} images", "rate": f"{_show(rate)} img/s", "hours": images / rate / 3600})
    search = 2 * test * (train + index) * dim + 2 * index * train * dim * recipe.rerank
    searched = "test x train" + (" + index" if index else "") + (", index x train" if recipe.rerank and index else "")
    rows.append({"step": f"exact search ({searched})",
                 "work": f"{search / 1e12:,.1f} TFLOP", "rate": f"{_show(rates.search_gflops)} GFLOP/s",
                 "hours": search / (rates.search_gflops * 1e9) / 3600})
    global_rerank = [(name, min(top, index)) for name, top in (("k-reciprocal", recipe.kreciprocal),
                                                               ("SuperGlobal", recipe.superglobal),
                                                               ("diffusion", recipe.diffusion))
                     if top > 0 and index]
    if global_rerank:  # similarities within each query's shortlist, then small weighted sums; diffusion also
        # solves a dense linear system of the query and its shortlist, about 2/3 (top + 1)^3 per query
        flops = sum(2 * test * (top + 1) ** 2 * dim + (2 * test * (top + 1) ** 3 / 3 if name == "diffusion" else 0)
                    for name, top in global_rerank)
        rows.append({"step": f"global re-ranking ({', '.join(f'{n} of top {t}' for n, t in global_rerank)})",
                     "work": f"{flops / 1e12:,.2f} TFLOP", "rate": f"{_show(rates.search_gflops)} GFLOP/s",
                     "hours": flops / (rates.search_gflops * 1e9) / 3600})
    shortlist, rerank = min(recipe.verify_shortlist, train), min(recipe.local_rerank, index)
    pairs = test * (shortlist + rerank)
    if pairs:
        images = test + min(train, test * shortlist) + min(index, test * rerank)
        rows.append({"step": "local features (test + shortlisted, at most)", "work": f"{images:,} images",
                     "rate": f"{_show(rates.local)} img/s", "hours": images / rates.local / 3600})
        rows.append({"step": f"spatial verification (shortlist {shortlist}, re-ranking {rerank})", "work": f"{pairs:,} pairs",
                     "rate": f"{_show(rates.verify)} pairs/s", "hours": pairs / rates.verify / 3600})
    total = sum(r["hours"] for r in rows)
    rows.append({"step": "total", "work": "", "rate": "",
                 "hours": total, "fits": f"{'yes' if total <= limit_hours else 'no'} (limit {limit_hours:g} h)"})
    return rows


def steps_table(rows: list[dict]) -> str:
    """The estimate's rows (from :func:`estimate`) as a markdown table."""
    from .ledger import markdown_table

    return markdown_table([{"step": r["step"], "work": r["work"], "rate": r["rate"],
                            "hours": f"{r['hours']:.2f}" + (f" - fits: {r['fits']}" if "fits" in r else "")}
                           for r in rows])


def format_rows(rows: list[dict], rates: Rates) -> str:
    """The estimate as a markdown table, the machine named."""
    return f"Rates measured on {rates.machine}.\n\n{steps_table(rows)}"
