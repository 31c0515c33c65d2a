"""Throughput of Inception feature extraction (the FID/KID/precision-recall backbone).

Exact command (CPU; pin threads so numbers are comparable)::

    OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/metrics_inception_speed.py --num-images 64 --resolution 32 --bf16

Prints one JSON line per configuration: load time (SHA-1 check + ``torch.jit.load``), the first
call (one-off warm-up), and steady-state images/s. Images are uint8 ``resolution``-px RGB, upsampled
to 299 as FID requires, so the cost barely depends on ``resolution``. ``--bf16`` also times a
bfloat16 channels_last variant for information only (FID features must stay float32).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from prodimg.metrics.inception import InceptionFeatureExtractor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()

    images = np.random.default_rng(0).integers(
        0, 256, size=(args.num_images, args.resolution, args.resolution, 3), dtype=np.uint8
    )
    common = {
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "resolution": args.resolution,
        "num_images": args.num_images,
        "loadavg_1min": os.getloadavg()[0],
    }

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    extractor = InceptionFeatureExtractor(device=args.device, batch_size=args.batch_sizes[0])
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    reference = extractor(images[: args.batch_sizes[0]])
    sync()
    first_s = time.perf_counter() - t0
    print(json.dumps({**common, "load_s": round(load_s, 3), "first_call_s": round(first_s, 3)}), flush=True)

    for batch_size in args.batch_sizes:
        extractor.batch_size = batch_size
        extractor(images[:batch_size])  # warm this shape
        sync()
        t0 = time.perf_counter()
        feats = extractor(images)
        sync()
        elapsed = time.perf_counter() - t0
        print(
            json.dumps(
                {
                    **common,
                    "variant": "fp32",
                    "batch_size": batch_size,
                    "images_per_s": round(len(images) / elapsed, 2),
                }
            ),
            flush=True,
        )

    if args.bf16:
        model = extractor.model
        with (
            torch.inference_mode(),
            torch.autocast(device_type=torch.device(args.device).type, dtype=torch.bfloat16),
        ):
            x = extractor.preprocess(images[: args.batch_sizes[0]]).contiguous(
                memory_format=torch.channels_last
            )
            model(x)
            t0 = time.perf_counter()
            for start in range(0, len(images), args.batch_sizes[0]):
                x = extractor.preprocess(images[start : start + args.batch_sizes[0]])
                out = model(x.contiguous(memory_format=torch.channels_last))
            sync()
            elapsed = time.perf_counter() - t0
        rel_err = float(
            (out.float().cpu().numpy() - feats[-len(out) :]).__abs__().max() / np.abs(feats).max()
        )
        print(
            json.dumps(
                {
                    **common,
                    "variant": "bf16-autocast-channels_last",
                    "batch_size": args.batch_sizes[0],
                    "images_per_s": round(len(images) / elapsed, 2),
                    "max_rel_err_vs_fp32": rel_err,
                }
            ),
            flush=True,
        )
    del reference


if __name__ == "__main__":
    main()
