"""Train a text-to-product-image generator (ProductImagePipeline) as a few-step denoising diffusion GAN.

Fresh generator and discriminator (presets for 32/64/128/256 px) on a CLIP text encoder + tokenizer
folder, on the fashion catalog at 32 px::

    accelerate launch train_scripts/train_product_gan.py \
        --pretrained_model_name_or_path PIPELINE_OR_TEXT_ENCODER_DIR \
        --dataset_name data/fashion-catalog-32 \
        --resolution 32 --train_batch_size 64 --max_train_steps 20000 \
        --mixed_precision bf16 --output_dir runs/fashion-32

Continue or fine-tune a saved pipeline (its generator; its ``discriminator/`` folder if present,
else a new discriminator that alone trains for the first ``--discriminator_warmup_steps``, default
200), resuming the newest complete checkpoint of the run folder if there is one::

    accelerate launch train_scripts/train_product_gan.py \
        --pretrained_model_name_or_path pipelines/prodimg-fashion-32 \
        --dataset_name data/fashion-catalog-32 --resolution 32 \
        --train_batch_size 64 --max_train_steps 40000 --learning_rate 1e-4 \
        --checkpointing_steps 1000 --checkpoints_total_limit 3 --resume_from_checkpoint latest \
        --validation_steps 1000 --validation_fid_num_images 1000 --early_stopping_patience 5 \
        --output_dir runs/fashion-32-ft

An imagefolder (images + ``metadata.jsonl`` with ``file_name`` and ``text``), two processes, then
publish (model card, sample grid and pipeline files only; checkpoints and logs stay local)::

    accelerate launch --multi_gpu --num_processes 2 train_scripts/train_product_gan.py \
        --pretrained_model_name_or_path openai/clip-vit-base-patch32 \
        --train_data_dir my_products/ --caption_column text --resolution 64 \
        --train_batch_size 32 --max_train_steps 20000 --mixed_precision bf16 \
        --output_dir runs/my-products-64 --push_to_hub --hub_model_id me/prodimg-my-products-64

Logs go to TensorBoard (``tensorboard --logdir runs/fashion-32/logs``). Exit status: 0 done, 2 bad
arguments or data (nothing trained), 3 stopped after ``--max_nonfinite_steps`` consecutive
non-finite steps (the last complete checkpoint is intact). All logic lives in
``prodimg.training`` (``prodimg.training.gan`` for this script).
"""

import sys

from prodimg.training.gan import main, parse_args  # noqa: F401  (parse_args: diffusers-style entry)

if __name__ == "__main__":
    sys.exit(main())
