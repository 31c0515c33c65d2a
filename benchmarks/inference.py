"""Inference speed on this CPU: PyTorch eager fp32, torch.compile, ONNX Runtime fp32 and int8.

    python benchmarks/inference.py                     # default generator config, random weights
    python benchmarks/inference.py --pipeline pipelines/prodimg-fashion-32
    python benchmarks/inference.py --skip_compile --batch_sizes 1 64 --repeats 3
    python benchmarks/inference.py --eval_dataset data/fashion-catalog-32 --eval_num_images 500   # + prodimg eval metrics

Times the full pipeline call (tokenise, text encoder, every denoising step with the DDGAN
scheduler, postprocess to numpy) for the same prompts and seeds, at each batch size, and prints
images/s, latency and the ratio to PyTorch eager. All backends are the same ProductImagePipeline:
the ONNX ones swap in onnxruntime stand-ins for the text encoder and the generator
(``prodimg.export``); int8 is onnxruntime static QDQ quantisation of the generator (the text
encoder stays fp32). Then it measures the int8 quality cost against fp32 on held-out catalogue
captions: max/mean abs difference and PSNR of the images, and the dominant colour
(``prodimg.data.color_measure.measure_color``) - agreement between int8 and fp32, and accuracy
against the colour named in the caption for both. With ``--eval_dataset`` it also runs
``prodimg.evaluation.evaluate`` (FID, colour/category accuracy) on both and prints the deltas.

Without --pipeline (and without pipelines/prodimg-fashion-32) the default ProductGenerator config
with random weights and the 256-wide CLIP text encoder of ``benchmarks/sampling_speed.py`` stand in;
their zero-initialised layers (style modulation, attention outputs) are perturbed so that every
path carries signal, which matters for the quality numbers (not for speed). Quality numbers of
random weights say how far int8 moves the output, not how good the images are.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sampling_speed import build_default_pipeline

DEFAULT_PIPELINE = Path(__file__).resolve().parents[1] / "pipelines" / "prodimg-fashion-32"


def load_torch_pipeline(path: str | None):
    from prodimg import ProductImagePipeline

    if path is None and DEFAULT_PIPELINE.is_dir():
        path = str(DEFAULT_PIPELINE)
    if path is not None:
        return ProductImagePipeline.from_pretrained(path), path
    pipe = build_default_pipeline()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in pipe.generator.parameters():
            if not p.any():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return pipe, "default-config-random-weights"


def seeded(n: int, start: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(start + i) for i in range(n)]


def time_call(pipe, prompts: list[str], repeats: int) -> float:
    """Median seconds per pipeline call after one warm-up call."""
    def call():
        pipe(prompts, generator=seeded(len(prompts)), output_type="np")

    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def eval_prompts(n: int, seed: int = 1) -> tuple[list[str], list[str]]:
    """Held-out captions (another seed than the int8 calibration) and the colour each names."""
    from prodimg.data.captions import CATEGORY_NAMES, N_CAPTION_UNIFORMS, PATTERN_ADJECTIVES, make_caption
    from prodimg.data.colors import COLOR_NAMES

    rng = np.random.default_rng(seed)
    patterns = list(PATTERN_ADJECTIVES)
    prompts, colors = [], []
    for i in range(n):
        color = COLOR_NAMES[int(rng.integers(len(COLOR_NAMES)))]
        prompts.append(make_caption(CATEGORY_NAMES[int(rng.integers(len(CATEGORY_NAMES)))], color,
                                    patterns[int(rng.integers(len(patterns)))], rng.random(N_CAPTION_UNIFORMS)))
        colors.append(color)
    return prompts, colors


def generate(pipe, prompts: list[str], batch_size: int = 64) -> np.ndarray:
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        out.append(pipe(chunk, generator=seeded(len(chunk), start), output_type="np").images)
    return np.concatenate(out)


def quality(fp32_pipe, int8_pipe, n: int) -> dict[str, float]:
    from prodimg.data.color_measure import measure_colors

    prompts, colors = eval_prompts(n)
    a = generate(fp32_pipe, prompts)
    b = generate(int8_pipe, prompts)
    mse = float(((a - b) ** 2).mean())
    to_u8 = lambda x: (x * 255).round().astype(np.uint8)
    ca, cb = measure_colors(to_u8(a)), measure_colors(to_u8(b))
    return {
        "images": n,
        "max_abs": float(np.abs(a - b).max()),
        "mean_abs": float(np.abs(a - b).mean()),
        "psnr_db": 10 * np.log10(1.0 / mse) if mse > 0 else float("inf"),
        "color_agreement": float(np.mean([x == y for x, y in zip(ca, cb)])),
        "color_accuracy_fp32": float(np.mean([x == c for x, c in zip(ca, colors)])),
        "color_accuracy_int8": float(np.mean([x == c for x, c in zip(cb, colors)])),
    }


def run_prodimg_eval(pipes: dict, dataset: str, split: str, num_images: int) -> dict[str, dict]:
    """``prodimg.evaluation.evaluate`` on each pipeline (same seeds); returns metrics per backend."""
    from prodimg.evaluation.data import load_labeled_split
    from prodimg.evaluation.evaluate import evaluate

    first = next(iter(pipes.values()))
    res = int(first.generator.config.sample_size)
    splits = {split: load_labeled_split(dataset, split, res, max_samples=num_images)}
    try:
        from prodimg.evaluation.classifier import load_attribute_classifier

        classifier = load_attribute_classifier(None)
    except (FileNotFoundError, ImportError) as err:
        print(f"category accuracy skipped: {err}")
        classifier = None
    results = {}
    for name, pipe in pipes.items():
        report = evaluate(pipe, splits, dataset_id=dataset, metrics=("fid", "color_accuracy", "category_accuracy"),
                          classifier=classifier, output_dir=None)
        results[name] = report["metrics"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", default=None, help="saved pipeline (default: pipelines/prodimg-fashion-32 if "
                        "present, else the default config with random weights)")
    parser.add_argument("--export_dir", default=None, help="an export made by `prodimg export onnx --int8` of the same "
                        "pipeline to reuse; a folder that does not exist yet is exported into and kept")
    parser.add_argument("--exporter", default="dynamo", choices=["dynamo", "torchscript"])
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per batch size (median; batch 1 gets 4x)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads for torch and onnxruntime")
    parser.add_argument("--skip_compile", action="store_true")
    parser.add_argument("--quality_images", type=int, default=128, help="held-out captions for the int8 quality cost")
    parser.add_argument("--eval_dataset", default=None, help="also run prodimg eval metrics (FID, colour/category "
                        "accuracy) for fp32 and int8 on this dataset")
    parser.add_argument("--eval_split", default="test")
    parser.add_argument("--eval_num_images", type=int, default=500)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()

    from prodimg import ProductImagePipeline
    from prodimg.catalog_generation import pipeline_id
    from prodimg.export import export_onnx, load_onnx_pipeline

    torch_pipe, name = load_torch_pipeline(args.pipeline)
    torch_pipe = torch_pipe.to("cpu")
    torch_pipe.set_progress_bar_config(disable=True)
    g = torch_pipe.generator.config
    n_gen = sum(p.numel() for p in torch_pipe.generator.parameters()) / 1e6
    n_te = sum(p.numel() for p in torch_pipe.text_encoder.parameters()) / 1e6
    print(f"pipeline: {name}; generator {n_gen:.2f}M params {g.sample_size}px channels {list(g.block_out_channels)}, "
          f"text encoder {n_te:.2f}M params; {g.num_train_timesteps} steps; {threads} threads; torch {torch.__version__}")

    tmp = None
    export_dir = args.export_dir
    source_id = pipeline_id(torch_pipe, name)
    if export_dir is None:
        tmp = tempfile.TemporaryDirectory()
        export_dir = str(Path(tmp.name) / "onnx")
    if (Path(export_dir) / "onnx_index.json").is_file():
        exported_from = json.loads((Path(export_dir) / "onnx_index.json").read_text())["source_pipeline"]
        if exported_from != source_id:
            raise SystemExit(f"{export_dir} was exported from {exported_from}, not {source_id}")
        print(f"reusing the export in {export_dir}")
    else:
        start = time.perf_counter()
        export_onnx(torch_pipe, export_dir, source_id=source_id, exporter=args.exporter, int8=True)
        print(f"exported to ONNX ({args.exporter}) + int8 calibration/quantisation in {time.perf_counter() - start:.0f} s")

    backends: dict[str, object] = {"pytorch eager fp32": torch_pipe}
    if not args.skip_compile:
        compiled = ProductImagePipeline(tokenizer=torch_pipe.tokenizer, text_encoder=torch.compile(torch_pipe.text_encoder),
                                        generator=torch.compile(torch_pipe.generator), scheduler=torch_pipe.scheduler)
        compiled.set_progress_bar_config(disable=True)
        backends["torch.compile fp32"] = compiled
    for label, int8 in (("onnxruntime fp32", False), ("onnxruntime int8", True)):
        p = load_onnx_pipeline(export_dir, int8=int8, num_threads=threads)
        p.set_progress_bar_config(disable=True)
        backends[label] = p

    prompts_all, _ = eval_prompts(max(args.batch_sizes), seed=2)
    rows = []
    for label, pipe in backends.items():
        for bs in args.batch_sizes:
            prompts = prompts_all[:bs]
            try:
                start = time.perf_counter()
                latency = time_call(pipe, prompts, args.repeats * (4 if bs == 1 else 1))
                rows.append((label, bs, latency, None, time.perf_counter() - start))
            except Exception as err:  # noqa: BLE001  (torch.compile may not work on every machine)
                rows.append((label, bs, None, f"{type(err).__name__}: {str(err).splitlines()[0][:120]}", 0.0))
                break

    eager = {bs: lat for label, bs, lat, _, _ in rows if label == "pytorch eager fp32"}
    print(f"\n{'backend':<22}{'batch':>6}{'images/s':>11}{'latency ms':>12}{'x eager':>9}")
    for label, bs, lat, err, _ in rows:
        if lat is None:
            print(f"{label:<22}{bs:>6}  failed: {err}")
            continue
        print(f"{label:<22}{bs:>6}{bs / lat:>11.1f}{lat * 1000:>12.1f}{eager[bs] / lat:>9.2f}")

    if args.quality_images:
        q = quality(backends["onnxruntime fp32"], backends["onnxruntime int8"], args.quality_images)
        print(f"\nint8 vs fp32 on {q['images']} held-out captions (images in [0, 1]): max abs {q['max_abs']:.3f}, "
              f"mean abs {q['mean_abs']:.4f}, PSNR {q['psnr_db']:.1f} dB; measured colour agrees with fp32 on "
              f"{q['color_agreement']:.1%}; colour accuracy vs caption fp32 {q['color_accuracy_fp32']:.1%}, "
              f"int8 {q['color_accuracy_int8']:.1%}")
    if args.eval_dataset:
        res = run_prodimg_eval({"fp32": backends["onnxruntime fp32"], "int8": backends["onnxruntime int8"]},
                               args.eval_dataset, args.eval_split, args.eval_num_images)
        for key in sorted(set(res["fp32"]) & set(res["int8"])):
            a, b = res["fp32"][key], res["int8"][key]
            if isinstance(a, (int, float)) and isinstance(b, (int, float)):
                print(f"prodimg eval {key}: fp32 {a:.4g}, int8 {b:.4g}, delta {b - a:+.4g}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
