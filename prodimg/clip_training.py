"""Contrastive pretraining of a small domain CLIP (the loop of ``train_scripts/train_clip.py``).

A transformers ``CLIPModel`` (fresh: text and vision towers sized by flags; or continued from any
CLIP with ``--pretrained_model_name_or_path``) is trained with CLIP's symmetric InfoNCE loss on
caption/image pairs (:func:`contrastive_loss`: with several processes, every pair of the global
batch is a negative for every other, as in one process with the whole batch), captions tokenized
with the project's CLIP BPE tokenizer. Images go through
:func:`prodimg.metrics.clip_score.clip_preprocess`, the same preprocessing the CLIP score uses,
with the normalisation of :mod:`prodimg.evaluation.clip`.

Outputs in ``--output_dir``:

- ``text_encoder/``: a ``CLIPTextModelWithProjection`` (the trained text tower + text projection)
  and ``tokenizer/``: what ``ProductImagePipeline`` and ``train_product_gan.py
  --pretrained_model_name_or_path OUTPUT_DIR`` load;
- ``clip/``: the full ``CLIPModel`` (+ tokenizer + preprocessor config), the CLIP-score judge;
- ``retrieval.json`` and ``README.md``: validation retrieval accuracy (text->image and
  image->text top-1/top-5 within batches of ``--retrieval_batch_size``) and the model card;
- ``checkpoint-<step>/``: resumable checkpoints (``prodimg.training.checkpointing``).

Mixed precision, the non-finite guard, checkpoints, the resumable data order, logging and Hub
upload are the generic pieces of :mod:`prodimg.training`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .training.args import (
    accelerator_from_args,
    add_data_args,
    add_hub_args,
    add_optimizer_args,
    add_run_args,
    check_common_args,
)

logger = logging.getLogger(__name__)

SUMMARY_FILE = "training_summary.json"
RETRIEVAL_FILE = "retrieval.json"
LABEL_COLUMNS = ("category", "color", "pattern")
MAX_LOGIT_SCALE = math.log(100.0)
UPLOAD_PATTERNS = ["README.md", "text_encoder/*", "tokenizer/*", "clip/*", RETRIEVAL_FILE]


# ============================================================================================ arguments
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train_clip.py",
        description="Contrastive pretraining of a (small) CLIP on caption/image pairs; saves a text encoder "
                    "for ProductImagePipeline and the full CLIP for CLIP score.",
    )
    parser.add_argument("--pretrained_model_name_or_path", type=str, default=None,
                        help="Continue from an existing CLIPModel (Hub id, folder, or a train_clip.py output) "
                             "instead of building a fresh one from the model flags.")
    parser.add_argument("--revision", type=str, default=None, help="Hub revision of --pretrained_model_name_or_path.")
    add_data_args(parser, default_resolution=32)
    add_run_args(parser)
    add_optimizer_args(parser, learning_rate=5e-4)
    add_hub_args(parser)
    parser.set_defaults(train_batch_size=256, max_train_steps=2000, checkpointing_steps=500, adam_beta1=0.9,
                        adam_beta2=0.98, adam_epsilon=1e-6, adam_weight_decay=0.1, lr_scheduler="cosine",
                        lr_warmup_steps=100)

    g = parser.add_argument_group("model (fresh CLIP only)")
    g.add_argument("--text_hidden_size", type=int, default=256)
    g.add_argument("--text_num_hidden_layers", type=int, default=4)
    g.add_argument("--text_num_attention_heads", type=int, default=4)
    g.add_argument("--text_intermediate_size", type=int, default=None, help="Default: 4 x --text_hidden_size.")
    g.add_argument("--max_text_length", type=int, default=77,
                   help="Text positions (max_position_embeddings); captions are truncated to this many tokens.")
    g.add_argument("--vision_hidden_size", type=int, default=256)
    g.add_argument("--vision_num_hidden_layers", type=int, default=4)
    g.add_argument("--vision_num_attention_heads", type=int, default=4)
    g.add_argument("--vision_intermediate_size", type=int, default=None, help="Default: 4 x --vision_hidden_size.")
    g.add_argument("--patch_size", type=int, default=4, help="ViT patch size (the image side is --resolution).")
    g.add_argument("--projection_dim", type=int, default=256, help="Joint embedding width.")
    g.add_argument("--logit_scale_init", type=float, default=math.log(1 / 0.07),
                   help="Initial log temperature (CLIP: ln(1/0.07)); clamped to ln(100) while training.")

    g = parser.add_argument_group("training and validation")
    g.add_argument("--random_flip", action="store_true", help="Randomly flip training images horizontally.")
    g.add_argument("--logging_steps", type=int, default=25, help="Write a log line every N steps.")
    g.add_argument("--validation_steps", type=int, default=500, help="Retrieval accuracy every N steps.")
    g.add_argument("--max_validation_samples", type=int, default=None,
                   help="Use only the first N rows of --validation_split (default: all).")
    g.add_argument("--retrieval_batch_size", type=int, default=256,
                   help="Retrieval accuracy is measured within consecutive groups of this many pairs.")
    g.add_argument("--tracker_project_name", type=str, default="train_clip")
    return parser


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    check_common_args(args)
    for name in ("text_hidden_size", "text_num_hidden_layers", "text_num_attention_heads", "vision_hidden_size",
                 "vision_num_hidden_layers", "vision_num_attention_heads", "patch_size", "projection_dim",
                 "max_text_length", "logging_steps", "validation_steps"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name} must be > 0, got {getattr(args, name)}")
    if args.retrieval_batch_size < 5:
        raise ValueError(f"--retrieval_batch_size must be >= 5 (top-5 accuracy), got {args.retrieval_batch_size}")
    if args.pretrained_model_name_or_path is None:
        if args.resolution % args.patch_size:
            raise ValueError(f"--resolution {args.resolution} is not a multiple of --patch_size {args.patch_size}")
        for tower in ("text", "vision"):
            hidden, heads = getattr(args, f"{tower}_hidden_size"), getattr(args, f"{tower}_num_attention_heads")
            if hidden % heads:
                raise ValueError(f"--{tower}_hidden_size {hidden} is not divisible by --{tower}_num_attention_heads {heads}")
        if args.max_text_length < 3:
            raise ValueError(f"--max_text_length must be >= 3, got {args.max_text_length}")
    if args.max_validation_samples is not None and args.max_validation_samples < 2:
        raise ValueError(f"--max_validation_samples must be >= 2, got {args.max_validation_samples}")
    return args


def parse_args(input_args: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(input_args)
    try:
        check_args(args)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    return args


# ============================================================================================ model
def fresh_clip_config(args: argparse.Namespace, tokenizer):
    """A ``CLIPConfig`` sized by the model flags (vision image size = ``--resolution``)."""
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    text = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.text_hidden_size,
        intermediate_size=args.text_intermediate_size or 4 * args.text_hidden_size,
        num_hidden_layers=args.text_num_hidden_layers,
        num_attention_heads=args.text_num_attention_heads,
        max_position_embeddings=args.max_text_length,
        projection_dim=args.projection_dim,
        hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = CLIPVisionConfig(
        hidden_size=args.vision_hidden_size,
        intermediate_size=args.vision_intermediate_size or 4 * args.vision_hidden_size,
        num_hidden_layers=args.vision_num_hidden_layers,
        num_attention_heads=args.vision_num_attention_heads,
        image_size=args.resolution,
        patch_size=args.patch_size,
        projection_dim=args.projection_dim,
        hidden_act="quick_gelu",
    )
    return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=args.projection_dim,
                      logit_scale_init_value=args.logit_scale_init)


def load_clip(args: argparse.Namespace):
    """``(model, tokenizer, image_mean, image_std, source)`` for this run."""
    from transformers import CLIPModel

    from .evaluation.clip import default_image_normalization, load_clip_judge
    from .text import load_clip_tokenizer

    if args.pretrained_model_name_or_path:
        judge = load_clip_judge(args.pretrained_model_name_or_path, revision=args.revision, cache_dir=args.cache_dir)
        return judge.model.train().requires_grad_(True), judge.tokenizer, judge.image_mean, judge.image_std, judge.source
    tokenizer = load_clip_tokenizer()
    torch.manual_seed(args.seed)
    model = CLIPModel(fresh_clip_config(args, tokenizer))
    mean, std = default_image_normalization()
    return model.train(), tokenizer, mean, std, "fresh"


def text_encoder_from_clip(model):
    """A ``CLIPTextModelWithProjection`` holding ``model``'s text tower and text projection (copied)."""
    from transformers import CLIPTextModelWithProjection

    config = model.config.text_config.__class__.from_dict(model.config.text_config.to_dict())
    config.projection_dim = int(model.config.projection_dim)
    config.architectures = ["CLIPTextModelWithProjection"]
    text_encoder = CLIPTextModelWithProjection(config)
    state = {k: v for k, v in model.state_dict().items() if k.startswith(("text_model.", "text_projection."))}
    missing, unexpected = text_encoder.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise RuntimeError(f"text tower does not fit CLIPTextModelWithProjection: missing {missing}, unexpected {unexpected}")
    return text_encoder.eval()


