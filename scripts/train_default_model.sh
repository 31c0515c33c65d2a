#!/usr/bin/env bash
# Retrain the shipped default pipeline (pipelines/prodimg-fashion-32) from scratch:
#   fashion catalog dataset -> domain CLIP (train_scripts/train_clip.py)
#   -> denoising GAN (train_scripts/train_product_gan.py) -> pipelines/prodimg-fashion-32 (fp16)
#
#   bash scripts/train_default_model.sh                 # CPU, hours
#   CLIP_STEPS=2500 CLIP_BATCH=512 GAN_SECONDS=1800 BATCH=256 WORKERS=8 bash scripts/train_default_model.sh   # one GPU
#   GAN_STEPS=21000 GAN_SECONDS=100000 FT_STEPS=4195 FT2_STEPS=3189 FT2_MERGE=0.5 bash scripts/train_default_model.sh   # the fifth version
#   GAN_STEPS=21000 GAN_SECONDS=100000 FT_STEPS=4195 FT2_STEPS=3189 FT2_MERGE=0.5 FT3_STEPS=800 FT3_MERGE=0.5 \
#     bash scripts/train_default_model.sh                                                                   # and stage 3d
#   GAN_STEPS=21000 GAN_SECONDS=100000 FT_STEPS=4195 FT2_STEPS=3189 FT2_MERGE=0.5 FT4_STEPS=1200 \
#     FT4_PATTERN_STEPS=600 bash scripts/train_default_model.sh                                             # the seventh version
#   GAN_STEPS=21000 GAN_SECONDS=100000 FT_STEPS=4195 FT2_STEPS=3189 FT2_MERGE=0.5 FT4_STEPS=1200 \
#     FT4_PATTERN_STEPS="600 600" FT4_PATTERN_WEIGHT="0.1 0.2" bash scripts/train_default_model.sh          # the eighth version
#   GAN_STEPS=21000 GAN_SECONDS=100000 FT_STEPS=4195 FT2_STEPS=3189 FT2_MERGE=0.5 FT4_STEPS=1200 \
#     FT4_PATTERN_STEPS="600 1200" FT4_PATTERN_WEIGHT="0.1 0.2" bash scripts/train_default_model.sh         # the ninth version
#   GAN_STEPS=21000 GAN_SECONDS=100000 FT_STEPS=4195 FT2_STEPS=3189 FT2_MERGE=0.5 FT4_STEPS=1200 \
#     FT4_PATTERN_STEPS="600 2400" FT4_PATTERN_WEIGHT="0.1 0.2" bash scripts/train_default_model.sh         # the tenth version
#   GAN_STEPS=21000 GAN_SECONDS=100000 FT_STEPS=4195 FT2_STEPS=3189 FT2_MERGE=0.5 FT4_STEPS=1200 \
#     FT4_PATTERN_STEPS="600 3000" FT4_PATTERN_WEIGHT="0.1 0.2" bash scripts/train_default_model.sh         # the eleventh (shipped)
#
# Every stage is resumable: rerunning continues from the newest complete checkpoint. GAN_SECONDS
# bounds the GAN's wall-clock time: the run is stopped at the deadline and the EMA generator of the
# last complete checkpoint is saved as the pipeline. Configs: configs/default-32-{generator,discriminator}.json.
# GAN_ARGS adds train_product_gan.py options (e.g. GAN_ARGS="--diffaugment color,translation").
# FT_STEPS > 0 adds a stage 3b: fine-tune the stage-3 pipeline (its EMA generator and its discriminator)
# at batch FT_BATCH (default 256) for FT_STEPS steps into $RUN/gan-ft, and ship that instead.
# FT2_STEPS > 0 adds a stage 3c: the same from the previous stage's pipeline at FT2_BATCH (default 1024)
# into $RUN/gan-ft2; with FT2_MERGE=ALPHA the shipped generator is (1 - ALPHA) * start + ALPHA * fine-tune
# (prodimg.training.merge, WiSE-FT) in $RUN/gan-ft2-merged.
# FT3_STEPS > 0 adds a stage 3d, a CLIP-guided fine-tune of the previous stage's pipeline on its own text
# encoder. The guide is the stage-2 CLIP continued once per entry of GUIDE_CLIP_STEPS (default "700 800") at
# half its learning rate. The fine-tune (batch FT3_BATCH, default 256; FT3_STEPS steps, the first 200 training
# only the discriminator) meets a new discriminator at a 4x lower generator learning rate, anchored to its
# start over its first FT3_ANCHOR_STEPS (300) generator steps, into $RUN/gan-ft3; FT3_MERGE=ALPHA merges it
# with its start as in 3c.
# FT4_STEPS > 0 adds a stage 3e, a classifier-guided fine-tune of the previous stage's pipeline without a
# discriminator: an attribute classifier of its own (train_attribute_classifier.py, seed 1, 32-64-128-128,
# TEACHER_STEPS steps, default 4000; not the judge of prodimg eval) into $RUN/teacher, then FT4_STEPS steps at
# batch FT4_BATCH (default 256), --adversarial_weight 0, its category cross-entropy at weight 1 and a constant anchor (10) to the
# start, generator learning rate 5e-5, EMA 0.99, into $RUN/gan-ft4. FT4_PATTERN_STEPS > 0 then resumes that run
# for FT4_PATTERN_STEPS more steps that also guide with the teacher's pattern head at weight FT4_PATTERN_WEIGHT
# (default 0.1; its cross-entropy starts several times the category head's). Both take a list, one resumed
# phase per entry: FT4_PATTERN_STEPS="600 600" FT4_PATTERN_WEIGHT="0.1 0.2" runs 600 steps at 0.1, then 600 at 0.2.
# FT5_STEPS > 0 (needs stage 3e's teacher) adds a stage 3f, an adversarial fine-tune of the previous stage's
# pipeline against a new discriminator: FT5_STEPS steps at batch FT5_BATCH (default 256), the first 200 training
# only the discriminator, generator learning rate 5e-5 (discriminator 2e-4), EMA 0.99, a constant anchor (10) to
# the start, and the teacher's guidance kept on (heads FT5_HEADS, default "category,pattern=0.2", weight 1), into
# $RUN/gan-ft5, whose discriminator stage 4 ships with the pipeline. Not in the shipped recipe: FT5_STEPS=1400
# was measured once (docs/default-32-history.md, "After the eleventh version") and failed the replacement rule.
set -euo pipefail
cd "$(dirname "$0")/.."

