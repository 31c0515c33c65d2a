"""Evaluate a ProductImagePipeline on a dataset split's captions (the logic of ``prodimg eval``).

For each requested split, the first ``num_images`` rows are taken; row ``i``'s caption is
generated with ``torch.Generator().manual_seed(seed + i)`` (deterministic, independent of the batch
size). Metrics come from the :mod:`prodimg.metrics` registry:

- per split (``"<metric>/<split>"``): ``fid``, ``kid`` (+ ``kid_std``), ``precision``/``recall``
  against the same rows' real images (real Inception features cached on disk per
  dataset/split/resolution/count by ``prodimg.metrics``), ``clip_score``, and the attribute
  accuracies;
- ``diversity`` (first split): ``diversity_seeds`` images, one seed each, for each of the split's
  first ``diversity_prompts`` captions with distinct labels; the mean pairwise pixel distance
  within a prompt, against the same figure for the split's real images that share all labels
  (:mod:`prodimg.metrics.diversity`);
- over all evaluated splits together (``"<metric>"``): ``clip_score``, ``color_accuracy``
  (``measure_color``), ``category_accuracy`` and, when the classifier marks its pattern head
  reliable, ``pattern_accuracy`` (the attribute classifier of :mod:`.classifier`; its own test
  accuracy is in the report, to read the generated images' accuracy against);
- for each attribute-classifier head: ``<head>_accuracy_real[/<split>]``, the judge's accuracy on the
  same rows' real images (the ceiling for the generated figure), and under ``"per_class"`` the
  per-class accuracy and confusion matrix of the generated images beside the real images' per-class
  accuracy, and under ``"by"`` the head's accuracy within each value of the split's other label
  columns (e.g. category accuracy per requested colour), generated beside real.

A metric that cannot run (no CLIP judge, no ``color`` column, a classifier vocabulary that is not the
dataset's, no Inception weights) is left out with its reason under ``"skipped"``. The report also
holds the sampling speed (images/s at the batch size used, generation only), the classifier's own
test accuracy and the settings; ``grid.png`` shows real (odd rows) and generated (even rows)
images of the first split's first prompts.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import LabeledSplit, load_labeled_split

logger = logging.getLogger(__name__)

REPORT_FILE = "report.json"
GRID_FILE = "grid.png"
INCEPTION_METRICS = ("fid", "kid", "precision_recall")
ALL_METRICS = ("fid", "kid", "precision_recall", "clip_score", "color_accuracy", "category_accuracy",
               "pattern_accuracy", "diversity")


def _print(message: str) -> None:
    print(message, flush=True)


class ProgressFeatureExtractor:
    """Wraps a feature extractor (``uint8 images -> (N, D)``) to compute in chunks and print progress."""

    def __init__(self, inner, chunk: int = 256, label: str = "inception features"):
        self.inner, self.chunk, self.label = inner, chunk, label

    def __call__(self, images: np.ndarray) -> np.ndarray:
        out, started = [], time.perf_counter()
        for start in range(0, len(images), self.chunk):
            out.append(np.asarray(self.inner(images[start : start + self.chunk])))
            done = min(start + self.chunk, len(images))
            rate = done / max(time.perf_counter() - started, 1e-9)
            _print(f"  {self.label}: {done}/{len(images)} images ({rate:.1f} images/s)")
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _inception_feature_id() -> str:
    from ..metrics.inception import INCEPTION_FEATURE_ID

    return INCEPTION_FEATURE_ID


def dataset_identity(dataset: str) -> str:
    """The dataset's name for the real-feature cache: an absolute path for local data, else the Hub id."""
    return os.path.abspath(dataset) if os.path.exists(dataset) else dataset


