"""Descriptor extraction (``describe_split``: DataLoader workers decode JPEGs into uint8 tensors while the model
runs; scaling, normalisation and float16 autocast on the device) against the bare model forward, measured in one
run. The limit runs the same wrapped model, under the same autocast and channels-last (NHWC) memory format, on
uint8 batches already on the device (the NCHW forward is timed too: ``nhwc_speedup``), so the ratio is the share of the model's speed that decoding, transfer and bookkeeping leave. Target >= 0.9.
``--images`` larger than the split cycles its ids, so worker start-up is amortised as in a real pass.

    python benchmarks/bench_extract.py [--data runs/demo/synthetic --images 256 --size 224 --workers 2]

``--record`` appends the result to ``benchmarks/results/extract.jsonl`` and renders ``extract.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from landmark_kit import ledger
from landmark_kit.data import ImageDataset
from landmark_kit.extract import MultiScale, describe_split, square_transform
from landmark_kit.models import GlobalDescriptor, create_backbone, input_normalisation
from landmark_kit.synthetic import SyntheticConfig, generate
from landmark_kit.checkpoint import resolve_device


COLUMNS = {
    "device": "device",
    "model, size, scales": lambda r: f"{r['model']}, {r['size']}{' aspect' if r.get('aspect') else ''}, {r['scales']}",
    "decode": "decode", "images": "images", "workers": "workers", "layout": lambda r: r.get("layout", "NHWC"),
    "bare forward img/s": "bare_forward_img_per_s", "extraction img/s": "extract_img_per_s", "ratio": "ratio",
}


TABLE = ledger.Table("extract", COLUMNS,
                     "Extraction against the bare forward of the same wrapped model in the same run (target ratio >= 0.9).")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="runs/demo/synthetic")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0],
                    help="multi-scale TTA as in an ensemble member, e.g. 0.75 1 1.25 (smlyaka 2019)")
    ap.add_argument("--aspect", action="store_true",
                    help="aspect-ratio buckets of about size x size pixels (the bare forward stays square)")
    ap.add_argument("--decode", default="auto", choices=["auto", "cpu", "device"],
                    help="where JPEGs are decoded: loader workers, or the model's device (nvjpeg on CUDA)")
    ap.add_argument("--model", default="tf_efficientnet_lite0",
                    help="timm name; ImageNet weights for the lite models, random for others (speed is the same)")
    args = ledger.parse_args(ap, TABLE)
    data = Path(args.data)
    if not (data / "train.csv").is_file():
        generate(data, SyntheticConfig(), progress=False)
    split_ids = pd.read_csv(data / "train.csv", dtype={"id": str})["id"].tolist()
    ids = (split_ids * (args.images // len(split_ids) + 1))[: args.images]
    device = resolve_device(args.device)
    weights = "imagenet-lite" if "lite" in args.model else None
    model = GlobalDescriptor(create_backbone(args.model, weights)).to(device).eval()
    amp = torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda")

    wrapped = MultiScale(model, args.size, args.scales, False, *input_normalisation(model.backbone)).to(device)
    loaded = ImageDataset(data, "train", ids[: min(len(ids), 8 * args.batch_size)],
                          square_transform(wrapped.input_size()), max_side=wrapped.input_size())
    batch = torch.stack([loaded[i][0] for i in range(len(loaded))]).to(device)

    def forward_rate(memory_format: torch.memory_format) -> float:
        """Bare forward img/s of the wrapped model with weights and inputs in ``memory_format``."""
        net, inputs = wrapped.to(memory_format=memory_format), batch.contiguous(memory_format=memory_format)
        with torch.inference_mode(), amp:
            net(inputs[: args.batch_size])  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for s in range(0, len(ids), args.batch_size):
                offset = s % len(inputs)
                net(inputs[offset: offset + args.batch_size]).float().cpu()
        return len(ids) / (time.perf_counter() - start)

    nchw = forward_rate(torch.contiguous_format)
    bare = forward_rate(torch.channels_last)  # the limit: describe_split runs NHWC too
    start = time.perf_counter()
    describe_split(model, data, "train", ids, args.size, args.batch_size, args.workers, str(device), args.scales,
                   aspect=args.aspect, decode=args.decode)
    full = len(ids) / (time.perf_counter() - start)
    result = {"model": args.model, "images": len(ids), "size": args.size, "aspect": args.aspect, "scales": args.scales,
              "batch_size": args.batch_size, "workers": args.workers, "decode": args.decode,
              "device": str(device), "nchw_forward_img_per_s": round(nchw, 1), "layout": "NHWC",
              "bare_forward_img_per_s": round(bare, 1), "nhwc_speedup": round(bare / nchw, 2),
              "extract_img_per_s": round(full, 1), "ratio": round(full / bare, 3)}
    ledger.publish(TABLE, [result], args.record)


if __name__ == "__main__":
    main()
