#!/usr/bin/env bash
# Runs on the GPU machine, from the repository root, as BUNDLE/run.sh (scripts/gpu_bundle.sh copies it there):
# installs the carried wheels, rebuilds the catalogue, restores the pipeline (and the guidance CLIP if the bundle
# carries one: CLIP_WEIGHT sets its weight; and the guidance classifier if it carries a teacher: TEACHER_HEADS,
# default category,pattern=0.2, and TEACHER_WEIGHT set its heads and weight), runs the fine-tune at BATCH
# (the settings of train_default_model.sh's stages 3b/3c, without its embedding cache; 256 for 3b, 1024 for 3c)
# until STEPS or SECS, and packs the result into OUT: final.tar (EMA pipeline without the text encoder, logs,
# samples) and the last checkpoint in 15 MB parts (ckpt.tar.part-*). Here (3b; 3c: gan-ft2 and gan-ft's
# encoder): mkdir -p RUN/gan-ft && tar -C RUN/gan-ft -xf final.tar, copy RUN/gan/text_encoder next to it, and
# `cat ckpt.tar.part-* | tar -C RUN/gan-ft -xf -` to continue.
set -uo pipefail
B=$(cd "$(dirname "$0")" && pwd)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/gpu_bundle_out}; W=${W:-/tmp/gpu_bundle_work}
SECS=${SECS:-1000000}; STEPS=${STEPS:-1000000}; BATCH=${BATCH:-256}; CKPT=${CKPT:-2000}
WORKERS=${WORKERS:-8}; DW=${DW:-16}; INSTALL=${INSTALL:-1}
mkdir -p "$OUT"; rm -rf "$W"; mkdir -p "$W/src"
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
if [ "$INSTALL" = 1 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$B"/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
fi
python3 -c "import torch, diffusers, datasets, transformers, accelerate, prodimg; print('torch', torch.__version__, torch.cuda.is_available(), 'diffusers', diffusers.__version__, 'datasets', datasets.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__)" || exit 1
el data
cp "$B"/fmnist/*.gz "$W/src/"; for f in "$B"/fmnist/*.xz; do xz -dc "$f" > "$W/src/$(basename "$f" .xz)"; done
python3 -m prodimg.cli build-dataset fashion-catalog --out "$W/data" --resolution 32 --seed 0 --num_workers "$DW" --source_dir "$W/src" 2>&1 | grep -v Saving || exit 1
sha256sum "$W/data/train/data-00000-of-00001.arrow"
el pipe
cp -r "$B/pipe" "$W/pipe"; xz -d "$W/pipe/text_encoder/model.safetensors.xz"
FROZEN=("$W/pipe/text_encoder"); EXTRA_ARGS=()
if [ -d "$B/clip" ]; then
  cp -r "$B/clip" "$W/clip"; xz -d "$W/clip/model.safetensors.xz"; FROZEN+=("$W/clip")
  EXTRA_ARGS+=(--clip_guidance_model "$W/clip" ${CLIP_WEIGHT:+--clip_guidance_weight "$CLIP_WEIGHT"})
fi
if [ -d "$B/teacher" ]; then
  EXTRA_ARGS+=(--classifier_guidance_model "$B/teacher" --classifier_guidance_heads "${TEACHER_HEADS:-category,pattern=0.2}"
               ${TEACHER_WEIGHT:+--classifier_guidance_weight "$TEACHER_WEIGHT"})
fi
# A pipeline without its discriminator (the shipped one) trains against a fresh one of the recipe's size, with
# its generator anchored to where it started (ANCHOR_WEIGHT, default 10; 0 turns it off; ANCHOR_STEPS decays it
# to 0 over that many generator steps): on the CPU this held category accuracy where a new discriminator
# otherwise cost 17 points in 100 generator steps (docs/default-32-history.md, "Fine-tuning this pipeline without its
# discriminator").
if [ ! -d "$W/pipe/discriminator" ]; then
  EXTRA_ARGS+=(--discriminator_config configs/default-32-discriminator.json --anchor_weight "${ANCHOR_WEIGHT:-10}"
               ${ANCHOR_STEPS:+--anchor_steps "$ANCHOR_STEPS"})
fi
python3 - "${FROZEN[@]}" <<'PY' || exit 1
# The transport copies are fp16; train with their weights in float32, as the CPU stages did. A CLIP carried
# without its text tower gets the pipeline's text encoder's weights (the same tensor names) back first.
import json, os, sys
from safetensors.torch import load_file, save_file
for d in sys.argv[1:]:
    sd = load_file(f"{d}/model.safetensors")
    if os.path.exists(f"{d}/TEXT_TOWER_FROM_PIPELINE"):
        sd.update(load_file(f"{sys.argv[1]}/model.safetensors"))
    save_file({k: v.float() for k, v in sd.items()}, f"{d}/model.safetensors", metadata={"format": "pt"})
    cfg = json.load(open(f"{d}/config.json")); cfg["dtype"] = "float32"; json.dump(cfg, open(f"{d}/config.json", "w"), indent=2)
PY
el train
accelerate launch --num_processes 1 --num_machines 1 --mixed_precision bf16 --dynamo_backend no --num_cpu_threads_per_process 4 \
  train_scripts/train_product_gan.py --pretrained_model_name_or_path "$W/pipe" --dataset_name "$W/data" --resolution 32 --seed 0 \
  --train_batch_size "$BATCH" --learning_rate 2e-4 --mixed_precision bf16 --dataloader_num_workers "$WORKERS" \
  --checkpointing_steps "$CKPT" --checkpoints_total_limit 1 --validation_steps "$CKPT" --validation_fid_num_images 0 \
  --report_to tensorboard --max_train_steps "$STEPS" --max_train_seconds "$SECS" --output_dir "$W/gan" "${EXTRA_ARGS[@]}" ${EXTRA:-} > "$OUT/train.log" 2>&1
rc=$?
el "train rc=$rc"
grep -v "it/s\]$" "$OUT/train.log" | tail -40
cat "$W/gan/training_summary.json"
tar -C "$W/gan" -cf "$OUT/final.tar" --exclude text_encoder --exclude 'checkpoint-*' .
ckpt=$(ls -d "$W"/gan/checkpoint-* 2>/dev/null | sort -V | tail -1)
[ -n "$ckpt" ] && tar -C "$W/gan" -cf - "$(basename "$ckpt")" | split -b 15M - "$OUT/ckpt.tar.part-"
ls -la "$OUT"; el done
exit "$rc"