RUN=${RUN:-runs/default-32}
DATA=${DATA:-data/fashion-catalog-32}
SEED=${SEED:-0}
CLIP_STEPS=${CLIP_STEPS:-700}
CLIP_BATCH=${CLIP_BATCH:-128}
GAN_STEPS=${GAN_STEPS:-1000000}
GAN_SECONDS=${GAN_SECONDS:-10800}
BATCH=${BATCH:-32}
LR=${LR:-2e-4}
WORKERS=${WORKERS:-0}
PRECISION=${PRECISION:-bf16}
CKPT_STEPS=${CKPT_STEPS:-500}
FID_IMAGES=${FID_IMAGES:-0}
SHIP=${SHIP:-pipelines/prodimg-fashion-32}
PORT=${PORT:-29517}
# accelerate launch starts a process without --cpu with OMP_NUM_THREADS=1 unless told otherwise: use every core.
THREADS=${THREADS:-$(nproc)}
GAN_ARGS=${GAN_ARGS:-}
FT_STEPS=${FT_STEPS:-0}
FT_BATCH=${FT_BATCH:-256}
FT_SECONDS=${FT_SECONDS:-1000000}
FT2_STEPS=${FT2_STEPS:-0}
FT2_BATCH=${FT2_BATCH:-1024}
FT2_SECONDS=${FT2_SECONDS:-1000000}
FT2_MERGE=${FT2_MERGE:-}
FT3_STEPS=${FT3_STEPS:-0}
FT3_BATCH=${FT3_BATCH:-256}
FT3_SECONDS=${FT3_SECONDS:-1000000}
FT3_ANCHOR_STEPS=${FT3_ANCHOR_STEPS:-300}
FT3_MERGE=${FT3_MERGE:-}
GUIDE_CLIP_STEPS=${GUIDE_CLIP_STEPS:-700 800}
FT4_STEPS=${FT4_STEPS:-0}
FT4_BATCH=${FT4_BATCH:-256}
FT4_SECONDS=${FT4_SECONDS:-1000000}
FT4_PATTERN_STEPS=${FT4_PATTERN_STEPS:-0}
FT4_PATTERN_WEIGHT=${FT4_PATTERN_WEIGHT:-0.1}
TEACHER_STEPS=${TEACHER_STEPS:-4000}
FT5_STEPS=${FT5_STEPS:-0}
FT5_BATCH=${FT5_BATCH:-256}
FT5_SECONDS=${FT5_SECONDS:-1000000}
FT5_HEADS=${FT5_HEADS:-category,pattern=0.2}
# Check the pattern phases and stage 3f's heads now, not hours later when their stages reach them.
read -r -a FT4_PATTERN_STEPS_LIST <<< "$FT4_PATTERN_STEPS"
read -r -a FT4_PATTERN_WEIGHT_LIST <<< "$FT4_PATTERN_WEIGHT"
if [ "${#FT4_PATTERN_STEPS_LIST[@]}" != "${#FT4_PATTERN_WEIGHT_LIST[@]}" ]; then
  echo "FT4_PATTERN_WEIGHT ('$FT4_PATTERN_WEIGHT') needs one weight for each entry of FT4_PATTERN_STEPS ('$FT4_PATTERN_STEPS')" >&2
  exit 2
