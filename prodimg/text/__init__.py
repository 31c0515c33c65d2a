"""Text side of prodimg: the OpenAI CLIP BPE tokenizer shipped with the package."""

from __future__ import annotations

from pathlib import Path

CLIP_TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "assets" / "clip_tokenizer"


def load_clip_tokenizer():
    """Load the bundled CLIP tokenizer (49,408 tokens, 77 positions) offline.

    Returns a ``transformers.CLIPTokenizer``. The files are built by
    ``python -m prodimg.text.build_clip_tokenizer``.
    """
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(CLIP_TOKENIZER_DIR), local_files_only=True)


__all__ = ["CLIP_TOKENIZER_DIR", "load_clip_tokenizer"]
