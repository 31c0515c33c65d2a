"""Training throughput of train_product_gan (images/s), FLOPs per step, MFU and peak memory.

    python benchmarks/train_throughput.py                                   # CPU: 32 and 64 px, fp32 and bf16
    python benchmarks/train_throughput.py --device cuda --resolutions 64 128 256 --precisions bf16 \
        --peak_tflops 989                                                  # H100 SXM dense bf16 -> MFU

Each (resolution, precision) runs in its own process (clean peak-memory figures) through the real
``prodimg.training.gan.GANTrainer.train_step``: preset generator and discriminator for the
resolution, a 256-wide 4-layer CLIP text encoder (random weights; speed does not depend on them),
a synthetic dataset of ``2 x batch`` PNG images, all training options at their defaults
(DiffAugment, matching-aware loss, condition dropout, EMA, lazy R1 every 16 steps). Batches are
loaded before timing, so the figures are the training step alone (no image decoding).

Reported per configuration (one JSON line each, then a table):

- ``step_s``: a regular step; ``r1_step_s``: a step with the R1 penalty; images/s uses the
  amortised step ``(15 step_s + r1_step_s) / 16`` (with the default ``--r1_interval 16``);
- ``flops_per_step``: counted with ``torch.utils.flop_counter.FlopCounterMode`` over one regular and
  one R1 step (amortised the same way; matmuls, convolutions and attention, forward and backward);
  ``tflops``: achieved, and ``mfu`` = achieved / ``--peak_tflops`` when given;
- ``peak_memory_mb``: ``torch.cuda.max_memory_allocated`` on CUDA, the process's peak RSS on CPU
  (which includes the Python libraries, about 1 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build_fixture(root: Path, resolution: int, batch_size: int, text_width: int) -> tuple[Path, Path]:
    import datasets
    import numpy as np
    from PIL import Image
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from prodimg.text import load_clip_tokenizer

    rng = np.random.default_rng(0)
    colors = ["red", "blue", "green", "black", "white", "pink", "brown", "gray"]
    items = ["dress", "bag", "sneaker", "shirt", "coat", "sandal", "pullover", "trousers"]
    n = 2 * batch_size
    images = [
        Image.fromarray((rng.random((resolution, resolution, 3)) * 255).astype("uint8")) for _ in range(n)
    ]
    texts = [f"{colors[i % 8]} striped {items[(i // 8) % 8]}, product photo" for i in range(n)]
    data = datasets.Dataset.from_dict(
        {"image": images, "text": texts},
        features=datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")}),
    )
    data_dir = root / "data"
    datasets.DatasetDict({"train": data}).save_to_disk(str(data_dir))
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=text_width,
        intermediate_size=4 * text_width,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=text_width,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    te_dir = root / "clip"
    CLIPTextModelWithProjection(config).save_pretrained(te_dir / "text_encoder")
    load_clip_tokenizer().save_pretrained(te_dir / "tokenizer")
    return data_dir, te_dir


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_single(opts) -> dict:
    import resource

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from prodimg.training.gan import GANTrainer, build_parser
    from prodimg.training.sampler import endless_batches

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data_dir, te_dir = build_fixture(tmp, opts.resolution, opts.batch_size, opts.text_width)
        argv = [
            "--pretrained_model_name_or_path",
            str(opts.text_encoder or te_dir),
            "--dataset_name",
            str(data_dir),
            "--resolution",
            str(opts.resolution),
            "--train_batch_size",
            str(opts.batch_size),
            "--mixed_precision",
            opts.precision,
            "--output_dir",
            str(tmp / "out"),
            "--report_to",
            "none",
            "--max_train_steps",
            "1000000",
            "--checkpointing_steps",
            "1000000",
            "--validation_steps",
            "1000000",
            "--validation_fid_num_images",
            "0",
            "--seed",
            "0",
        ]
        args = build_parser().parse_args(argv)
        trainer = GANTrainer(args)
        device = trainer.device
        batches = endless_batches(trainer.loader, trainer.sampler, trainer.state)
        fetched = [next(batches) for _ in range(2)]  # the dataset is two batches: reuse them

        def step(i: int, r1: bool) -> float:
            # Put the step counter where the next step is (not) an R1 step; r1_interval is 16.
            trainer.state.step = 16 * (i + 1) - 1 if r1 else 16 * (i + 1)
            sync(device)
            start = time.perf_counter()
            trainer.train_step([fetched[i % 2]])
            sync(device)
            return time.perf_counter() - start

        for i in range(opts.warmup):
            step(i, r1=i == 0)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        regular = [step(i, r1=False) for i in range(opts.steps)]
        with_r1 = [step(i, r1=True) for i in range(max(1, opts.steps // 3))]
        flops = {}
        for kind in (False, True):
            with FlopCounterMode(display=False) as counter:
                step(0, r1=kind)
            flops[kind] = counter.get_total_flops()

        g = trainer.accelerator.unwrap_model(trainer.G)
        d = trainer.accelerator.unwrap_model(trainer.D)
        step_s = sorted(regular)[len(regular) // 2]
        r1_s = sorted(with_r1)[len(with_r1) // 2]
        amortised = (15 * step_s + r1_s) / 16
        flops_step = (15 * flops[False] + flops[True]) / 16
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device) / 2**20
            name = torch.cuda.get_device_name(device)
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            name = f"CPU ({torch.get_num_threads()} threads)"
        result = {
            "device": str(device),
            "device_name": name,
            "resolution": opts.resolution,
            "precision": opts.precision,
            "batch_size": opts.batch_size,
            "generator_params": sum(p.numel() for p in g.parameters()),
            "discriminator_params": sum(p.numel() for p in d.parameters()),
            "step_s": round(step_s, 4),
            "r1_step_s": round(r1_s, 4),
            "images_per_s": round(opts.batch_size / amortised, 2),
            "flops_per_step": int(flops_step),
            "gflops_per_image": round(flops_step / opts.batch_size / 1e9, 3),
            "tflops": round(flops_step / amortised / 1e12, 4),
            "peak_memory_mb": round(peak, 1),
            "torch": torch.__version__,
        }
        if opts.peak_tflops:
            result["mfu"] = round(result["tflops"] / opts.peak_tflops, 5)
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--precisions", nargs="+", default=["no", "bf16"], choices=["no", "fp16", "bf16"])
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument(
        "--steps", type=int, default=5, help="timed regular steps (R1 steps: a third as many)"
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--text_width", type=int, default=256)
    parser.add_argument(
        "--text_encoder", default=None, help="a real CLIP text encoder folder instead of the random one"
    )
    parser.add_argument("--peak_tflops", type=float, default=None, help="the device's peak TFLOP/s, for MFU")
    parser.add_argument("--out", default=None, help="append the JSON lines to this file")
    parser.add_argument("--_single", nargs=2, metavar=("RESOLUTION", "PRECISION"), help=argparse.SUPPRESS)
    opts = parser.parse_args()

    if opts._single:
        opts.resolution, opts.precision = int(opts._single[0]), opts._single[1]
        print("RESULT " + json.dumps(run_single(opts)), flush=True)
        return

    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if opts.device == "cpu":
        env["ACCELERATE_USE_CPU"] = "true"
    elif opts.device.startswith("cuda:"):
        env["CUDA_VISIBLE_DEVICES"] = opts.device.split(":", 1)[1]
    results = []
    for res in opts.resolutions:
        for prec in opts.precisions:
            cmd = [
                sys.executable,
                __file__,
                "--_single",
                str(res),
                prec,
                "--batch_size",
                str(opts.batch_size),
                "--steps",
                str(opts.steps),
                "--warmup",
                str(opts.warmup),
                "--text_width",
                str(opts.text_width),
            ]
            if opts.text_encoder:
                cmd += ["--text_encoder", opts.text_encoder]
            if opts.peak_tflops:
                cmd += ["--peak_tflops", str(opts.peak_tflops)]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not lines:
                print(f"{res} px {prec}: failed\n{proc.stderr[-3000:]}", file=sys.stderr)
                continue
            result = json.loads(lines[-1][len("RESULT ") :])
            results.append(result)
            print(json.dumps(result), flush=True)
            if opts.out:
                with open(opts.out, "a") as f:
                    f.write(json.dumps(result) + "\n")
    if results:
        print(
            f"\n{'res':>4} {'prec':>5} {'images/s':>9} {'step s':>8} {'R1 step s':>9} {'GFLOP/img':>9} "
            f"{'TFLOP/s':>8} {'MFU':>7} {'peak MB':>9}  device"
        )
        for r in results:
            mfu = f"{r['mfu']:.2%}" if "mfu" in r else "-"
            print(
                f"{r['resolution']:>4} {r['precision']:>5} {r['images_per_s']:>9.1f} {r['step_s']:>8.3f} "
                f"{r['r1_step_s']:>9.3f} {r['gflops_per_image']:>9.2f} {r['tflops']:>8.3f} {mfu:>7} "
                f"{r['peak_memory_mb']:>9.0f}  {r['device_name']}"
            )


if __name__ == "__main__":
    main()
