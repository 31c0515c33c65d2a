#!/usr/bin/env bash
# Pack what stage 3b or 3c of train_default_model.sh (the batch-256 and batch-1024 fine-tunes) needs on a GPU
# machine with no network and a small transfer limit, into one folder (about 50 MB), with the script that runs
# it there:
#
#   RUN=runs/default-32-v2 BUNDLE=.gpu_bundle bash scripts/gpu_bundle.sh      # here (stage 3b: from RUN/gan)
#   SECS=370 bash .gpu_bundle/run.sh                                           # there, from the repo root
#   PIPE=runs/default-32-v2/gan-ft bash scripts/gpu_bundle.sh                  # stage 3c: from 3b's result,
#   SECS=430 BATCH=1024 WORKERS=10 CKPT=1000 bash .gpu_bundle/run.sh           # at batch 1024
#   PIPE=P CLIP=runs/clip-32-cont bash scripts/gpu_bundle.sh                   # with CLIP guidance (below)
#   PIPE=pipelines/prodimg-fashion-32 TEACHER=runs/default-32/teacher bash scripts/gpu_bundle.sh   # and/or
#                                                                              # classifier guidance (below)
#
# - Fashion-MNIST's IDX files, xz-compressed (the catalogue is rebuilt there with the same seed; rebuilt
#   here from these files it is byte-identical to data/fashion-catalog-32);
# - PIPE's pipeline (default RUN/gan: EMA generator, discriminator, scheduler, tokenizer) with a transport
#   copy of the text encoder whose token-embedding rows that no catalogue caption, validation prompt or ""
#   uses are zeroed, so they compress away (109 of 49,408 rows are used): every caption the trainer encodes
#   gets the same embedding as with the full encoder. The fine-tuned generator is paired with the full
#   encoder afterwards. A pipeline without a discriminator (the shipped one) is fine-tuned against a fresh
#   one built from configs/default-32-discriminator.json.
# - with CLIP (a train_clip.py output or its clip/ folder): that CLIP, in the same transport copy, and run.sh
#   trains with --clip_guidance_model (weight CLIP_WEIGHT there, default the trainer's). When its text tower
#   is PIPE's text encoder it travels without it (run.sh restores it from the pipeline's encoder).
# - with TEACHER (an attribute classifier of train_attribute_classifier.py, 1 MB; stage 3e's teacher, not
#   prodimg eval's judge): run.sh trains with --classifier_guidance_model, heads TEACHER_HEADS there (default
#   category,pattern=0.2, stage 3e's last phase) at weight TEACHER_WEIGHT (default the trainer's), so an
#   adversarial fine-tune of a guided pipeline keeps being taught its categories and patterns.
# - wheels of diffusers, datasets, dill and multiprocess, the versions installed here (the GPU image has
#   torch, transformers and accelerate).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/default-32}
PIPE=${PIPE:-$RUN/gan}
BUNDLE=${BUNDLE:-.gpu_bundle}
FMNIST_DIR=${FMNIST_DIR:-/usr/share/datasets/fashion-mnist}
DATA=${DATA:-data/fashion-catalog-32}
CLIP=${CLIP:-}
TEACHER=${TEACHER:-}
if [ -n "$TEACHER" ] && [ ! -f "$TEACHER/config.json" ]; then
  echo "TEACHER=$TEACHER is not an attribute classifier folder (no config.json)" >&2; exit 2
fi
rm -rf "$BUNDLE"; mkdir -p "$BUNDLE/fmnist" "$BUNDLE/whl"
for stem in train-images-idx3-ubyte t10k-images-idx3-ubyte; do
  zcat "$FMNIST_DIR/$stem.gz" | xz -9 -T0 > "$BUNDLE/fmnist/$stem.xz"