fi
for steps in "${FT4_PATTERN_STEPS_LIST[@]}"; do
  [[ "$steps" =~ ^[0-9]+$ ]] || { echo "FT4_PATTERN_STEPS: '$steps' is not a whole number of steps" >&2; exit 2; }
done
python - "$FT5_HEADS" "${FT4_PATTERN_WEIGHT_LIST[@]}" <<'PY' || exit 2
import sys
from prodimg.training.classifier_guidance import parse_heads
for weight in sys.argv[2:]:  # each phase's heads, as stage 3e passes them
    try:
        parse_heads(f"category,pattern={weight}")
    except ValueError as err:
        sys.exit(f"FT4_PATTERN_WEIGHT: {err}")
try:
    parse_heads(sys.argv[1])
except ValueError as err:
    sys.exit(f"FT5_HEADS: {err}")
PY
if [ "$FT5_STEPS" -gt 0 ] && [ "$FT4_STEPS" -le 0 ] && [ ! -f "$RUN/teacher/config.json" ]; then
  echo "FT5_STEPS guides with stage 3e's teacher ($RUN/teacher), which FT4_STEPS > 0 trains" >&2
  exit 2
fi
LAUNCH="accelerate launch --num_processes 1 --num_machines 1 --mixed_precision $PRECISION --dynamo_backend no --main_process_port $PORT --num_cpu_threads_per_process $THREADS"

# 1. Data
if [ ! -f "$DATA/dataset_dict.json" ]; then
  python -m prodimg.cli build-dataset fashion-catalog --out "$DATA" --resolution 32 --seed "$SEED" --num_workers "${DATA_WORKERS:-1}" \
    ${FMNIST_DIR:+--source_dir "$FMNIST_DIR"}
fi

# 2. Domain CLIP (text 4 x 256, ViT patch 4 at 32 px 4 x 256, projection 256: train_clip.py's defaults)
$LAUNCH train_scripts/train_clip.py \
  --dataset_name "$DATA" --resolution 32 --seed "$SEED" \
  --train_batch_size "$CLIP_BATCH" --max_train_steps "$CLIP_STEPS" --learning_rate 5e-4 --lr_warmup_steps 50 \
  --dataloader_num_workers "$WORKERS" --checkpointing_steps 100 --checkpoints_total_limit 2 \
  --validation_steps 350 --resume_from_checkpoint latest --report_to tensorboard --output_dir "$RUN/clip"

