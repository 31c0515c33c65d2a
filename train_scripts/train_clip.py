"""Pretrain a small domain CLIP (transformers ``CLIPModel``) contrastively on caption/image pairs.

The shipped text encoder (32 px fashion catalog; text 4x256, ViT patch 4 at 32 px 4x256, projection 256;
the model flags' defaults), trained on 2 shared CPU cores (bf16 autocast) in about 30-60 minutes::

    accelerate launch --num_processes 1 --num_cpu_threads_per_process 1 train_scripts/train_clip.py \
        --dataset_name data/fashion-catalog-32 --resolution 32 \
        --train_batch_size 128 --max_train_steps 700 --learning_rate 5e-4 --lr_warmup_steps 50 \
        --checkpointing_steps 100 --checkpoints_total_limit 2 --validation_steps 350 \
        --mixed_precision bf16 --resume_from_checkpoint latest --seed 0 --output_dir runs/clip-32

(Re-running the same command resumes the newest complete checkpoint.)

Then train the GAN on it (``--pretrained_model_name_or_path runs/clip-32`` reads ``text_encoder/`` +
``tokenizer/``) and score with its full model (``prodimg eval --clip_model runs/clip-32``, reads
``clip/``). Continue from a Hub CLIP on your own imagefolder (``metadata.jsonl`` with ``text``)::

    accelerate launch train_scripts/train_clip.py \
        --pretrained_model_name_or_path openai/clip-vit-base-patch32 \
        --train_data_dir my_products/ --resolution 256 --train_batch_size 64 \
        --max_train_steps 1000 --learning_rate 1e-5 --output_dir runs/clip-my-products

(Images are read at ``--resolution``, a power of two, and resized to the model's own 224 px by the
CLIP preprocessing that CLIP score uses too.)

Outputs: ``text_encoder/`` (CLIPTextModelWithProjection, safetensors), ``tokenizer/``, ``clip/``
(CLIPModel + tokenizer + preprocessor config), ``retrieval.json`` (validation text->image and
image->text top-1/top-5 within groups of 256), ``README.md`` (model card), ``checkpoint-*/``. Exit
status: 0 done, 2 bad arguments or data, 3 too many non-finite steps. All logic lives in
``prodimg.clip_training``.
"""

import sys

from prodimg.clip_training import main, parse_args  # noqa: F401  (parse_args: diffusers-style entry)

if __name__ == "__main__":
    sys.exit(main())
