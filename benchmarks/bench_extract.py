"""Descriptor extraction (``describe_split``: DataLoader workers decode while the model runs) against the
bare model forward on tensors already in memory, measured in one run. Target ratio >= 0.9 (issue 6).

    python benchmarks/bench_extract.py [--data runs/demo/synthetic --images 256 --size 224 --workers 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch

from landmark_kit.data import ImageDataset
from landmark_kit.extract import describe_split, square_transform
from landmark_kit.models import GlobalDescriptor, create_backbone, input_normalisation
from landmark_kit.synthetic import SyntheticConfig, generate
from landmark_kit.train import resolve_device


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="runs/demo/synthetic")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    data = Path(args.data)
    if not (data / "train.csv").is_file():
        generate(data, SyntheticConfig(), progress=False)
    ids = pd.read_csv(data / "train.csv", dtype={"id": str})["id"].tolist()[: args.images]
    device = resolve_device(args.device)
    model = GlobalDescriptor(create_backbone("tf_efficientnet_lite0", "imagenet-lite")).to(device).eval()

    dataset = ImageDataset(data, "train", ids, square_transform(args.size, *input_normalisation(model.backbone)),
                           max_side=args.size)
    tensors = torch.stack([dataset[i][0] for i in range(len(ids))])
    with torch.inference_mode():
        model(tensors[: args.batch_size].to(device))  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for s in range(0, len(tensors), args.batch_size):
            model(tensors[s: s + args.batch_size].to(device)).cpu()
        bare = len(tensors) / (time.perf_counter() - start)
    start = time.perf_counter()
    describe_split(model, data, "train", ids, args.size, args.batch_size, args.workers, str(device))
    full = len(ids) / (time.perf_counter() - start)
    print(json.dumps({"images": len(ids), "size": args.size, "workers": args.workers, "device": str(device),
                      "bare_forward_img_per_s": round(bare, 1), "extract_img_per_s": round(full, 1),
                      "ratio": round(full / bare, 3)}, indent=2))


if __name__ == "__main__":
    main()