# 3. Denoising GAN on the frozen text encoder, stopped at the deadline
gan() {
  $LAUNCH train_scripts/train_product_gan.py \
    --pretrained_model_name_or_path "$RUN/clip" --dataset_name "$DATA" --resolution 32 --seed "$SEED" \
    --generator_config configs/default-32-generator.json --discriminator_config configs/default-32-discriminator.json \
    --train_batch_size "$BATCH" --learning_rate "$LR" --mixed_precision "$PRECISION" \
    --dataloader_num_workers "$WORKERS" --checkpointing_steps "$CKPT_STEPS" --checkpoints_total_limit 2 \
    --validation_steps "$CKPT_STEPS" --validation_fid_num_images "$FID_IMAGES" \
    --embedding_cache_dir "$RUN/embedding-cache" --report_to tensorboard \
    --resume_from_checkpoint latest --output_dir "$RUN/gan" $GAN_ARGS "$@"
}
set +e
timeout --signal=TERM --kill-after=60 "$GAN_SECONDS" bash -c "$(declare -f gan); LAUNCH='$LAUNCH'; RUN='$RUN'; DATA='$DATA'; SEED='$SEED'; BATCH='$BATCH'; LR='$LR'; PRECISION='$PRECISION'; WORKERS='$WORKERS'; CKPT_STEPS='$CKPT_STEPS'; FID_IMAGES='$FID_IMAGES'; GAN_ARGS='$GAN_ARGS'; gan --max_train_steps $GAN_STEPS"
rc=$?
set -e
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
  # Deadline: finish from the newest complete checkpoint (training stops at once, the EMA pipeline is saved).
  last=$(ls -d "$RUN"/gan/checkpoint-* 2>/dev/null | sed 's/.*checkpoint-//' | sort -n | tail -1)
  [ -n "$last" ] || { echo "no complete checkpoint before the deadline" >&2; exit 1; }
  gan --max_train_steps "$last"
elif [ "$rc" != 0 ]; then
  exit "$rc"
fi

# 3b/3c. Optional fine-tunes at larger batches, each from the previous stage's pipeline (its EMA generator and
# discriminator, fresh optimizers; resumable; each stops at its STEPS or SECONDS)
finetune() {  # SRC DST STEPS BATCH SECONDS [trainer options, after (and so over) the ones here]
  $LAUNCH train_scripts/train_product_gan.py \
    --pretrained_model_name_or_path "$1" --dataset_name "$DATA" --resolution 32 --seed "$SEED" \
    --train_batch_size "$4" --learning_rate "$LR" --mixed_precision "$PRECISION" \
    --dataloader_num_workers "$WORKERS" --checkpointing_steps "$CKPT_STEPS" --checkpoints_total_limit 2 \
    --validation_steps "$CKPT_STEPS" --validation_fid_num_images "$FID_IMAGES" \
    --embedding_cache_dir "$RUN/embedding-cache" --report_to tensorboard \
    --max_train_steps "$3" --max_train_seconds "$5" \
    --resume_from_checkpoint latest --output_dir "$2" $GAN_ARGS "${@:6}"
}
take() {  # START TUNED [ALPHA]: the next stage starts from TUNED, or with ALPHA from its merge with START
  if [ -n "${3:-}" ]; then
    # WiSE-FT: average the fine-tune's generator with its start's (weight ALPHA on the fine-tune)
    python -m prodimg.training.merge "$1" "$2" --alpha "$3" --out "$2-merged"
    FINAL="$2-merged"
  else
    FINAL="$2"
  fi
}
FINAL="$RUN/gan"
if [ "$FT_STEPS" -gt 0 ]; then
  finetune "$FINAL" "$RUN/gan-ft" "$FT_STEPS" "$FT_BATCH" "$FT_SECONDS"
  FINAL="$RUN/gan-ft"
fi
if [ "$FT2_STEPS" -gt 0 ]; then
  finetune "$FINAL" "$RUN/gan-ft2" "$FT2_STEPS" "$FT2_BATCH" "$FT2_SECONDS"
  take "$FINAL" "$RUN/gan-ft2" "$FT2_MERGE"
