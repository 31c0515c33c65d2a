"""CPU/GPU sampling speed of a ProductImagePipeline.

    python benchmarks/sampling_speed.py                              # default generator config, random weights
    python benchmarks/sampling_speed.py --pipeline pipelines/prodimg-fashion-32 --batch_size 64
    python benchmarks/sampling_speed.py --dtype bfloat16 --channels_last
    python benchmarks/sampling_speed.py --pipeline pipelines/prodimg-fashion-32 --batch_size 64 --dtype bfloat16 --compile

Prints parameter counts and images/s (from the median time per batch) for the full pipeline
call (text encoding included) and for the denoising loop alone, at the given batch size and
steps. Weights do not affect speed, so
without --pipeline a randomly initialised default generator and a 256-wide, 4-layer CLIP text
encoder stand in for the trained ones.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def build_default_pipeline():
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from prodimg import DDGANScheduler, ProductGenerator, ProductImagePipeline
    from prodimg.text import load_clip_tokenizer

    torch.manual_seed(0)
    text_config = CLIPTextConfig(
        vocab_size=49408, hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
        max_position_embeddings=77, projection_dim=256, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )
    return ProductImagePipeline(
        tokenizer=load_clip_tokenizer(),
        text_encoder=CLIPTextModelWithProjection(text_config).eval(),
        generator=ProductGenerator().eval(),
        scheduler=DDGANScheduler(),
    )


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def timed(fn, repeats: int) -> float:
    """Median seconds per call over ``repeats`` calls after one warm-up call. The median, not the
    mean: on a shared 2-core machine a few calls are slowed by other processes."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", default=None)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--channels_last", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the generator (the warm-up, compilation included, is timed and printed)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from prodimg import ProductImagePipeline

    pipe = ProductImagePipeline.from_pretrained(args.pipeline) if args.pipeline else build_default_pipeline()
    dtype = getattr(torch, args.dtype)
    pipe = pipe.to(args.device, dtype)
    if args.channels_last:
        pipe.generator.to(memory_format=torch.channels_last)
    pipe.set_progress_bar_config(disable=True)
    steps = args.steps or pipe.scheduler.config.num_train_timesteps
    prompts = ["a red striped dress", "a blue solid sneaker", "a black checked bag", "a white floral t-shirt"]
    prompts = (prompts * args.batch_size)[: args.batch_size]

    embeds = pipe.encode_text(prompts)
    if args.compile:
        pipe.generator.compile()  # what `prodimg generate/eval --compile` does (prodimg.backends.load_pipeline)
        start = time.perf_counter()
        with torch.inference_mode():
            pipe(prompts, num_inference_steps=steps, generator=torch.Generator(args.device).manual_seed(0), output_type="pt")
        print(f"torch.compile warm-up: {time.perf_counter() - start:.1f} s")

    def full():
        pipe(prompts, num_inference_steps=steps, generator=torch.Generator(args.device).manual_seed(0), output_type="pt")

    def loop_only():
        pipe(prompt_embeds=embeds, num_inference_steps=steps, generator=torch.Generator(args.device).manual_seed(0),
             output_type="pt")

    with torch.inference_mode():
        t_full = timed(full, args.repeats)
        t_loop = timed(loop_only, args.repeats)
        pipe.pad_prompts_to_max_length = True  # the old behaviour, for comparison
        t_full_max = timed(full, args.repeats)
        pipe.pad_prompts_to_max_length = False
    g = pipe.generator.config
    print(f"device={args.device} dtype={args.dtype} channels_last={args.channels_last} compile={args.compile} "
          f"threads={torch.get_num_threads()}")
    print(f"generator: {count(pipe.generator) / 1e6:.2f}M params, {g.sample_size}px, channels {list(g.block_out_channels)}")
    print(f"text encoder: {count(pipe.text_encoder) / 1e6:.2f}M params")
    print(f"batch {args.batch_size}, {steps} steps: full pipeline {args.batch_size / t_full:.1f} images/s "
          f"({t_full * 1000:.0f} ms/batch, prompts padded to the longest); denoising only "
          f"{args.batch_size / t_loop:.1f} images/s; full with prompts padded to "
          f"{pipe.max_text_length} tokens {args.batch_size / t_full_max:.1f} images/s")


if __name__ == "__main__":
    main()
