"""Our denoising GAN against a diffusers diffusion baseline, at the same training budget.

    python benchmarks/vs_diffusion.py --dataset data/fashion-catalog-32 \
        --text_encoder pipelines/prodimg-fashion-32 --clip_model runs/default-32/clip \
        --budget_minutes 30 --output_dir runs/vs-diffusion

Both models are trained from scratch on the same dataset and resolution, on the same frozen text
encoder (taken from ``--text_encoder``: a saved pipeline or a text-encoder folder) and its prompt
embeddings (one shared cache, built before either budget starts), for the same time budget each:

- ours: ``train_scripts/train_product_gan.py``'s trainer (``--max_train_seconds``) with the shipped
  default's recipe (``configs/default-32-{generator,discriminator}.json``, batch 32, Adam 2e-4, bf16);
- the baseline: a diffusers ``UNet2DConditionModel`` of similar parameter count (channels 16/32/64,
  cross-attention at 16 and 8 px) trained the standard way: epsilon prediction, ``DDPMScheduler``
  (1000 steps, linear betas), MSE, AdamW 3e-4 with warm-up, EMA 0.999, 10 % caption dropout for
  classifier-free guidance, bf16 autocast, batch 64; sampled with ``DDIMScheduler`` (eta 0).

On a machine shared with other jobs, train the two side by side with one thread each, so that any
other load falls on both alike (then evaluate; finished trainings are reused)::

    python benchmarks/vs_diffusion.py --train gan --threads 1 ... &
    python benchmarks/vs_diffusion.py --train baseline --threads 1 ... &
    wait; python benchmarks/vs_diffusion.py --train none ...

``--clock cpu`` measures each budget in CPU time instead (less reliable when cores are oversubscribed:
threads that spin while waiting for a descheduled peer burn CPU time without progress). Then both are evaluated with ``prodimg eval``'s
code (:func:`prodimg.evaluation.evaluate.evaluate`) on the same captions of ``--splits``: FID, KID,
precision/recall, CLIP score, colour/category/pattern accuracy and sampling images/s, ours at
``--gan_steps`` (1 2 4) and the baseline at ``--ddim_steps`` (10 25 50). One table is printed and
written to ``<output_dir>/vs_diffusion.md`` (+ ``results.json``); each setting's report and grid
are in ``<output_dir>/eval/<setting>/``. Rerunning reuses finished trainings (delete the folder to
retrain).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger("vs_diffusion")

DONE_FILE = "training_summary.json"


# ------------------------------------------------------------------------------------------ the baseline
def baseline_unet(resolution: int, channels: tuple[int, ...], cross_attention_dim: int):
    from diffusers import UNet2DConditionModel

    n = len(channels)
    down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1)
    up = ("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",)
    return UNet2DConditionModel(
        sample_size=resolution, in_channels=3, out_channels=3, block_out_channels=tuple(channels),
        layers_per_block=1, down_block_types=down, up_block_types=up, cross_attention_dim=cross_attention_dim,
        attention_head_dim=8, norm_num_groups=min(8, min(channels)),
    )


def _diffusion_pipeline_class():
    from diffusers import DiffusionPipeline, ImagePipelineOutput
    from diffusers.utils.torch_utils import randn_tensor

    class DiffusionBaselinePipeline(DiffusionPipeline):
        """Text-to-image latent-free diffusion: CLIP text states -> UNet2DConditionModel + DDIM."""

        def __init__(self, unet, scheduler, text_encoder, tokenizer):
            super().__init__()
            self.register_modules(unet=unet, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer)

        def encode(self, prompts: list[str]) -> torch.Tensor:
            # The same tokenisation and encoder call as prodimg's PromptEmbeddingCache (training used it).
            max_len = min(self.tokenizer.model_max_length, self.text_encoder.config.max_position_embeddings)
            tok = self.tokenizer(prompts, padding="max_length", max_length=max_len, truncation=True,
                                 return_tensors="pt")
            device = self._execution_device
            return self.text_encoder(input_ids=tok["input_ids"].to(device),
                                     attention_mask=tok["attention_mask"].to(device)).last_hidden_state

        @torch.no_grad()
        def __call__(self, prompt, generator=None, num_inference_steps: int = 50, guidance_scale: float = 3.0,
                     output_type: str = "np"):
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            if not prompts or not all(isinstance(p, str) for p in prompts):
                raise TypeError("prompt must be a str or a non-empty list of str")
            if output_type != "np":
                raise ValueError("this baseline returns numpy images only (output_type='np')")
            b, device = len(prompts), self._execution_device
            cond = self.encode(prompts)
            cfg = guidance_scale != 1.0
            states = torch.cat([self.encode([""] * b), cond]) if cfg else cond
            size = self.unet.config.sample_size
            x = randn_tensor((b, 3, size, size), generator=generator, device=device, dtype=self.unet.dtype)
            self.scheduler.set_timesteps(num_inference_steps, device=device)
            for t in self.progress_bar(self.scheduler.timesteps):
                inp = torch.cat([x, x]) if cfg else x
                eps = self.unet(inp, t, encoder_hidden_states=states).sample
                if cfg:
                    uncond, text = eps.chunk(2)
                    eps = uncond + guidance_scale * (text - uncond)
                x = self.scheduler.step(eps, t, x).prev_sample
            images = ((x.float() / 2 + 0.5).clamp(0, 1)).permute(0, 2, 3, 1).cpu().numpy()
            return ImagePipelineOutput(images=images)

    return DiffusionBaselinePipeline


def _text_encoder_folder(source: str, out: Path) -> Path:
    """A ``text_encoder/`` + ``tokenizer/`` folder (fp32) from a saved pipeline or text-encoder location."""
    from prodimg.training.gan import load_text_encoder

    folder = out / "text_encoder"
    if (folder / "text_encoder" / "config.json").is_file():
        return folder
    if os.path.isfile(os.path.join(source, "model_index.json")):
        from prodimg import ProductImagePipeline

        pipe = ProductImagePipeline.from_pretrained(source, dtype=torch.float32)
        tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    else:
        tokenizer, text_encoder = load_text_encoder(source)
    from prodimg.utils import atomic_directory

    with atomic_directory(folder, overwrite=True) as tmp:
        text_encoder.to(torch.float32).save_pretrained(Path(tmp) / "text_encoder", safe_serialization=True)
        tokenizer.save_pretrained(Path(tmp) / "tokenizer")
    return folder


def train_gan(args, text_dir: Path, out: Path) -> dict:
    """Our trainer under the time budget; reuses a finished training."""
    from prodimg.training.gan import train_product_gan

    run = out / "gan"
    if (run / DONE_FILE).is_file():
        return json.loads((run / DONE_FILE).read_text())
    started = time.perf_counter()
    summary = train_product_gan(
        pretrained_model_name_or_path=str(text_dir), dataset_name=args.dataset, resolution=args.resolution,
        generator_config=args.gan_generator_config, discriminator_config=args.gan_discriminator_config,
        train_batch_size=args.gan_batch_size, learning_rate=2e-4, mixed_precision=args.mixed_precision,
        max_train_steps=10**9, max_train_seconds=args.budget_minutes * 60, train_time_clock=args.clock,
        checkpointing_steps=10**9, validation_steps=10**9, validation_fid_num_images=0, report_to="none",
        embedding_cache_dir=str(out / "embedding-cache"), output_dir=str(run), seed=args.seed,
        max_train_samples=args.max_train_samples,
    )
    result = {"steps": summary["global_step"], "images_seen": summary["images_seen"],
              "seconds_wall": time.perf_counter() - started, "stop_reason": summary["stop_reason"],
              "threads": torch.get_num_threads()}
    (run / DONE_FILE).write_text(json.dumps(result, indent=1))
    return result


def train_baseline(args, text_dir: Path, out: Path) -> dict:
    """Standard epsilon-prediction DDPM training of the UNet for the time budget; saves the EMA UNet."""
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from torch.utils.data import DataLoader

    from prodimg.data.embedding_cache import PromptEmbeddingCache
    from prodimg.data.loading import ProductImageDataset, load_image_text_dataset
    from prodimg.training.gan import _collate, _distinct_captions, load_text_encoder
    from prodimg.training.precision import MixedPrecision
    from prodimg.training.sampler import ResumableBatchSampler, endless_batches
    from prodimg.training.state import Deadline, TrainerState

    run = out / "baseline"
    if (run / DONE_FILE).is_file():
        return json.loads((run / DONE_FILE).read_text())
    torch.manual_seed(args.seed)
    tokenizer, text_encoder = load_text_encoder(str(text_dir))
    text_encoder.requires_grad_(False).eval()
    max_len = min(tokenizer.model_max_length, text_encoder.config.max_position_embeddings)
    data = load_image_text_dataset(args.dataset, split="train", max_samples=args.max_train_samples)
    cache = PromptEmbeddingCache(text_encoder, tokenizer, cache_dir=out / "embedding-cache", max_length=max_len)
    if cache.precompute(_distinct_captions(data["text"]) + [""]):
        cache.save()
    dataset = ProductImageDataset(data, args.resolution)
    sampler = ResumableBatchSampler(len(dataset), args.baseline_batch_size, 1, 0, seed=args.seed)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=_collate, num_workers=0)
    unet = baseline_unet(args.resolution, args.unet_channels, int(text_encoder.config.hidden_size)).train()
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")
    opt = torch.optim.AdamW(unet.parameters(), lr=3e-4, weight_decay=1e-2)
    lr = get_scheduler("constant_with_warmup", opt, num_warmup_steps=200)
    ema = EMAModel(unet.parameters(), decay=0.999)
    prec = MixedPrecision(args.mixed_precision, torch.device("cpu"))
    state = TrainerState(global_batch_size=args.baseline_batch_size, dataset_size=len(dataset))
    empty = cache.encode([""]).prompt_embeds
    gen = torch.Generator().manual_seed(args.seed)
    batches = endless_batches(loader, sampler, state)
    deadline = Deadline(args.budget_minutes * 60, args.clock)
    started, losses = time.perf_counter(), []
    while not deadline.expired():
        batch = next(batches)
        x0 = batch["pixel_values"]
        b = len(x0)
        states = cache.encode(batch["text"]).prompt_embeds
        drop = (torch.rand(b, generator=gen) < 0.1).view(b, 1, 1)
        states = torch.where(drop, empty.expand_as(states), states)
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (b,), generator=gen)
        noisy = noise_scheduler.add_noise(x0, noise, t)
        with prec.autocast():
            pred = unet(noisy, t, encoder_hidden_states=states).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        lr.step()
        ema.step(unet.parameters())
        state.step += 1
        state.images_seen += b
        losses.append(float(loss.detach()))
        if state.step % 100 == 0:
            print(f"  baseline step {state.step}: loss {np.mean(losses[-100:]):.4f}, "
                  f"{state.images_seen / (time.perf_counter() - started):.1f} images/s", flush=True)
    ema.copy_to(unet.parameters())
    unet.save_pretrained(run / "unet", safe_serialization=True)
    result = {"steps": state.step, "images_seen": state.images_seen, "seconds_wall": time.perf_counter() - started,
              "threads": torch.get_num_threads(),
              "final_loss_mean_last_100": float(np.mean(losses[-100:])) if losses else None}
    (run / DONE_FILE).write_text(json.dumps(result, indent=1))
    return result


def load_baseline(text_dir: Path, out: Path):
    from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel

    from prodimg.training.gan import load_text_encoder

    tokenizer, text_encoder = load_text_encoder(str(text_dir))
    unet = UNet2DConditionModel.from_pretrained(out / "baseline" / "unet", use_safetensors=True).eval()
    train_sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")
    scheduler = DDIMScheduler.from_config(train_sched.config)
    pipe = _diffusion_pipeline_class()(unet=unet, scheduler=scheduler, text_encoder=text_encoder.eval(),
                                       tokenizer=tokenizer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ------------------------------------------------------------------------------------------ report
COLUMNS = [
    ("FID", "fid/{first}", "{:.1f}"), ("KID", "kid/{first}", "{:.3f}"), ("precision", "precision/{first}", "{:.3f}"),
    ("recall", "recall/{first}", "{:.3f}"), ("CLIP score", "clip_score", "{:.1f}"),
    ("colour", "color_accuracy", "{:.1%}"), ("category", "category_accuracy", "{:.1%}"),
    ("pattern", "pattern_accuracy", "{:.1%}"), ("colour unseen", "color_accuracy/test_unseen_pairs", "{:.1%}"),
    ("category unseen", "category_accuracy/test_unseen_pairs", "{:.1%}"),
]


def markdown_table(rows: list[dict], first_split: str) -> str:
    head = ["system", "steps", *[c[0] for c in COLUMNS], "images/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["system"], str(r["steps"])]
        for _, key, fmt in COLUMNS:
            v = r["metrics"].get(key.format(first=first_split))
            cells.append("n/a" if v is None else fmt.format(v))
        cells.append(f"{r['images_per_second']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(rows: list[dict], first_split: str) -> list[str]:
    ours = [r for r in rows if r["system"] == "ours"]
    base = [r for r in rows if r["system"] != "ours"]
    fid = f"fid/{first_split}"
    if not ours or not base or any(fid not in r["metrics"] for r in rows):
        return ["(no FID: verdict skipped)"]
    best_ours = min(ours, key=lambda r: r["metrics"][fid])
    best_base = min(base, key=lambda r: r["metrics"][fid])
    default_ours = max(ours, key=lambda r: r["steps"])
    lines = [
        f"best FID: ours {best_ours['metrics'][fid]:.1f} ({best_ours['steps']} steps) vs baseline "
        f"{best_base['metrics'][fid]:.1f} (DDIM {best_base['steps']}): "
        + ("ours better" if best_ours["metrics"][fid] < best_base["metrics"][fid] else "baseline better"),
    ]
    for key, name in (("color_accuracy", "colour"), ("category_accuracy", "category")):
        if key in best_ours["metrics"] and key in best_base["metrics"]:
            a, b = best_ours["metrics"][key], best_base["metrics"][key]
            lines.append(f"{name} accuracy at those settings: ours {a:.1%} vs baseline {b:.1%}: "
                         + ("ours better" if a > b else "baseline better or equal"))
    ratio = default_ours["images_per_second"] / max(best_base["images_per_second"], 1e-9)
    lines.append(f"sampling speed: ours at {default_ours['steps']} steps {default_ours['images_per_second']:.1f} "
                 f"images/s vs baseline at its best-FID setting (DDIM {best_base['steps']}) "
                 f"{best_base['images_per_second']:.1f} images/s: {ratio:.1f}x (goal >= 10x)")
    return lines


def measure_speeds(settings, prompts: list[str], batch_size: int, rounds: int) -> list[dict]:
    """images/s of each ``(system, pipe, steps, guidance)`` setting, the settings interleaved round by round
    (so that other load on the machine falls on all alike); the median over rounds is reported."""
    times: dict[int, list[float]] = {i: [] for i in range(len(settings))}
    prompts = (prompts * batch_size)[:batch_size]
    for r in range(rounds + 1):  # round 0 warms up
        for i, (_, pipe, steps, guidance) in enumerate(settings):
            gens = [torch.Generator().manual_seed(k) for k in range(batch_size)]
            t0 = time.perf_counter()
            pipe(prompts, generator=gens, num_inference_steps=steps, guidance_scale=guidance, output_type="np")
            if r:
                times[i].append(time.perf_counter() - t0)
    return [{"system": system, "steps": steps, "guidance_scale": guidance,
             "images_per_second": batch_size / float(np.median(times[i])), "rounds": rounds}
            for i, (system, _, steps, guidance) in enumerate(settings)]


# ------------------------------------------------------------------------------------------ main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default="data/fashion-catalog-32")
    p.add_argument("--text_encoder", default="pipelines/prodimg-fashion-32",
                   help="the frozen text encoder both models use: a saved pipeline or a text-encoder folder")
    p.add_argument("--clip_model", default=None, help="CLIP judge for CLIP score (see prodimg eval); default none")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--budget_minutes", type=float, default=30.0, help="training budget of each model (default 30)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall time, or this process's CPU time (fair on a machine shared with other jobs)")
    p.add_argument("--mixed_precision", default="bf16", choices=("no", "bf16", "fp16"))
    p.add_argument("--gan_generator_config", default=str(REPO / "configs/default-32-generator.json"))
    p.add_argument("--gan_discriminator_config", default=str(REPO / "configs/default-32-discriminator.json"))
    p.add_argument("--gan_batch_size", type=int, default=32)
    p.add_argument("--baseline_batch_size", type=int, default=64)
    p.add_argument("--unet_channels", type=lambda s: tuple(int(c) for c in s.split(",")), default=(16, 32, 64))
    p.add_argument("--max_train_samples", type=int, default=None)
    p.add_argument("--splits", default="test,test_unseen_pairs")
    p.add_argument("--num_images", type=int, default=500, help="captions evaluated per split (default 500)")
    p.add_argument("--gan_steps", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--ddim_steps", type=int, nargs="+", default=[10, 25, 50])
    p.add_argument("--baseline_guidance_scale", type=float, default=3.0,
                   help="classifier-free guidance of the baseline (trained with 10%% caption dropout; default 3)")
    p.add_argument("--metrics", default=None, help="comma list of prodimg eval metrics (default: all)")
    p.add_argument("--batch_size", type=int, default=64, help="sampling batch size of the evaluation (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", choices=("all", "gan", "baseline", "none"), default="all",
                   help="train both then evaluate (all), train one and stop, or only evaluate finished trainings")
    p.add_argument("--threads", type=int, default=None, help="torch threads of this process (default: torch's)")
    p.add_argument("--speed_only", action="store_true",
                   help="only measure sampling speed of every setting (interleaved rounds; run on an idle machine)")
    p.add_argument("--speed_rounds", type=int, default=3)
    p.add_argument("--output_dir", default="runs/vs-diffusion")
    args = p.parse_args(argv)
    if args.budget_minutes <= 0:
        p.error("--budget_minutes must be > 0")
    if args.num_images < 2:
        p.error("--num_images must be >= 2")
    return args


def main(argv=None, feature_extractor=None) -> dict:
    from prodimg import ProductImagePipeline
    from prodimg.evaluation.data import load_labeled_split
    from prodimg.evaluation.evaluate import ALL_METRICS, dataset_identity, evaluate, load_judges
    from prodimg.utils import atomic_write_text

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    text_dir = _text_encoder_folder(args.text_encoder, out)

    done = {"gan": (out / "gan" / DONE_FILE).is_file(), "baseline": (out / "baseline" / DONE_FILE).is_file()}
    if args.train == "none" and not all(done.values()):
        raise SystemExit(f"--train none needs finished trainings in {out}; missing: "
                         f"{[k for k, v in done.items() if not v]}")
    if args.train in ("all", "gan"):
        print(f"== training ours (budget {args.budget_minutes:g} min, {args.clock} clock, "
              f"{torch.get_num_threads()} threads)", flush=True)
    gan = train_gan(args, text_dir, out) if args.train in ("all", "gan") or done["gan"] else None
    print(f"   ours: {gan}", flush=True)
    if args.train in ("all", "baseline"):
        print(f"== training the diffusion baseline (budget {args.budget_minutes:g} min, {args.clock} clock, "
              f"{torch.get_num_threads()} threads)", flush=True)
    base = train_baseline(args, text_dir, out) if args.train in ("all", "baseline") or done["baseline"] else None
    print(f"   baseline: {base}", flush=True)
    if args.train in ("gan", "baseline"):
        return {"gan_training": gan, "baseline_training": base}

    metrics = [m.strip() for m in args.metrics.split(",")] if args.metrics else list(ALL_METRICS)
    judges = load_judges(metrics, clip_model=args.clip_model or "none")
    names = [s.strip() for s in args.splits.split(",") if s.strip()]
    splits = {n: load_labeled_split(args.dataset, n, args.resolution, max_samples=args.num_images) for n in names}
    ours = ProductImagePipeline.from_pretrained(out / "gan", dtype=torch.float32)
    ours.set_progress_bar_config(disable=True)
    baseline = load_baseline(text_dir, out)
    params = {"ours (generator)": sum(p.numel() for p in ours.generator.parameters()),
              "baseline (UNet)": sum(p.numel() for p in baseline.unet.parameters())}

    rows = []
    settings = [("ours", ours, s, 1.0) for s in args.gan_steps]
    settings += [("diffusers DDIM", baseline, s, args.baseline_guidance_scale) for s in args.ddim_steps]
    if args.speed_only:
        speeds = measure_speeds(settings, splits[names[0]].captions[: args.batch_size], args.batch_size,
                                args.speed_rounds)
        lines = [(f"Sampling speed, batch {args.batch_size}, {torch.get_num_threads()} threads, median of "
                  f"{args.speed_rounds} interleaved rounds:"), "", "| system | steps | guidance | images/s |",
                 "|---|---|---|---|"]
        lines += [f"| {r['system']} | {r['steps']} | {r['guidance_scale']:g} | {r['images_per_second']:.1f} |"
                  for r in speeds]
        text = "\n".join(lines) + "\n"
        print(text, flush=True)
        atomic_write_text(out / "speed.md", text)
        atomic_write_text(out / "speed.json", json.dumps(speeds, indent=1))
        return {"speeds": speeds}
    for system, pipe, steps, guidance in settings:
        name = f"{'ours' if system == 'ours' else 'ddim'}-{steps}"
        print(f"== evaluating {name}", flush=True)
        report = evaluate(pipe, splits, dataset_id=dataset_identity(args.dataset), batch_size=args.batch_size,
                          seed=args.seed, num_inference_steps=steps, guidance_scale=guidance, metrics=metrics,
                          feature_extractor=feature_extractor, output_dir=out / "eval" / name, **judges)
        rows.append({"system": system, "steps": steps, "guidance_scale": guidance, "metrics": report["metrics"],
                     "images_per_second": report["sampling"]["images_per_second"]})

    lines = [
        (f"# Denoising GAN vs diffusers DDPM/DDIM at equal training budget ({args.budget_minutes:g} min each, "
         f"{args.clock} clock)"),
        "",
        (f"Dataset `{args.dataset}` at {args.resolution} px; frozen text encoder from `{args.text_encoder}`; "
         f"{args.num_images} captions per split ({', '.join(names)}); FID/KID/precision/recall on `{names[0]}`; "
         f"attribute accuracies over all evaluated splits, 'unseen' on `test_unseen_pairs`. Ours at guidance 1.0, "
         f"the baseline at guidance {args.baseline_guidance_scale:g}. Sampling batch {args.batch_size}, "
         f"{torch.get_num_threads()} threads."),
        "",
        (f"- ours: {params['ours (generator)'] / 1e6:.2f} M generator parameters, {gan['steps']} steps "
         f"({gan['images_seen']} images, {gan['seconds_wall'] / 60:.1f} min wall)"),
        (f"- baseline: {params['baseline (UNet)'] / 1e6:.2f} M UNet parameters, {base['steps']} steps "
         f"({base['images_seen']} images, {base['seconds_wall'] / 60:.1f} min wall)"),
        "",
        markdown_table(rows, names[0]),
        "",
        *[f"- {v}" for v in verdict(rows, names[0])],
        "",
        f"Command: `python benchmarks/vs_diffusion.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
    ]
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    atomic_write_text(out / "vs_diffusion.md", text)
    result = {"args": vars(args), "gan_training": gan, "baseline_training": base, "parameters": params, "rows": rows}
    atomic_write_text(out / "results.json", json.dumps(result, indent=1, default=float))
    return result


if __name__ == "__main__":
    main()