done
cp "$FMNIST_DIR"/*labels-idx1-ubyte.gz "$BUNDLE/fmnist/"
for pkg in diffusers datasets dill multiprocess; do
  python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$BUNDLE/whl" "$pkg==$(python -c "import importlib.metadata as m; print(m.version('$pkg'))")"
done
python - "$PIPE" "$DATA" "$BUNDLE" "$CLIP" <<'PY'
import json, shutil, sys
from pathlib import Path
import datasets, torch
from safetensors.torch import load_file, save_file
from transformers import CLIPTokenizer
from prodimg.evaluation.clip import clip_subfolder
from prodimg.training.gan import DEFAULT_VALIDATION_PROMPTS
src, data, bundle, clip = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4]
dst = bundle / "pipe"
for sub in ["generator", "discriminator", "scheduler", "tokenizer", "text_encoder"]:
    if sub != "discriminator" or (src / sub).is_dir():
        shutil.copytree(src / sub, dst / sub)
shutil.copy(src / "model_index.json", dst)
tok = CLIPTokenizer.from_pretrained(src / "tokenizer")
texts = [t for split in datasets.load_from_disk(data).values() for t in split["text"]]
texts += ["", *DEFAULT_VALIDATION_PROMPTS]
used = set()
for i in range(0, len(texts), 4096):
    batch = tok(texts[i : i + 4096], padding="max_length", max_length=tok.model_max_length, truncation=True)
    for ids in batch["input_ids"]:
        used.update(ids)


def transport_copy(folder: Path) -> None:
    """fp16 weights (half the transfer; run.sh casts them back to float32) with unused token rows zeroed."""
    weights = folder / "model.safetensors"
    sd = {k: v.half() if v.is_floating_point() else v for k, v in load_file(weights).items()}
    (key,) = [k for k in sd if k.endswith("token_embedding.weight")]
    keep = torch.zeros(sd[key].shape[0], dtype=torch.bool)
    keep[sorted(used)] = True
    sd[key][~keep] = 0
    save_file(sd, str(weights), metadata={"format": "pt"})
    cfg = json.loads((folder / "config.json").read_text())
    cfg["dtype"] = "float16"
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    print(f"{folder}: {int(keep.sum())} of {keep.numel()} token-embedding rows kept")


transport_copy(dst / "text_encoder")
if clip:
    shutil.copytree(Path(clip) / clip_subfolder(clip), bundle / "clip")
    transport_copy(bundle / "clip")
    # When the CLIP's text tower is the pipeline's text encoder (same tensor names and values), leave it out
    # and run.sh takes it from the encoder (6 MB less); a different one travels (guidance uses its own).
    te, sd = load_file(dst / "text_encoder" / "model.safetensors"), load_file(bundle / "clip" / "model.safetensors")
    if all(k in sd and torch.equal(v, sd[k]) for k, v in te.items()):
        save_file({k: v for k, v in sd.items() if k not in te}, str(bundle / "clip" / "model.safetensors"),
                  metadata={"format": "pt"})
        (bundle / "clip" / "TEXT_TOWER_FROM_PIPELINE").write_text("text_model.* and text_projection.* are the "
                                                                 "pipeline's text_encoder weights\n")
        print(f"{bundle / 'clip'}: text tower left out ({len(te)} tensors, the pipeline's text encoder)")
PY
for f in "$BUNDLE"/pipe/text_encoder/model.safetensors "$BUNDLE"/clip/model.safetensors; do
  if [ -f "$f" ]; then xz -9 -T0 "$f"; fi
done
if [ -n "$TEACHER" ]; then
  mkdir -p "$BUNDLE/teacher" && cp "$TEACHER"/config.json "$TEACHER"/*.safetensors "$BUNDLE/teacher/"
fi
cp scripts/gpu_bundle_run.sh "$BUNDLE/run.sh"
du -sh "$BUNDLE"
# The device takes at most 64 MiB per call (DEVICE_LIMIT_MB), the repository's tracked files included. A bundle
# that does not fit beside them is also cut into folders $BUNDLE.part1, .part2, ... (git-ignored), each small
# enough to travel with the repository in one call. Send one per call on the same warm machine, each call
# copying its part into .gpu_parts/ (ignored, so it stays there between calls), then unpack and run:
#   run(carry=[".gpu_bundle.part1"], command="mkdir -p .gpu_parts && cp .gpu_bundle.part1/* .gpu_parts/")  # ...
#   run(command="cat .gpu_parts/* | tar -xf - && SECS=... bash .gpu_bundle/run.sh")
tracked=$(git ls-files -z | xargs -0 stat -c %s | awk '{s += $1} END {print s}')
bundle_bytes=$(du -sb "$BUNDLE" | cut -f1)
room=$(( ${DEVICE_LIMIT_MB:-64} * 1048576 - tracked - 1048576 ))  # 1 MiB to spare
rm -rf "$BUNDLE".part*
if [ "$room" -le 0 ]; then
  echo "the tracked files alone ($tracked bytes) fill the ${DEVICE_LIMIT_MB:-64} MiB a device call takes" >&2; exit 1
elif [ "$bundle_bytes" -gt "$room" ]; then
  tar -C "$(dirname "$BUNDLE")" -cf - "$(basename "$BUNDLE")" | split -b "$room" -d -a 2 - "$BUNDLE.tar."
  n=0
  for f in "$BUNDLE".tar.*; do n=$((n + 1)); mkdir "$BUNDLE.part$n"; mv "$f" "$BUNDLE.part$n/"; done
  echo "$BUNDLE ($bundle_bytes bytes) does not fit beside the tracked files ($tracked bytes) in one call:" \
       "$n parts of at most $room bytes, $BUNDLE.part1 to $BUNDLE.part$n"
fi