@torch.no_grad()
def generate_for_captions(pipeline, captions: Sequence[str], batch_size: int, seed: int,
                          num_inference_steps: int | None = None, guidance_scale: float = 1.0,
                          label: str = "") -> tuple[np.ndarray, float]:
    """uint8 (N, H, W, 3) images, caption ``i`` with seed ``seed + i``; returns ``(images, seconds)``."""
    device = pipeline._execution_device
    out, seconds = [], 0.0
    for start in range(0, len(captions), batch_size):
        prompts = list(captions[start : start + batch_size])
        gens = [torch.Generator(device).manual_seed(seed + start + i) for i in range(len(prompts))]
        t0 = time.perf_counter()
        images = pipeline(prompts, generator=gens, num_inference_steps=num_inference_steps,
                          guidance_scale=guidance_scale, output_type="np").images
        seconds += time.perf_counter() - t0
        out.append(np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8))
        done = start + len(prompts)
        _print(f"  generating{label}: {done}/{len(captions)} images ({done / max(seconds, 1e-9):.1f} images/s)")
    return np.concatenate(out), seconds


def resolve_clip_model(clip_model: str | None, pipeline_path: str | None) -> tuple[str | None, str | None]:
    """``(location, note)``: the explicit ``--clip_model`` (``"none"`` disables), else the pipeline's own
    CLIP (``<pipeline>/clip``), else ``None`` with the reason."""
    from .clip import is_clip_location

    if clip_model is not None:
        if clip_model.lower() == "none":
            return None, "disabled (--clip_model none)"
        return clip_model, None
    if pipeline_path and os.path.isdir(pipeline_path) and is_clip_location(os.path.join(pipeline_path, "clip")):
        return os.path.join(pipeline_path, "clip"), None
    return None, ("no CLIP judge: the pipeline folder has no clip/ model; pass --clip_model (a train_clip.py "
                  "output such as runs/clip-32, a CLIP folder, or a Hub id such as openai/clip-vit-base-patch32)")


