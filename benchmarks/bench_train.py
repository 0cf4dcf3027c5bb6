"""Stage-02 training throughput (``train``: loader workers decoding + resizing, device augmentation, forward,
backward, optimizer, checkpoints, logging) against the bare forward + backward + optimizer step of the same
model, head and recipe (gradient clipping included) on the same batches already decoded on the device,
measured in one run, and that bare step plus the recipe's device augmentation (the rest of the gap is the loader). Target >= 0.9 where
the loader has cores of its own (a GPU box). On a CPU box the workers decode on the cores that train, so the
benchmark also times the loader's per-image job in one process and reports the shared-core bound
1 / (1/augmented + 1/decode) and the train rate as a ratio of it. The train figure is the main epochs' img/s
from the run's ``log.csv``.

    python benchmarks/bench_train.py [--data runs/demo/synthetic --recipe training/synthetic-lite0.yaml --epochs 2]

``--record`` appends the result to ``benchmarks/results/train.jsonl`` and renders ``train.md``.
"""

from __future__ import annotations

import argparse
import csv
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from landmark_kit import ledger
from landmark_kit.augment import DeviceAugment
from landmark_kit.data import ImageDataset, read_train_csv
from landmark_kit.extract import ShapedDataset
from landmark_kit.models import input_normalisation
from landmark_kit.recipes import load_recipe
from landmark_kit.synthetic import SyntheticConfig, generate
from landmark_kit.train import TrainConfig, Trainable, build_model, freeze_stages, resolve_device, train


COLUMNS = {
    "device": "device",
    "recipe": lambda r: f"`{r['recipe']}`" + (f" `{' '.join(r['set'])}`" if r.get("set") else ""),
    "workers": "workers",
    "bare step img/s": "bare_train_step_img_per_s", "+ device augmentation": "with_device_augment_img_per_s",
    "loader decode (1 process)": "loader_decode_img_per_s_one_process",
    "shared-core bound": "shared_core_bound_img_per_s", "train img/s": "train_img_per_s",
    "ratio to bare": "ratio", "ratio to bound": "ratio_of_shared_core_bound",
}


TABLE = ledger.Table("train", COLUMNS,
                     "Stage 02 training against the bare step of the same model in the same run (target ratio to bare >= "
                     "0.9 where the loader has cores of its own).")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="runs/demo/synthetic")
    ap.add_argument("--recipe", default="training/synthetic-lite0.yaml")
    ap.add_argument("--epochs", type=int, default=2, help="main epochs of the timed run (no final stage)")
    ap.add_argument("--steps", type=int, default=20, help="bare steps timed after 2 warm-up steps")
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="recipe fields overridden, values in YAML: pretrained=false sides=[64] batch_size=8")
    args = ledger.parse_args(ap, TABLE)
    data = Path(args.data)
    if not (data / "train.csv").is_file():
        generate(data, SyntheticConfig(), progress=False)
    overrides = {key: yaml.safe_load(value) for key, _, value in (item.partition("=") for item in args.set)}
    cfg = load_recipe(TrainConfig, args.recipe, {**overrides, "epochs": args.epochs, "final_epochs": 0,
                                                  "final_sides": [], "val_queries": 0, "checkpoint_every": 0})
    side = max(cfg.sides or [cfg.image_size])
    device = resolve_device(cfg.device)
    train_df = read_train_csv(data / "train.csv")
    _, targets, counts = np.unique(train_df["landmark_id"].to_numpy(), return_inverse=True, return_counts=True)
    net, head = build_model(cfg, counts)
    frozen = freeze_stages(net.backbone, cfg.freeze_stages)
    module = Trainable(net, head, DeviceAugment("none", *input_normalisation(net.backbone)), cfg).to(device)
    net.to(memory_format=torch.channels_last)
    module.train()
    for m in frozen:
        m.eval()
    base = ImageDataset(data, "train", train_df["id"].tolist()[: cfg.batch_size * 4], max_side=2 * side)
    shaped = ShapedDataset(base, [(side, side)] * len(base))
    start = time.perf_counter()
    items = [shaped[i][0] for i in range(len(shaped))]  # the loader's whole per-image job: decode + resize
    decode = len(items) / (time.perf_counter() - start)
    batches = torch.stack(items).to(device).view(4, cfg.batch_size, 3, side, side)
    labels = torch.as_tensor(targets[: cfg.batch_size * 4]).to(device).view(4, cfg.batch_size)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9)

    def step(i: int) -> None:
        loss, _ = module(batches[i % 4], labels[i % 4])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:  # as the trainer does, so the gap is the loader and bookkeeping only
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()

    def rate() -> float:
        for i in range(2):
            step(i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for i in range(args.steps):
            step(i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return args.steps * cfg.batch_size / (time.perf_counter() - start)

    bare = rate()
    module.augment = DeviceAugment(cfg.augment, *input_normalisation(net.backbone)).to(device).train()
    augmented = rate()  # the same steps with the recipe's device augmentation: what is left is the loader
    with tempfile.TemporaryDirectory() as tmp:
        train(cfg, data, tmp, progress=False)
        rows = list(csv.DictReader(io.StringIO((Path(tmp) / "log.csv").read_text())))
    full = float(np.mean([float(r["img_s"]) for r in rows]))
    shared = 1.0 / (1.0 / augmented + 1.0 / decode)  # best possible when decoding takes the training's own cores
    ledger.publish(TABLE, [{"recipe": args.recipe, **({"set": args.set} if args.set else {}), "model": cfg.model,
                              "side": side, "batch_size": cfg.batch_size,
                              "workers": cfg.workers, "device": str(device), "augment": cfg.augment,
                              "bare_train_step_img_per_s": round(bare, 1),
                              "with_device_augment_img_per_s": round(augmented, 1),
                              "train_img_per_s": round(full, 1), "per_epoch": [float(r["img_s"]) for r in rows],
                              "ratio": round(full / bare, 3),
                              "loader_decode_img_per_s_one_process": round(decode, 1),
                              "shared_core_bound_img_per_s": round(shared, 1),
                              "ratio_of_shared_core_bound": round(full / shared, 3)}], args.record)


if __name__ == "__main__":
    main()