def weight_decay_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups: no decay on biases, norms, embeddings and the temperature (as in CLIP)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "embedding" in name or "norm" in name or name == "logit_scale":
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ============================================================================================ data
def tokenize(tokenizer, texts: list[str], max_length: int, device=None) -> dict[str, torch.Tensor]:
    """Pad to the longest caption (the text tower is causal, so padding never changes real positions)."""
    out = tokenizer(list(texts), padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": out["input_ids"].to(device), "attention_mask": out["attention_mask"].to(device)}


def pixel_values(batch_pixels: torch.Tensor, image_size: int, mean, std, device, dtype=torch.float32) -> torch.Tensor:
    """Dataset tensors in [-1, 1] -> CLIP input, through the CLIP-score preprocessing (one definition)."""
    from .metrics.clip_score import clip_preprocess
    from .training.validation import to_uint8_nhwc

    return clip_preprocess(to_uint8_nhwc(batch_pixels), image_size, mean, std, device=device, dtype=dtype)


def _collate(examples: list[dict]) -> dict:
    batch = {"pixel_values": torch.stack([e["pixel_values"] for e in examples]), "text": [e["text"] for e in examples]}
    for key in LABEL_COLUMNS:
        if key in examples[0]:
            batch[key] = [e[key] for e in examples]
    return batch


# ============================================================================================ loss
def contrastive_loss(text_embeds: torch.Tensor, image_embeds: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE loss of this process's pairs against the captions and images of the
    whole global batch.

    ``text_embeds`` and ``image_embeds`` are this process's L2-normalised embeddings (row ``i`` of one
    pairs with row ``i`` of the other), ``logit_scale`` the model's log temperature. In one process
    this is ``CLIPModel``'s own loss. With several (``torch.distributed`` initialised, equal batches
    per process) the embeddings of every process are gathered with their gradients
    (:func:`~prodimg.training.losses.gather_batch`), so each caption is scored against every image of
    the global batch and vice versa, and the mean of the processes' losses, like the mean of their
    gradients that DDP takes, is the loss of one process holding the whole batch. Without the gather,
    each process would see only its own pairs as negatives, and ``N`` processes of batch ``B`` would
    train like batch ``B``, not ``N * B``.
    """
    import torch.nn.functional as F

    from .training.losses import gather_batch

    rank, (all_text, all_image) = gather_batch(text_embeds, image_embeds)
    scale = logit_scale.exp()
    labels = torch.arange(len(text_embeds), device=text_embeds.device) + rank * len(text_embeds)
    caption_loss = F.cross_entropy(torch.matmul(text_embeds, all_image.t()) * scale, labels)
    image_loss = F.cross_entropy(torch.matmul(image_embeds, all_text.t()) * scale, labels)
    return (caption_loss + image_loss) / 2.0


@torch.no_grad()
def in_batch_top1(text_embeds: torch.Tensor, image_embeds: torch.Tensor) -> float:
    """Text->image top-1 accuracy within the global batch: the fraction of its captions, over all
    processes, whose most similar image of the whole global batch is their own. Every process returns
    the same figure (the embeddings are gathered as :func:`contrastive_loss` gathers them)."""
    from .training.losses import gather_batch

    _, (all_text, all_image) = gather_batch(text_embeds.detach().float(), image_embeds.detach().float())
    nearest = torch.matmul(all_text, all_image.t()).argmax(dim=1)
    return float((nearest == torch.arange(len(all_text), device=nearest.device)).float().mean())


# ============================================================================================ retrieval
def retrieval_accuracy(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    group_size: int = 256,
    labels: np.ndarray | None = None,
) -> dict[str, float]:
    """Top-1/top-5 retrieval accuracy within consecutive groups of ``group_size`` pairs.

    ``t2i``: for each caption, is its own image among the k most similar images of its group;
    ``i2t``: the reverse. With ``labels`` (N, L) (e.g. category/colour/pattern ids), ``*_labels``
    count a retrieved item as correct when its labels equal the query's (captions describe
    attributes, not the individual garment, so several images of a group fit a caption). A last
    group smaller than 5 is dropped.
    """
    n = len(image_embeds)
    image_embeds = torch.nn.functional.normalize(image_embeds.float(), dim=-1)
    text_embeds = torch.nn.functional.normalize(text_embeds.float(), dim=-1)
    hits = {f"{d}_top{k}": 0.0 for d in ("t2i", "i2t") for k in (1, 5)}
    if labels is not None:
        hits.update({f"{d}_top1_labels": 0.0 for d in ("t2i", "i2t")})
    count = 0
    for start in range(0, n, group_size):
        stop = min(start + group_size, n)
        m = stop - start
        if m < 5:
            break
        sim = text_embeds[start:stop] @ image_embeds[start:stop].T  # (texts, images)
        target = torch.arange(m)
        for d, s in (("t2i", sim), ("i2t", sim.T)):
            top = s.topk(5, dim=1).indices
            hits[f"{d}_top1"] += float((top[:, 0] == target).sum())
            hits[f"{d}_top5"] += float((top == target[:, None]).any(dim=1).sum())
            if labels is not None:
                lab = torch.as_tensor(labels[start:stop])
                hits[f"{d}_top1_labels"] += float((lab[top[:, 0]] == lab).all(dim=1).sum())
        count += m
    if count == 0:
        raise ValueError(f"retrieval accuracy needs at least 5 pairs, got {n}")
    out = {k: v / count for k, v in hits.items()}
    out["num_pairs"] = count
    out["group_size"] = group_size
    out["chance_top1"] = 1.0 / min(group_size, count)
    return out


@torch.no_grad()
def embed_dataset(model, tokenizer, dataset, image_size: int, mean, std, device, batch_size: int = 256,
                  max_length: int = 77) -> tuple[torch.Tensor, torch.Tensor, np.ndarray | None]:
    """Normalised image and text embeddings (+ label matrix, if the dataset has label columns)."""
    was_training = model.training
    model.eval()
    images, texts, labels = [], [], []
    try:
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            batch = _collate(items)
            out = model(**tokenize(tokenizer, batch["text"], max_length, device),
                        pixel_values=pixel_values(batch["pixel_values"], image_size, mean, std, device))
            images.append(out.image_embeds.float().cpu())
            texts.append(out.text_embeds.float().cpu())
            cols = [c for c in LABEL_COLUMNS if c in batch]
            if cols:
                labels.append(np.stack([np.asarray(batch[c], dtype=np.int64) for c in cols], axis=1))
    finally:
        model.train(was_training)
    return torch.cat(images), torch.cat(texts), (np.concatenate(labels) if labels else None)


# ============================================================================================ trainer
class CLIPTrainer:
    """Sets up a run from parsed arguments (bad input fails here), then :meth:`train` runs it."""

    def __init__(self, args: argparse.Namespace):
        from accelerate.utils import set_seed
        from diffusers.optimization import get_scheduler
        from torch.utils.data import DataLoader

        from .data.loading import ProductImageDataset, load_image_text_dataset
        from .training.checkpointing import resolve_resume_checkpoint
        from .training.precision import MixedPrecision, NonFiniteGuard
        from .training.sampler import ResumableBatchSampler
        from .training.state import TrainerState
        from .training.tracking import setup_logging

        self.args = args = check_args(args)
        self.output_dir = Path(args.output_dir)
        self.accelerator = acc = accelerator_from_args(args)
        setup_logging(acc)
        set_seed(args.seed)
        self.device = acc.device
        self.precision = MixedPrecision(args.mixed_precision, self.device)
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        self.resume_path = resolve_resume_checkpoint(args.resume_from_checkpoint, self.output_dir)

        # Data.
        self.dataset_id = str(args.dataset_name or args.train_data_dir)
        load = {"dataset_name": args.dataset_name, "dataset_config_name": args.dataset_config_name,
                "train_data_dir": args.train_data_dir, "image_column": args.image_column,
                "caption_column": args.caption_column, "cache_dir": args.cache_dir}
        with acc.main_process_first():
            train_data = load_image_text_dataset(split=args.train_split, max_samples=args.max_train_samples, **load)
            try:
                val_data = load_image_text_dataset(split=args.validation_split,
                                                   max_samples=args.max_validation_samples, **load)
            except ValueError as err:
                logger.warning(f"No retrieval validation: split {args.validation_split!r} is unusable ({err})")
                val_data = None
        self.train_dataset = ProductImageDataset(train_data, args.resolution, args.image_column, args.caption_column,
                                                 random_flip=args.random_flip)
        self.val_dataset = None
        if val_data is not None:
            labels = [c for c in LABEL_COLUMNS if c in val_data.column_names]
            self.val_dataset = ProductImageDataset(val_data, args.resolution, args.image_column, args.caption_column,
                                                   extra_columns=labels)
        self.num_examples = len(self.train_dataset)
        self.sampler = ResumableBatchSampler(self.num_examples, args.train_batch_size, acc.num_processes,
                                             acc.process_index, seed=args.seed)

        # Model.
        model, self.tokenizer, self.image_mean, self.image_std, self.source = load_clip(args)
        self.image_size = int(model.config.vision_config.image_size)
        self.max_length = min(self.tokenizer.model_max_length, int(model.config.text_config.max_position_embeddings))
        self.model_unwrapped = model
        opt = torch.optim.AdamW(weight_decay_groups(model, args.adam_weight_decay), lr=args.learning_rate,
                                betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
        self.lr_scheduler = get_scheduler(args.lr_scheduler, opt, num_warmup_steps=args.lr_warmup_steps,
                                          num_training_steps=args.max_train_steps)
        self.guard = NonFiniteGuard(args.max_nonfinite_steps)
        self.state = TrainerState(global_batch_size=args.train_batch_size * acc.num_processes,
                                  dataset_size=self.num_examples)
        self.history: list[dict] = []
        self.last_checkpoint: str | None = None
        self.optimizer = opt
        if self.resume_path is not None:
            self._load(self.resume_path)
        self.model, self.optimizer = acc.prepare(model, opt)
        self.loader = DataLoader(self.train_dataset, batch_sampler=self.sampler, collate_fn=_collate,
                                 num_workers=args.dataloader_num_workers, pin_memory=self.device.type == "cuda")

    # ------------------------------------------------------------------------------------ state
    def _states(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer, "lr_scheduler": self.lr_scheduler, "precision": self.precision,
                "nonfinite_guard": self.guard, "trainer": self.state, "retrieval_history": {"history": self.history}}

    def _load(self, path: Path) -> None:
        from .training.checkpointing import load_checkpoint
        from .training.state import restore_rng_state

        states = self._states()
        states["trainer"] = states["retrieval_history"] = None
        rng, raw = load_checkpoint(path, {"clip": self.model_unwrapped}, states,
                                   process_index=self.accelerator.process_index)
        saved = raw["trainer"]
        self.state.load_state_dict({**saved, "global_batch_size": self.state.global_batch_size,
                                    "dataset_size": self.num_examples})
        if (saved["global_batch_size"], saved["dataset_size"]) != (self.state.global_batch_size, self.num_examples):
            logger.warning("The checkpoint used another global batch or dataset size: the data order restarts at "
                           f"the beginning of epoch {self.state.epoch}")
            self.state.batch_in_epoch = 0
        self.history = list(raw["retrieval_history"]["history"])
        if rng is not None:
            restore_rng_state(rng)
        self.last_checkpoint = str(path)
        logger.info(f"Resumed at step {self.state.step} (epoch {self.state.epoch}, batch {self.state.batch_in_epoch})")

    def save_checkpoint(self) -> Path:
        from .training.checkpointing import save_checkpoint
        from .training.state import capture_rng_state

        acc = self.accelerator
        path = save_checkpoint(acc, self.output_dir, self.state.step, models={"clip": acc.unwrap_model(self.model)},
                               states=self._states(), rng_state=capture_rng_state,
                               total_limit=self.args.checkpoints_total_limit,
                               metadata={"images_seen": self.state.images_seen})
        self.last_checkpoint = str(path)
        return path

    # ------------------------------------------------------------------------------------ loop pieces
    def train_step(self, batch: dict) -> dict[str, float]:
        from .training.precision import guarded_step

        acc, prec = self.accelerator, self.precision
        text = tokenize(self.tokenizer, batch["text"], self.max_length, self.device)
        pixels = pixel_values(batch["pixel_values"], self.image_size, self.image_mean, self.image_std, self.device)
        model = acc.unwrap_model(self.model)
        with prec.autocast():
            out = self.model(**text, pixel_values=pixels)
            loss = contrastive_loss(out.text_embeds, out.image_embeds, model.logit_scale).float()
        finite = torch.isfinite(loss.detach())
        acc.backward(prec.scale(loss))
        result = guarded_step(self.optimizer, self.model.parameters(), finite, prec, acc, self.args.max_grad_norm)
        with torch.no_grad():
            model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        self.lr_scheduler.step()
        self.state.step += 1
        self.state.images_seen += self.state.global_batch_size
        bad = self.guard.update(self.state.step, result, last_checkpoint=self.last_checkpoint)
        # both over the global batch: the loss is the mean of the processes' shares
        global_loss = float(acc.reduce(loss.detach(), reduction="mean"))
        return {"loss": global_loss, "train/t2i_top1_in_batch": in_batch_top1(out.text_embeds, out.image_embeds),
                "logit_scale": float(model.logit_scale.detach().exp()), "lr": self.lr_scheduler.get_last_lr()[0],
                "skipped/nonfinite_step": float(bad)}

    def validate(self) -> dict[str, float] | None:
        """Retrieval accuracy on the validation split (main process); None without a validation split."""
        acc = self.accelerator
        result = None
        if acc.is_main_process and self.val_dataset is not None:
            started = time.perf_counter()
            img, txt, labels = embed_dataset(acc.unwrap_model(self.model), self.tokenizer, self.val_dataset,
                                             self.image_size, self.image_mean, self.image_std, self.device,
                                             max_length=self.max_length)
            result = retrieval_accuracy(img, txt, self.args.retrieval_batch_size, labels)
            result["step"] = self.state.step
            self.history.append(result)
            acc.log({f"validation/{k}": v for k, v in result.items() if k.startswith(("t2i", "i2t"))},
                    step=self.state.step)
            logger.info(
                f"step {self.state.step}: validation retrieval ({result['num_pairs']} pairs, groups of "
                f"{result['group_size']}): text->image top-1 {result['t2i_top1']:.3f} top-5 {result['t2i_top5']:.3f}, "
                f"image->text top-1 {result['i2t_top1']:.3f} top-5 {result['i2t_top5']:.3f}"
                + (f"; same-labels top-1 t2i {result['t2i_top1_labels']:.3f} i2t {result['i2t_top1_labels']:.3f}"
                   if "t2i_top1_labels" in result else "")
                + f" [{time.perf_counter() - started:.0f} s]"
            )
        acc.wait_for_everyone()
        return result

    def train(self) -> dict[str, Any]:
        from .training.sampler import endless_batches
        from .training.state import Deadline
        from .training.tracking import Throughput, init_trackers, progress_bar

        args, acc = self.args, self.accelerator
        init_trackers(acc, args.tracker_project_name, {k: v for k, v in vars(args).items() if k != "hub_token"})
        n_params = sum(p.numel() for p in self.model_unwrapped.parameters())
        logger.info("***** Running CLIP pretraining *****")
        logger.info(f"  Examples = {self.num_examples}, model = {self.source} ({n_params / 1e6:.2f} M parameters, "
                    f"image {self.image_size} px, text {self.max_length} tokens)")
        logger.info(f"  Batch per process = {args.train_batch_size}, processes = {acc.num_processes}, "
                    f"steps = {args.max_train_steps} (starting at {self.state.step}), precision = {args.mixed_precision}")
        bar = progress_bar(acc, args.max_train_steps, self.state.step)
        meter = Throughput()
        batches = endless_batches(self.loader, self.sampler, self.state)
        running: list[float] = []
        deadline = Deadline(args.max_train_seconds, args.train_time_clock)
        try:
            while self.state.step < args.max_train_steps:
                if deadline.expired_everywhere(acc):
                    logger.info(f"Stopping at step {self.state.step}: --max_train_seconds {args.max_train_seconds:g} "
                                f"({args.train_time_clock} clock)")
                    break
                logs = self.train_step(next(batches))
                meter.add(self.state.global_batch_size)
                running.append(logs["loss"])
                bar.update(1)
                bar.set_postfix(loss=f"{logs['loss']:.3f}")
                step = self.state.step
                if step % args.logging_steps == 0 or step == args.max_train_steps:
                    logs["images_per_second"] = meter.rate()
                    acc.log(logs, step=step)
                    logger.info(f"step {step}: loss {np.mean(running):.4f} (last {len(running)}), in-batch t2i top-1 "
                                f"{logs['train/t2i_top1_in_batch']:.3f}, temperature 1/{logs['logit_scale']:.1f}, "
                                f"lr {logs['lr']:.2e}, {logs['images_per_second']:.0f} images/s")
                    running = []
                if step % args.validation_steps == 0 and step != args.max_train_steps:
                    self.validate()
                    meter.rate()
                if step % args.checkpointing_steps == 0:
                    self.save_checkpoint()
                    meter.rate()
            bar.close()
            if self.last_checkpoint is None or not self.last_checkpoint.endswith(f"-{self.state.step}"):
                self.save_checkpoint()
            if not self.history or self.history[-1]["step"] != self.state.step:
                self.validate()
            return self.finish()
        finally:
            bar.close()
            acc.end_training()

    # ------------------------------------------------------------------------------------ the end
    def finish(self) -> dict[str, Any]:
        from .evaluation.clip import save_clip_judge
        from .training.hub import push_folder_to_hub, write_model_card
        from .utils import atomic_directory, atomic_write_text

        acc, args = self.accelerator, self.args
        acc.wait_for_everyone()
        summary = {
            "global_step": self.state.step,
            "images_seen": self.state.images_seen,
            "epochs": self.state.images_seen / max(self.num_examples, 1),
            "nonfinite_steps_skipped": self.guard.total_nonfinite,
            "retrieval": self.history[-1] if self.history else None,
            "retrieval_history": self.history,
            "last_checkpoint": self.last_checkpoint,
        }
        if acc.is_main_process:
            model = acc.unwrap_model(self.model).eval()
            with atomic_directory(self.output_dir / "clip", overwrite=True) as tmp:
                save_clip_judge(tmp, model, self.tokenizer, self.image_mean, self.image_std)
            with atomic_directory(self.output_dir / "text_encoder", overwrite=True) as tmp:
                text_encoder_from_clip(model).save_pretrained(tmp, safe_serialization=True)
            with atomic_directory(self.output_dir / "tokenizer", overwrite=True) as tmp:
                self.tokenizer.save_pretrained(tmp)
            atomic_write_text(self.output_dir / RETRIEVAL_FILE, json.dumps(summary["retrieval"], indent=1))
            atomic_write_text(self.output_dir / SUMMARY_FILE, json.dumps(summary, indent=1))
            write_model_card(self.output_dir, self.model_card(model, summary))
            logger.info(f"Saved text_encoder/, tokenizer/ and clip/ to {self.output_dir}")
            if args.push_to_hub:
                push_folder_to_hub(self.output_dir, args.hub_model_id, token=args.hub_token,
                                   private=args.hub_private_repo, allow_patterns=UPLOAD_PATTERNS,
                                   commit_message=f"prodimg CLIP pretraining, step {self.state.step}")
        acc.wait_for_everyone()
        return summary

    def model_card(self, model, summary: dict) -> str:
        from huggingface_hub import ModelCard, ModelCardData

        args = self.args
        name = args.hub_model_id or self.output_dir.name
        cfg = model.config
        data = ModelCardData(library_name="transformers", pipeline_tag="zero-shot-image-classification",
                             tags=["clip", "prodimg", "product-images", "contrastive"], model_name=name)
        n_text = sum(p.numel() for p in model.text_model.parameters()) + model.text_projection.weight.numel()
        n_vision = sum(p.numel() for p in model.vision_model.parameters()) + model.visual_projection.weight.numel()
        r = summary["retrieval"]
        lines = [
            f"# {name}", "",
            ("A small CLIP (`transformers.CLIPModel`) pretrained contrastively on caption/image pairs with "
             "`train_scripts/train_clip.py`. `text_encoder/` + `tokenizer/` condition a `prodimg.ProductImagePipeline`; "
             "`clip/` is the full model, the CLIP-score judge of `prodimg eval`."), "",
            "```python",
            "from transformers import CLIPTextModelWithProjection",
            "from prodimg.evaluation.clip import load_clip_judge",
            "",
            f'text_encoder = CLIPTextModelWithProjection.from_pretrained("{name}", subfolder="text_encoder")',
            f'judge = load_clip_judge("{name}")  # clip/: model, tokenizer, image mean/std',
            "```", "",
            "## Model", "",
            (f"- text tower: {cfg.text_config.num_hidden_layers} layers, width {cfg.text_config.hidden_size}, "
             f"{cfg.text_config.num_attention_heads} heads, {cfg.text_config.max_position_embeddings} positions "
             f"({n_text / 1e6:.2f} M parameters)"),
            (f"- vision tower: ViT, {cfg.vision_config.image_size} px, patch {cfg.vision_config.patch_size}, "
             f"{cfg.vision_config.num_hidden_layers} layers, width {cfg.vision_config.hidden_size} "
             f"({n_vision / 1e6:.2f} M parameters)"),
            f"- projection: {cfg.projection_dim}; temperature 1/{float(model.logit_scale.detach().exp()):.1f}",
            f"- tokenizer: OpenAI CLIP BPE ({len(self.tokenizer)} tokens)",
            (f"- image preprocessing: shorter side to {self.image_size} px (bilinear), centre crop, mean "
             f"{[round(v, 4) for v in self.image_mean]}, std {[round(v, 4) for v in self.image_std]}"), "",
            "## Training", "",
            (f"- data: `{self.dataset_id}`, split `{args.train_split}` ({self.num_examples} pairs, "
             f"columns `{args.image_column}` / `{args.caption_column}`)"),
            f"- started from: {self.source}",
            (f"- steps: {summary['global_step']}, global batch {self.state.global_batch_size}, "
             f"{summary['epochs']:.2f} epochs, AdamW lr {args.learning_rate} ({args.lr_scheduler}, warmup "
             f"{args.lr_warmup_steps}), weight decay {args.adam_weight_decay}, precision {args.mixed_precision}"), "",
            "## Validation retrieval", "",
        ]
        if r:
            lines += [
                (f"Split `{args.validation_split}`, {r['num_pairs']} pairs, accuracy within groups of "
                 f"{r['group_size']} (chance top-1 {r['chance_top1']:.4f})."), "",
                "| direction | top-1 | top-5 |" + (" top-1, same labels |" if "t2i_top1_labels" in r else ""),
                "| --- | --- | --- |" + (" --- |" if "t2i_top1_labels" in r else ""),
            ]
            for d, label in (("t2i", "text -> image"), ("i2t", "image -> text")):
                extra = f" {r[f'{d}_top1_labels']:.3f} |" if f"{d}_top1_labels" in r else ""
                lines.append(f"| {label} | {r[f'{d}_top1']:.3f} | {r[f'{d}_top5']:.3f} |{extra}")
            if "t2i_top1_labels" in r:
                lines += ["", ("'Same labels': the retrieved item has the query's category, colour and pattern "
                               "(captions describe attributes, so several images of a group fit one caption).")]
        else:
            lines.append("No validation split was available.")
        card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines).rstrip() + "\n")
        return str(card)


# ============================================================================================ entry point
def main(argv: Sequence[str] | None = None) -> int:
    """0 on success, 2 for a bad argument/dataset/model (before training), 3 after too many non-finite steps."""
    from .training.precision import NonFiniteTrainingError

    args = parse_args(argv)
    try:
        trainer = CLIPTrainer(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"train_clip.py: error: {err}", file=sys.stderr)
        return 2
    try:
        trainer.train()
    except NonFiniteTrainingError as err:
        logger.error(str(err))
        print(f"train_clip.py: error: {err}", file=sys.stderr)
        return 3
    return 0