def _grid(real: np.ndarray, fake: np.ndarray, columns: int = 8, rows: int = 4, scale: int = 2):
    import PIL.Image

    from ..training.validation import image_grid

    n = min(len(real), len(fake), columns * rows)
    columns = min(columns, n)
    rows = max(1, n // columns)
    n = rows * columns
    tiles = []
    for r in range(rows):
        for src in (real, fake):
            for img in src[r * columns : (r + 1) * columns]:
                tile = PIL.Image.fromarray(img)
                tiles.append(tile.resize((tile.width * scale, tile.height * scale), PIL.Image.Resampling.NEAREST))
    return image_grid(tiles, rows=2 * rows, cols=columns), n


def evaluate(
    pipeline,
    splits: dict[str, LabeledSplit],
    *,
    dataset_id: str,
    batch_size: int = 64,
    seed: int = 0,
    num_inference_steps: int | None = None,
    guidance_scale: float = 1.0,
    metrics: Sequence[str] = ALL_METRICS,
    clip_judge=None,
    clip_note: str | None = None,
    classifier=None,
    classifier_info: dict | None = None,
    feature_extractor=None,
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    output_dir: str | os.PathLike | None = None,
    extra: dict | None = None,
    diversity_prompts: int = 16,
    diversity_seeds: int = 8,
) -> dict[str, Any]:
    """Generate for every split, compute ``metrics``, write ``report.json`` + ``grid.png`` (if
    ``output_dir``) and return the report. ``feature_extractor``: any callable
    ``uint8 (N, H, W, 3) -> (N, D) features`` (default: the FID InceptionV3, loaded on first use)."""
    from ..metrics import EvalContext, RealStatsKey, get_metric
    from ..metrics.attributes import predict_labels
    from ..utils import atomic_write_bytes, atomic_write_text

    unknown = set(metrics) - set(ALL_METRICS)
    if unknown:
        raise ValueError(f"unknown metric(s) {sorted(unknown)}; choose from {list(ALL_METRICS)}")
    if not splits:
        raise ValueError("no split to evaluate")
    if "diversity" in metrics and (diversity_prompts < 1 or diversity_seeds < 2):
        raise ValueError(f"diversity needs >= 1 prompt and >= 2 seeds, got {diversity_prompts} prompts and "
                         f"{diversity_seeds} seeds")
    results: dict[str, float] = {}
    skipped: dict[str, str] = {}
    timings: dict[str, float] = {}

    # 1. Generate.
    generated: dict[str, np.ndarray] = {}
    gen_seconds, gen_count = 0.0, 0
    for name, data in splits.items():
        _print(f"[{name}] generating {len(data)} images (batch {batch_size})")
        images, seconds = generate_for_captions(pipeline, data.captions, batch_size, seed, num_inference_steps,
                                                guidance_scale, label=f" [{name}]")
        generated[name] = images
        gen_seconds += seconds
        gen_count += len(images)
    sampling = {
        "images_per_second": gen_count / max(gen_seconds, 1e-9),
        "seconds": gen_seconds,
        "num_images": gen_count,
        "batch_size": batch_size,
        "num_inference_steps": num_inference_steps or int(pipeline.scheduler.config.num_train_timesteps),
        "guidance_scale": guidance_scale,
        "device": str(pipeline._execution_device),
        "dtype": str(getattr(getattr(pipeline, "generator", None), "dtype", None) or pipeline.dtype).replace("torch.", ""),
        "torch_threads": torch.get_num_threads(),
    }
    _print(f"sampling speed: {sampling['images_per_second']:.1f} images/s (batch {batch_size}, "
           f"{sampling['num_inference_steps']} steps, {sampling['device']})")

    # 2. Inception metrics, per split.
    wanted_inception = [m for m in INCEPTION_METRICS if m in metrics]
    extractor = None
    # The disk cache holds FID-Inception features only: an injected extractor of another kind skips it.
    use_cache = feature_extractor is None or getattr(feature_extractor, "feature_id", None) == _inception_feature_id()
    if wanted_inception:
        reason = None
        if feature_extractor is None:
            from ..training.validation import fid_unavailable_reason

            reason = fid_unavailable_reason()
        if reason is not None:
            for m in wanted_inception:
                skipped[m] = reason
        else:
            if feature_extractor is None:
                from ..metrics.inception import InceptionFeatureExtractor

                feature_extractor = InceptionFeatureExtractor(device=device, batch_size=batch_size)
            extractor = ProgressFeatureExtractor(feature_extractor)
    for name, data in splits.items():
        if extractor is None:
            break
        if len(data) < 2:
            for m in wanted_inception:
                skipped[f"{m}/{name}"] = f"needs at least 2 images, {name!r} has {len(data)}"
            continue
        t0 = time.perf_counter()
        key = RealStatsKey(dataset=dataset_id, split=name, resolution=int(data.images.shape[1]),
                           num_images=len(data)) if use_cache else None
        ctx = EvalContext(generated_images=generated[name], real_images=data.images, real_stats_key=key,
                          cache_dir=cache_dir, feature_extractor=extractor, device=device, batch_size=batch_size,
                          seed=seed)
        cached = key is not None and ctx.real_cache_path().is_file()
        _print(f"[{name}] Inception features: real ({'cached: ' + str(ctx.real_cache_path()) if cached else 'computing'})"
               ", then generated")
        for m in wanted_inception:
            try:
                values = get_metric(m).compute(ctx)
            except ValueError as err:  # e.g. precision/recall needs more than k images
                skipped[f"{m}/{name}"] = str(err)
                continue
            results.update({f"{k}/{name}": v for k, v in values.items()})
        timings[f"inception_metrics/{name}"] = time.perf_counter() - t0

    # 3. CLIP score, per split and overall.
    if "clip_score" in metrics:
        if clip_judge is None:
            skipped["clip_score"] = clip_note or "no CLIP judge"
        else:
            t0 = time.perf_counter()
            metric = get_metric("clip_score", image_mean=clip_judge.image_mean, image_std=clip_judge.image_std)
            total = 0.0
            for name, data in splits.items():
                ctx = EvalContext(generated_images=generated[name], prompts=data.captions, clip_model=clip_judge.model,
                                  clip_tokenizer=clip_judge.tokenizer, batch_size=batch_size)
                value = metric.compute(ctx)["clip_score"]
                results[f"clip_score/{name}"] = value
                total += value * len(data)
            results["clip_score"] = total / sum(len(d) for d in splits.values())
            timings["clip_score"] = time.perf_counter() - t0

    # 4. Attribute accuracies, overall and per split ("subset" = split name).
    all_images = np.concatenate([generated[n] for n in splits])
    subsets = [n for n, d in splits.items() for _ in range(len(d))]

    def column(col: str) -> list[str] | None:
        if not all(col in d.labels for d in splits.values()):
            return None
        return [v for d in splits.values() for v in d.labels[col]]

    if "color_accuracy" in metrics:
        colors = column("color")
        if colors is None:
            skipped["color_accuracy"] = "the dataset has no 'color' column"
        else:
            from ..data.colors import COLOR_NAMES

            bad = sorted(set(colors) - set(COLOR_NAMES))
            if bad:
                skipped["color_accuracy"] = f"colours {bad[:5]} are not among the 11 basic colour terms"
            else:
                t0 = time.perf_counter()
                ctx = EvalContext(generated_images=all_images, attributes={"color": colors, "subset": subsets})
                results.update(get_metric("color_accuracy").compute(ctx))
                timings["color_accuracy"] = time.perf_counter() - t0
    reliable = set((classifier_info or {}).get("reliable_heads", ["category"]))
    per_class: dict[str, dict] = {}
    for head in ("category", "pattern"):
        metric_name = f"{head}_accuracy"
        if metric_name not in metrics:
            continue
        labels = column(head)
        if classifier is None:
            skipped[metric_name] = "no attribute classifier"
        elif head not in classifier.head_names:
            skipped[metric_name] = f"the classifier has no {head!r} head"
        elif head != "category" and head not in reliable:  # category is always reported (with the judge's accuracy)
            skipped[metric_name] = (f"the classifier's {head} head is below its reliability threshold "
                                    f"(its test accuracy: {(classifier_info or {}).get('test')})")
        elif labels is None:
            skipped[metric_name] = f"the dataset has no {head!r} column"
        elif not set(labels) <= set(classifier.label_names(head)):
            skipped[metric_name] = (f"the dataset's {head} labels {sorted(set(labels))[:5]}... are not the "
                                    f"classifier's vocabulary {classifier.label_names(head)}")
        else:
            t0 = time.perf_counter()
            # The judge reads each generated image once; the headline and the per-class figures share it.
            predicted = predict_labels(classifier.head_classifier(head), all_images, 256)
            values = get_metric("category_accuracy", column=head).score(predicted, labels, subsets)
            results.update({k.replace("category_accuracy", metric_name, 1): v for k, v in values.items()})
            per_class[head] = _per_class(classifier, head, splits, predicted, results)
            timings[metric_name] = time.perf_counter() - t0

    # 5. Diversity: several seeds of one prompt, on the first split.
    if "diversity" in metrics:
        t0 = time.perf_counter()
        name, data = next(iter(splits.items()))
        values, info = _diversity(pipeline, data, diversity_prompts, diversity_seeds, batch_size, seed,
                                  num_inference_steps, guidance_scale, label=f" [{name}, diversity]")
        results.update(values)
        diversity_info = {"split": name, **info}
        timings["diversity"] = time.perf_counter() - t0
    else:
        diversity_info = None

    report: dict[str, Any] = {
        "metrics": dict(sorted(results.items())),
        "skipped": skipped,
        "sampling": sampling,
        "splits": {n: len(d) for n, d in splits.items()},
        "dataset": dataset_id,
        "seed": seed,
        "classifier": classifier_info,
        "timings_seconds": timings,
        **({"diversity": diversity_info} if diversity_info else {}),
        **({"per_class": per_class} if per_class else {}),
        **(extra or {}),
    }
    if output_dir is not None:
        out = Path(output_dir)
        first = next(iter(splits))
        grid, n = _grid(splits[first].images, generated[first])
        buf = io.BytesIO()
        grid.save(buf, format="PNG")
        atomic_write_bytes(out / GRID_FILE, buf.getvalue())
        report["grid"] = {"file": GRID_FILE, "split": first, "prompts": splits[first].captions[:n],
                          "layout": "pairs of rows: real images, then the generated images for the same captions"}
        atomic_write_text(out / REPORT_FILE, json.dumps(report, indent=1, default=float))
        _print(f"wrote {out / REPORT_FILE} and {out / GRID_FILE}")
    return report


def _per_class(classifier, head: str, splits: dict[str, LabeledSplit], generated_pred: Sequence[Any],
               results: dict[str, float]) -> dict[str, dict]:
    """Per split: where the judge put the generated images of each requested class (``generated_pred``: its
    answers for every split's generated images, in split order; confusion matrix,
    per-class accuracy, most frequent wrong answer), and its per-class accuracy on the split's real
    images, the ceiling the generated figure is read against; under ``"by"``, both accuracies within each
    value of the split's other label columns. Adds ``<head>_accuracy_real[/<split>]`` to ``results``."""
    from ..metrics.attributes import accuracy_by_group, per_class_accuracy, predict_labels

    judge = classifier.head_classifier(head)
    names = classifier.label_names(head)
    out, right, total = {}, 0, 0
    for name, data in splits.items():
        requested = data.labels[head]
        real_pred = predict_labels(judge, data.images)
        gen_pred, generated_pred = list(generated_pred[: len(data)]), generated_pred[len(data) :]
        real = per_class_accuracy(real_pred, requested, names)
        n_right = int(np.trace(real["confusion"]))
        results[f"{head}_accuracy_real/{name}"] = n_right / len(requested)
        right, total = right + n_right, total + len(requested)
        out[name] = {
            "generated": per_class_accuracy(gen_pred, requested, names),
            "real_accuracy": real["accuracy"],
            "by": {column: accuracy_by_group(requested, values, {"generated": gen_pred, "real": real_pred})
                   for column, values in sorted(data.labels.items()) if column != head},
        }
    results[f"{head}_accuracy_real"] = right / total
    return out


def _label_key(data: LabeledSplit, i: int) -> tuple:
    return tuple(data.labels[c][i] for c in sorted(data.labels)) or (data.captions[i],)


def _diversity(pipeline, data: LabeledSplit, num_prompts: int, num_seeds: int, batch_size: int, seed: int,
               num_inference_steps: int | None, guidance_scale: float, label: str = "") -> tuple[dict, dict]:
    """Generate ``num_seeds`` images for each of the first ``num_prompts`` captions with distinct labels
    (image ``j`` of a prompt: seed ``seed + 1_000_000 + its index``) and score them with the
    ``diversity`` metric, the split's real images grouped by their labels as the reference."""
    from ..metrics import EvalContext, get_metric

    rows, seen = [], set()
    for i in range(len(data)):
        key = _label_key(data, i)
        if key not in seen:
            seen.add(key)
            rows.append(i)
        if len(rows) == num_prompts:
            break
    captions = [data.captions[i] for i in rows for _ in range(num_seeds)]
    images, _ = generate_for_captions(pipeline, captions, batch_size, seed + 1_000_000, num_inference_steps,
                                      guidance_scale, label=label)
    groups = [r for r in rows for _ in range(num_seeds)]
    real_groups = [_label_key(data, i) for i in range(len(data))]
    ctx = EvalContext(generated_images=images, attributes={"group": groups}, real_images=data.images,
                      real_attributes={"group": real_groups})
    values = get_metric("diversity", max_per_group=num_seeds).compute(ctx)
    info = {"prompts": [data.captions[i] for i in rows], "seeds_per_prompt": num_seeds,
            "real_grouped_by": sorted(data.labels) or ["caption"]}
    return values, info


def run_eval(
    pipeline: str,
    dataset: str,
    split: str = "test",
    *,
    num_images: int = 1000,
    batch_size: int = 64,
    steps: int | None = None,
    guidance_scale: float = 1.0,
    clip_model: str | None = None,
    classifier: str | None = None,
    metrics: Sequence[str] | None = None,
    output_dir: str | None = "outputs/eval",
    seed: int = 0,
    device: str = "cpu",
    image_column: str = "image",
    caption_column: str = "text",
    cache_dir: str | None = None,
    feature_extractor=None,
    backend: str = "pytorch",
    int8: bool = False,
    num_threads: int | None = None,
    dtype: str = "float32",
    diversity_prompts: int = 16,
    diversity_seeds: int = 8,
    compile: bool = False,
) -> dict[str, Any]:
    """Load everything ``prodimg eval`` names and :func:`evaluate`. ``split``: one name or a comma list;
    ``backend``/``int8``/``num_threads``/``dtype``/``compile`` as for ``prodimg generate`` (an ONNX export on
    onnxruntime). With ``compile``, every batch shape the run will time is compiled first, untimed
    (``compile_warmup_seconds`` in the report), so that the sampling speed is the compiled one."""
    from ..backends import load_pipeline, warm_up_compiled

    if num_images < 2:
        raise ValueError(f"--num_images must be >= 2, got {num_images}")
    if batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {batch_size}")
    names = [s.strip() for s in split.split(",") if s.strip()]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"--split must name one or more distinct splits, got {split!r}")
    metrics = list(metrics) if metrics else list(ALL_METRICS)
    started = time.perf_counter()
    pipe = load_pipeline(pipeline, backend, device, int8, num_threads, dtype, compile=compile)
    pipe.set_progress_bar_config(disable=True)
    resolution = int(pipe.generator.config.sample_size)
    splits = {}
    for name in names:
        _print(f"[{name}] loading up to {num_images} rows of {dataset}")
        splits[name] = load_labeled_split(dataset, name, resolution, image_column=image_column,
                                          caption_column=caption_column, max_samples=num_images)
    judges = load_judges(metrics, clip_model=clip_model, classifier=classifier, pipeline_path=pipeline, device=device)
    judge = judges["clip_judge"]
    extra = {
        "pipeline": pipeline,
        "backend": backend + ("-int8" if int8 else ""),
        "compile": compile,
    }
    if compile:
        sizes = {min(batch_size, len(d)) for d in splits.values()}
        sizes |= {len(d) % batch_size for d in splits.values()}
        captions = [c for d in splits.values() for c in d.captions]
        extra["compile_warmup_seconds"] = warm_up_compiled(pipe, sizes, captions, steps, guidance_scale, seed,
                                                           log=_print)
    judge_source = judge.source if judge is not None else None
    extra.update(clip_model=judge_source, setup_seconds=time.perf_counter() - started)
    return evaluate(pipe, splits, dataset_id=dataset_identity(dataset), batch_size=batch_size, seed=seed,
                    num_inference_steps=steps, guidance_scale=guidance_scale, metrics=metrics,
                    feature_extractor=feature_extractor, cache_dir=cache_dir, device=device, output_dir=output_dir,
                    extra=extra, diversity_prompts=diversity_prompts, diversity_seeds=diversity_seeds, **judges)


