"""``prodimg export onnx``: export a saved pipeline's text encoder and generator to ONNX.

    prodimg export onnx --pipeline pipelines/prodimg-fashion-32 --out exports/prodimg-fashion-32-onnx --int8
    prodimg generate "red striped dress" --backend onnxruntime --pipeline exports/prodimg-fashion-32-onnx [--int8]

The folder layout is described in :mod:`prodimg.export.onnx_export`.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="export a pipeline for other runtimes (ONNX)")
    formats = p.add_subparsers(dest="format", metavar="FORMAT")
    formats.required = True
    o = formats.add_parser(
        "onnx",
        help="text encoder + generator to ONNX (dynamic batch), optionally an int8 generator",
        description="Export the text encoder and the generator of a saved pipeline to ONNX with a dynamic "
                    "batch axis; run it with `prodimg generate --backend onnxruntime --pipeline OUT`.",
    )
    o.add_argument("--pipeline", default=None, help="saved pipeline folder or Hub id (default: the shipped pipeline)")
    o.add_argument("--out", required=True, help="the export folder to write")
    o.add_argument("--int8", action="store_true",
                   help="also write generator/model.int8.onnx (onnxruntime static QDQ int8, calibrated on the "
                        "pipeline's own generator inputs for catalogue-style captions)")
    o.add_argument("--calibration_prompts", default=None,
                   help="a .csv/.jsonl file or dataset of prompts for int8 calibration (default: 64 built-in captions)")
    o.add_argument("--prompt_column", default="text", help="prompt column of --calibration_prompts (default: text)")
    o.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18)")
    o.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo",
                   help="torch.onnx exporter (default dynamo; torchscript is torch's legacy one, faster to run)")
    o.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    o.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..catalog_generation import check_prompt_rows, pipeline_id, read_prompt_rows
    from ..export import export_onnx
    from ..export.onnx_export import DEFAULT_OPSET
    from ..pipeline import ProductImagePipeline
    from .generate import resolve_pipeline_path

    if Path(args.out).exists() and not args.overwrite:
        raise ValueError(f"{args.out} already exists; choose another --out or pass --overwrite")
    path = resolve_pipeline_path(args.pipeline)
    pipe = ProductImagePipeline.from_pretrained(path).to("cpu")
    pipe.set_progress_bar_config(disable=True)
    prompts = None
    if args.calibration_prompts:
        if not args.int8:
            raise ValueError("--calibration_prompts is only used with --int8")
        valid, bad = check_prompt_rows(
            read_prompt_rows(args.calibration_prompts, args.prompt_column), pipe.tokenizer, pipe.max_text_length
        )
        if not valid:
            raise ValueError(f"{args.calibration_prompts} has no usable prompts ({len(bad)} bad rows)")
        prompts = [r.text for r in valid]
    index = export_onnx(
        pipe,
        args.out,
        source_id=pipeline_id(pipe, path),
        opset=args.opset or DEFAULT_OPSET,
        exporter=args.exporter,
        int8=args.int8,
        calibration_prompts=prompts,
        overwrite=args.overwrite,
    )
    errors = ", ".join(f"{k} {v:.1e}" for k, v in index["export_check_max_abs_error"].items())
    print(f"{args.out}: {', '.join(index['files'].values())} (opset {index['opset']}); "
          f"onnxruntime vs PyTorch max abs error: {errors}")
    return 0
