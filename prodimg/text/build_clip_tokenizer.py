"""Build the OpenAI CLIP BPE tokenizer files (49,408 tokens, 77 positions) from the open_clip wheel.

Exact command (run once from the repo root; the output is committed)::

    python -m prodimg.text.build_clip_tokenizer            # pip-downloads the wheel
    python -m prodimg.text.build_clip_tokenizer --wheel open_clip_torch-3.3.0-py3-none-any.whl

It runs ``pip download --no-deps open_clip_torch -d TMP`` (or uses ``--wheel``), reads
``open_clip/bpe_simple_vocab_16e6.txt.gz`` straight out of the zip (open_clip_torch is never
installed: it pulls torchvision, which breaks the CPU torch here), and writes ``vocab.json``,
``merges.txt``, ``tokenizer_config.json`` and ``special_tokens_map.json`` into
``prodimg/assets/clip_tokenizer/`` (default ``--out``), which
``transformers.CLIPTokenizer.from_pretrained(dir, local_files_only=True)`` loads offline.

The vocabulary is built exactly as CLIP's ``SimpleTokenizer`` does: the first 48,894 merge lines
after the header; the 256 byte-unicode characters, then their ``</w>`` forms, then one token per
merge, then ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407).

Licence of the BPE vocabulary: MIT, Copyright (c) 2021 OpenAI, redistributed by open_clip
(https://github.com/mlfoundations/open_clip, MIT).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2  # 48,894, as in CLIP's SimpleTokenizer
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MODEL_MAX_LENGTH = 77
VOCAB_SIZE = 49408
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "assets" / "clip_tokenizer"


def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2 reversible byte -> printable unicode character table (order matters)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def build_vocab(bpe_text: str) -> tuple[dict[str, int], list[str]]:
    """Return (token -> id, merge lines) from the contents of bpe_simple_vocab_16e6.txt."""
    lines = bpe_text.split("\n")[1 : NUM_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError("unexpected BPE merges file layout")
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += [BOS, EOS]
    encoder = {tok: i for i, tok in enumerate(vocab)}
    if len(encoder) != VOCAB_SIZE:
        raise ValueError(f"vocab has {len(encoder)} unique tokens, expected {VOCAB_SIZE}")
    return encoder, [" ".join(m) for m in merges]


def read_bpe_from_wheel(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as zf:
        return gzip.decompress(zf.read(BPE_MEMBER)).decode("utf-8")


def download_wheel(dest: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "open_clip_torch", "-d", str(dest)],
        check=True,
    )
    wheels = sorted(dest.glob("open_clip_torch-*.whl"))
    if not wheels:
        raise FileNotFoundError(f"no open_clip_torch wheel in {dest}")
    return wheels[-1]


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_tokenizer(bpe_text: str, out: Path) -> None:
    encoder, merges = build_vocab(bpe_text)
    out.mkdir(parents=True, exist_ok=True)
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}
    config = {
        **special,
        "add_prefix_space": False,
        "errors": "replace",
        "do_lower_case": True,
        "model_max_length": MODEL_MAX_LENGTH,
        "tokenizer_class": "CLIPTokenizer",
    }
    _write_atomic(out / "vocab.json", json.dumps(encoder, ensure_ascii=False) + "\n")
    _write_atomic(out / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")
    _write_atomic(out / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
    _write_atomic(out / "special_tokens_map.json", json.dumps(special, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wheel", type=Path, help="local open_clip_torch wheel (default: pip download)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    args = parser.parse_args(argv)
    if args.wheel is not None:
        bpe_text = read_bpe_from_wheel(args.wheel)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            bpe_text = read_bpe_from_wheel(download_wheel(Path(tmp)))
    write_tokenizer(bpe_text, args.out)
    print(f"wrote CLIP tokenizer ({VOCAB_SIZE} tokens) to {args.out}")


if __name__ == "__main__":
    main()
