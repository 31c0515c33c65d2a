"""Save a ProductImagePipeline from a GAN training checkpoint's EMA weights (to evaluate a run mid-way).

    python scripts/checkpoint_to_pipeline.py runs/default-32-v2/gan/checkpoint-3000 \
        --text_encoder runs/default-32-v2/clip --out /tmp/pipe-3000
    prodimg eval --pipeline /tmp/pipe-3000 --dataset data/fashion-catalog-32 --split test,test_unseen_pairs \
        --num_images 300 --metrics color_accuracy,category_accuracy,diversity

The finished run saves the same thing itself (`train_product_gan.py --max_train_steps <step>` on a
checkpoint); this script leaves the run's folder untouched. The scheduler is DDGANScheduler with the
generator's number of timesteps; the tokenizer is the shipped CLIP tokenizer.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diffusers.training_utils import EMAModel
from transformers import CLIPTextModelWithProjection

from prodimg import DDGANScheduler, ProductGenerator, ProductImagePipeline
from prodimg.text import load_clip_tokenizer
from prodimg.training.checkpointing import checkpoint_problem
from prodimg.training.state import load_state_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a checkpoint-N folder of train_product_gan.py (generator/ + ema.safetensors)")
    parser.add_argument("--text_encoder", required=True, help="the run's --pretrained_model_name_or_path (has text_encoder/)")
    parser.add_argument("--out", required=True, help="where to save the pipeline")
    args = parser.parse_args()

    ckpt = Path(args.checkpoint)
    problem = checkpoint_problem(ckpt)
    if problem is not None:
        parser.error(f"{ckpt} is not a complete checkpoint: {problem}")
    # The trainer's own path: the EMA state of the checkpoint, copied into a fresh generator.
    generator = ProductGenerator.from_config(ProductGenerator.load_config(ckpt / "generator"))
    ema = EMAModel(generator.parameters())
    ema.load_state_dict(load_state_files(ckpt, "ema"))
    ema.copy_to(generator.parameters())
    text_encoder = CLIPTextModelWithProjection.from_pretrained(args.text_encoder, subfolder="text_encoder")
    pipe = ProductImagePipeline(
        tokenizer=load_clip_tokenizer(), text_encoder=text_encoder.eval(), generator=generator.eval(),
        scheduler=DDGANScheduler(num_train_timesteps=generator.config.num_train_timesteps),
    )
    pipe.save_pretrained(args.out)
    print("saved", args.out)


if __name__ == "__main__":
    main()
