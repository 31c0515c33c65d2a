"""Prompt-embedding cache: the frozen CLIP text encoder runs once per distinct caption.

The GAN trains with a frozen text encoder, so a caption's embeddings never change. The cache
stores, per caption,

- ``prompt_embeds``: the token hidden states ``last_hidden_state`` (max_length, D),
- ``attention_mask``: the tokenizer's mask (max_length,),
- ``pooled_prompt_embeds``: ``text_embeds`` for ``CLIPTextModelWithProjection``, ``pooler_output``
  for ``CLIPTextModel``,

keyed by ``(text encoder identity, tokenizer identity, caption)``. Identities are SHA-256 hashes of
the encoder's class, config and weights and of the tokenizer's vocabulary/merges/special tokens,
so a cache file written for one encoder is never used with another. Captions are tokenized like
the pipeline does (``padding="max_length"``, ``max_length=tokenizer.model_max_length``,
``truncation=True``; a truncated caption is logged) and encoded in batches under ``no_grad``.

Memory: each caption costs ``max_length * D * 4`` bytes in float32 (77 x 512 -> 158 KB), so 10k
distinct captions take about 1.6 GB; pass ``cache_dir`` to keep the encodings across runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

CACHE_FORMAT = "prodimg-prompt-embeds-v1"
_TRANSIENT_CONFIG_KEYS = {
    "_name_or_path",
    "transformers_version",
    "_commit_hash",
    "_attn_implementation_autoset",
}


@dataclass
class PromptEmbeddings:
    """Encoded prompts, batch first."""

    prompt_embeds: torch.Tensor  # (B, max_length, D)
    attention_mask: torch.Tensor  # (B, max_length)
    pooled_prompt_embeds: torch.Tensor  # (B, P)

    def to(self, device=None, dtype=None) -> PromptEmbeddings:
        return PromptEmbeddings(
            self.prompt_embeds.to(device=device, dtype=dtype),
            self.attention_mask.to(device=device),
            self.pooled_prompt_embeds.to(device=device, dtype=dtype),
        )


def text_encoder_fingerprint(text_encoder: torch.nn.Module) -> str:
    """SHA-256 of the encoder's class, config (without paths/versions) and every weight's bytes."""
    h = hashlib.sha256()
    h.update(type(text_encoder).__name__.encode())
    config = getattr(text_encoder, "config", None)
    if config is not None:
        cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        cfg = {k: v for k, v in cfg.items() if k not in _TRANSIENT_CONFIG_KEYS}
        h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    for name, tensor in sorted(text_encoder.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 of what decides the token ids: vocabulary, merges, normalisation, special tokens, length."""
    h = hashlib.sha256()
    h.update(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # Without the backend's truncation/padding state: it is whatever the last call left there (and
        # is saved into tokenizer.json by save_pretrained), while the cache always tokenizes with
        # explicit settings. A tokenizer with neither set hashes exactly as before.
        from tokenizers import Tokenizer

        stateless = Tokenizer.from_str(backend.to_str())
        stateless.no_truncation()
        stateless.no_padding()
        h.update(stateless.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
        ranks = getattr(tokenizer, "bpe_ranks", None)
        if ranks is not None:
            h.update(json.dumps(sorted((" ".join(k), v) for k, v in ranks.items())).encode())
    settings = {
        "model_max_length": tokenizer.model_max_length,
        "padding_side": getattr(tokenizer, "padding_side", None),
        "truncation_side": getattr(tokenizer, "truncation_side", None),
        "pad_token_id": tokenizer.pad_token_id,
        "special_tokens": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
    }
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()


def _pooled(output) -> torch.Tensor:
    pooled = getattr(output, "text_embeds", None)
    if pooled is None:
        pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        raise TypeError(
            "text encoder output has neither `text_embeds` (CLIPTextModelWithProjection) nor "
            "`pooler_output` (CLIPTextModel)"
        )
    return pooled


def _stack_to(rows: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """``torch.stack(rows)`` on ``device``: stacked where the rows are, then moved in one copy (rows
    on several devices, as after a ``pack`` and new captions, are moved one by one first)."""
    if len({r.device for r in rows}) > 1:
        rows = [r.to(device) for r in rows]
    return torch.stack(rows).to(device)


class PromptEmbeddingCache:
    """Encode each distinct caption once with a frozen text encoder and serve the stored result.

    ``cache.encode(["red tee", "blue bag"])`` returns :class:`PromptEmbeddings` identical to running
    the encoder on those captions (tokenized with max-length padding). Unknown captions are
    encoded in batches of ``batch_size``; ``precompute(captions)`` fills the cache up front (e.g.
    with a dataset's whole caption column). With ``cache_dir`` the cache is read from / written to
    ``cache_dir/prompt_embeds-<key[:16]>.safetensors`` (``save()``), where the key hashes the
    encoder (config + weights) and the tokenizer.
    """

    def __init__(
        self,
        text_encoder: torch.nn.Module,
        tokenizer,
        *,
        batch_size: int = 256,
        device: torch.device | str | None = None,
        cache_dir: str | os.PathLike | None = None,
        max_length: int | None = None,
    ):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = int(max_length or tokenizer.model_max_length)
        self.device = torch.device(device) if device is not None else next(text_encoder.parameters()).device
        self.encoder_key = text_encoder_fingerprint(text_encoder)
        self.tokenizer_key = tokenizer_fingerprint(tokenizer)
        self.key = hashlib.sha256(
            f"{self.encoder_key}|{self.tokenizer_key}|{self.max_length}".encode()
        ).hexdigest()
        self._rows: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        # set by pack(): every row stacked into one table per field, and each caption's row number
        self._table: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._index: dict[str, int] = {}
        self.num_encoded = 0  # captions run through the encoder by this object (not loaded)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        if self.cache_dir is not None and self.cache_path.exists():
            self.load(self.cache_path)

    # -- bookkeeping -------------------------------------------------------------------------
    @property
    def cache_path(self) -> Path:
        if self.cache_dir is None:
            raise ValueError("this cache has no cache_dir; pass a path to save()/load()")
        return self.cache_dir / f"prompt_embeds-{self.key[:16]}.safetensors"

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached embeddings (what :meth:`pack` would put on a device)."""
        return sum(t.numel() * t.element_size() for row in self._rows.values() for t in row)

    def __contains__(self, caption: str) -> bool:
        return caption in self._rows

    def cache_key(self, caption: str) -> tuple[str, str, str]:
        """The full key of one entry: (text encoder identity, tokenizer identity, caption)."""
        return (self.encoder_key, self.tokenizer_key, caption)

    # -- encoding ----------------------------------------------------------------------------
    def tokenize(self, captions: Sequence[str]) -> dict:
        return self.tokenizer(
            list(captions),
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        )

    @torch.no_grad()
    def encode_uncached(self, captions: Sequence[str]) -> PromptEmbeddings:
        """Run the text encoder on ``captions`` as one batch (no cache involved)."""
        tokens = self.tokenize(captions)
        lengths = [
            len(ids) for ids in self.tokenizer(list(captions), truncation=False, verbose=False)["input_ids"]
        ]
        for caption, n in zip(captions, lengths):
            if n > self.max_length:
                logger.warning("caption truncated to %d tokens (it has %d): %r", self.max_length, n, caption)
        input_ids = tokens["input_ids"].to(self.device)
        attention_mask = tokens["attention_mask"].to(self.device)
        output = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask)
        return PromptEmbeddings(output.last_hidden_state, tokens["attention_mask"], _pooled(output))

    def _check_captions(self, captions) -> list[str]:
        if isinstance(captions, str):
            captions = [captions]
        captions = list(captions)
        for i, c in enumerate(captions):
            if not isinstance(c, str):
                raise TypeError(f"captions[{i}] must be a str, got {type(c).__name__}: {c!r}")
        return captions

    def precompute(self, captions: Iterable[str]) -> int:
        """Encode every caption not yet cached (in batches); returns how many were new."""
        captions = self._check_captions(captions)
        missing = list(dict.fromkeys(c for c in captions if c not in self._rows))
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start : start + self.batch_size]
            out = self.encode_uncached(chunk)
            hidden = out.prompt_embeds.detach().cpu()
            mask = out.attention_mask.detach().cpu()
            pooled = out.pooled_prompt_embeds.detach().cpu()
            for i, caption in enumerate(chunk):
                self._rows[caption] = (hidden[i], mask[i], pooled[i])
            self.num_encoded += len(chunk)
        return len(missing)

    def encode(self, captions: str | Sequence[str], device=None) -> PromptEmbeddings:
        """Embeddings of ``captions`` (encoding the ones not cached yet), on ``device``."""
        captions = self._check_captions(captions)
        if not captions:
            raise ValueError("captions must not be empty")
        self.precompute(captions)
        if self._table is not None and all(c in self._index for c in captions):
            table = self._table
            index = torch.tensor([self._index[c] for c in captions], dtype=torch.long).to(table[0].device)
            out = PromptEmbeddings(*(t.index_select(0, index) for t in table))
        else:
            rows = [self._rows[c] for c in captions]
            target = torch.device(device) if device is not None else rows[0][0].device
            out = PromptEmbeddings(*(_stack_to([r[k] for r in rows], target) for k in range(3)))
        return out.to(device) if device is not None else out

    def pack(self, device: torch.device | str | None = None) -> PromptEmbeddings:
        """Stack every cached row into one table per field on ``device`` (default: where they are).

        Afterwards :meth:`encode` gathers a batch with one indexed read on that device instead of
        stacking per-caption rows on the host and copying them over: on a GPU the whole cache stays
        resident (``len(cache) * max_length * D * 4`` bytes) and a training step moves only the
        caption indices. The rows become views of the table (the old row storage is released). Captions
        added later are served from their own rows until the next ``pack``. Returns the table.
        """
        captions = list(self._rows)
        if not captions:
            raise ValueError("the cache is empty; nothing to pack")
        target = torch.device(device) if device is not None else self._rows[captions[0]][0].device
        table = tuple(_stack_to([self._rows[c][k] for c in captions], target) for k in range(3))
        self._rows = {c: (table[0][i], table[1][i], table[2][i]) for i, c in enumerate(captions)}
        self._table = table
        self._index = {c: i for i, c in enumerate(captions)}
        return PromptEmbeddings(*table)

    __call__ = encode

    # -- persistence -------------------------------------------------------------------------
    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write all entries to a safetensors file (atomically); returns its path."""
        from safetensors.torch import save

        from ..utils import atomic_write_bytes

        path = Path(path) if path is not None else self.cache_path
        captions = list(self._rows)
        if not captions:
            raise ValueError("the cache is empty; nothing to save")
        tensors = {
            name: torch.stack([self._rows[c][k].cpu() for c in captions]).contiguous()
            for k, name in enumerate(("prompt_embeds", "attention_mask", "pooled_prompt_embeds"))
        }
        metadata = {
            "format": CACHE_FORMAT,
            "key": self.key,
            "text_encoder": self.encoder_key,
            "tokenizer": self.tokenizer_key,
            "max_length": str(self.max_length),
            "captions": json.dumps(captions, ensure_ascii=False),
        }
        atomic_write_bytes(path, save(tensors, metadata=metadata))
        return path

    def load(self, path: str | os.PathLike) -> int:
        """Add the entries of a cache file written for the same encoder and tokenizer.

        Raises ``ValueError`` if the file was written for another encoder/tokenizer.
        """
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = Path(path)
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        if metadata.get("format") != CACHE_FORMAT:
            raise ValueError(f"{path} is not a prompt-embedding cache ({CACHE_FORMAT})")
        if metadata.get("key") != self.key:
            raise ValueError(
                f"{path} was written for another text encoder/tokenizer (key {metadata.get('key', '?')[:16]}, "
                f"this one is {self.key[:16]})"
            )
        tensors = load_file(str(path))
        captions = json.loads(metadata["captions"])
        for i, caption in enumerate(captions):
            self._rows.setdefault(
                caption,
                (
                    tensors["prompt_embeds"][i],
                    tensors["attention_mask"][i],
                    tensors["pooled_prompt_embeds"][i],
                ),
            )
        return len(captions)


__all__ = [
    "PromptEmbeddingCache",
    "PromptEmbeddings",
    "text_encoder_fingerprint",
    "tokenizer_fingerprint",
]