fi
if [ "$FT3_STEPS" -gt 0 ]; then
  GUIDE="$RUN/clip"; i=0
  for steps in $GUIDE_CLIP_STEPS; do  # each continuation resumes its own folder when rerun
    i=$((i + 1))
    $LAUNCH train_scripts/train_clip.py --pretrained_model_name_or_path "$GUIDE" \
      --dataset_name "$DATA" --resolution 32 --seed "$((SEED + i))" \
      --train_batch_size "$CLIP_BATCH" --max_train_steps "$steps" --learning_rate 2.5e-4 --lr_warmup_steps 50 \
      --dataloader_num_workers "$WORKERS" --checkpointing_steps 100 --checkpoints_total_limit 2 \
      --validation_steps "$steps" --resume_from_checkpoint latest --report_to tensorboard --output_dir "$RUN/clip-guide$i"
    GUIDE="$RUN/clip-guide$i"
  done
  finetune "$FINAL" "$RUN/gan-ft3" "$FT3_STEPS" "$FT3_BATCH" "$FT3_SECONDS" \
    --discriminator_config configs/default-32-discriminator.json --learning_rate 5e-5 --d_learning_rate 2e-4 \
    --ema_decay 0.99 --clip_guidance_model "$GUIDE" --clip_guidance_weight 2 \
    --anchor_weight 10 --anchor_steps "$FT3_ANCHOR_STEPS"
  take "$FINAL" "$RUN/gan-ft3" "$FT3_MERGE"
fi
if [ "$FT4_STEPS" -gt 0 ]; then
  if [ ! -f "$RUN/teacher/config.json" ]; then
    python train_scripts/train_attribute_classifier.py --dataset_name "$DATA" --resolution 32 \
      --block_out_channels 32 64 128 128 --train_batch_size 128 --max_train_steps "$TEACHER_STEPS" \
      --learning_rate 3e-3 --seed "$((SEED + 1))" --recolor_prob 0.5 --validation_steps 1000 --output_dir "$RUN/teacher"
  fi
  ft4() {  # STEPS HEADS: the same run, resumed from its newest checkpoint
    finetune "$FINAL" "$RUN/gan-ft4" "$1" "$FT4_BATCH" "$FT4_SECONDS" \
      --discriminator_config configs/default-32-discriminator.json --learning_rate 5e-5 --ema_decay 0.99 \
      --adversarial_weight 0 --classifier_guidance_model "$RUN/teacher" --classifier_guidance_heads "$2" \
      --classifier_guidance_weight 1 --anchor_weight 10
  }
  ft4 "$FT4_STEPS" category
  total=$FT4_STEPS
  for i in "${!FT4_PATTERN_STEPS_LIST[@]}"; do  # each phase resumes the one before it
    [ "${FT4_PATTERN_STEPS_LIST[$i]}" -gt 0 ] || continue
    total=$((total + FT4_PATTERN_STEPS_LIST[$i]))
    ft4 "$total" "category,pattern=${FT4_PATTERN_WEIGHT_LIST[$i]}"
  done
  FINAL="$RUN/gan-ft4"
fi
if [ "$FT5_STEPS" -gt 0 ]; then
  finetune "$FINAL" "$RUN/gan-ft5" "$FT5_STEPS" "$FT5_BATCH" "$FT5_SECONDS" \
    --discriminator_config configs/default-32-discriminator.json --learning_rate 5e-5 --d_learning_rate 2e-4 \
    --ema_decay 0.99 --classifier_guidance_model "$RUN/teacher" --classifier_guidance_heads "$FT5_HEADS" \
    --classifier_guidance_weight 1 --anchor_weight 10
  FINAL="$RUN/gan-ft5"
fi

# 4. Ship: fp16 weights in save_pretrained layout, with the discriminator (1.5 MB), so that fine-tuning the
# shipped pipeline continues it instead of warming up a new one
python - "$FINAL" "$SHIP" <<'PY'
import sys, torch
from prodimg import ProductDiscriminator, ProductImagePipeline
from prodimg.utils import atomic_directory
src, dst = sys.argv[1], sys.argv[2]
pipe = ProductImagePipeline.from_pretrained(src, dtype=torch.float16)
import shutil
from pathlib import Path
with atomic_directory(dst, overwrite=True) as tmp:
    pipe.save_pretrained(tmp)
    if (Path(src) / "discriminator" / "config.json").is_file():
        disc = ProductDiscriminator.from_pretrained(
            Path(src) / "discriminator", use_safetensors=True, torch_dtype=torch.float16
        )
        disc.save_pretrained(Path(tmp) / "discriminator", safe_serialization=True)
    card = Path(src) / "README.md"  # the trainer's model card; add `prodimg eval` figures before shipping
    if card.is_file():
        shutil.copyfile(card, Path(tmp) / "README.md")
print("saved", dst, "- now run prodimg eval and put its figures in the model card")
PY