def load_judges(metrics: Sequence[str], *, clip_model: str | None = None, classifier: str | None = None,
                pipeline_path: str | None = None, device: str = "cpu") -> dict[str, Any]:
    """The judges ``metrics`` need, as :func:`evaluate` keyword arguments: ``clip_judge``/``clip_note``
    (see :func:`resolve_clip_model`) and ``classifier``/``classifier_info`` (the attribute classifier
    with its own test accuracy; ``{"error": ...}`` when it cannot be found)."""
    from .classifier import classifier_metrics, load_attribute_classifier
    from .clip import load_clip_judge

    judge, note = None, None
    if "clip_score" in metrics:
        location, note = resolve_clip_model(clip_model, pipeline_path)
        if location is not None:
            judge = load_clip_judge(location, device=device)
    cls, cls_info = None, None
    if {"category_accuracy", "pattern_accuracy"} & set(metrics):
        try:
            cls = load_attribute_classifier(classifier, device=device)
            cls_info = {"path": str(classifier or "prodimg/assets/attribute_classifier"),
                        **(classifier_metrics(classifier) or {})}
            cls_info = {k: cls_info[k] for k in ("path", "test", "reliable_heads", "reliable_accuracy") if k in cls_info}
        except FileNotFoundError as err:
            cls_info = {"error": str(err)}
    return {"clip_judge": judge, "clip_note": note, "classifier": cls, "classifier_info": cls_info}
