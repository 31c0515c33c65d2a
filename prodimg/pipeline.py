"""ProductImagePipeline: text -> product image with a few-step denoising GAN."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput, logging
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from .models import ProductGenerator
from .safety import check_finite_parameters, check_pipeline_folder
from .schedulers import DDGANScheduler

logger = logging.get_logger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


@dataclass
class ProductImagePipelineOutput(BaseOutput):
    """
    Args:
        images (`list[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`): the generated images; a list
            of PIL images, a (B, H, W, C) float array in [0, 1], or a (B, C, H, W) tensor in [0, 1].
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor


@dataclass
class PromptEmbeds:
    """Everything the generator needs from the text encoder for a batch of prompts."""

    hidden_states: torch.Tensor  # (B, L, D)
    pooled: torch.Tensor  # (B, P)
    attention_mask: torch.Tensor  # (B, L)

    def repeat(self, n: int) -> "PromptEmbeds":
        return PromptEmbeds(*(t.repeat_interleave(n, dim=0) for t in (self.hidden_states, self.pooled, self.attention_mask)))

    def padded_to(self, length: int) -> "PromptEmbeds":
        """The same prompts with masked (zero) token states appended up to ``length`` tokens."""
        extra = length - self.hidden_states.shape[1]
        if extra <= 0:
            return self
        h = torch.nn.functional.pad(self.hidden_states, (0, 0, 0, extra))
        return PromptEmbeds(h, self.pooled, torch.nn.functional.pad(self.attention_mask, (0, extra)))

    @staticmethod
    def cat(parts: list["PromptEmbeds"]) -> "PromptEmbeds":
        """Concatenate along the batch, padding token states to the longest part."""
        length = max(p.hidden_states.shape[1] for p in parts)
        parts = [p.padded_to(length) for p in parts]
        return PromptEmbeds(*(torch.cat(ts) for ts in zip(*((p.hidden_states, p.pooled, p.attention_mask)
                                                              for p in parts))))


def _check_unicode(name: str, value) -> None:
    """Refuse strings that are not valid Unicode text (lone surrogates, e.g. from undecodable bytes)."""
    texts = [value] if isinstance(value, str) else value if isinstance(value, (list, tuple)) else []
    for i, text in enumerate(texts):
        if isinstance(text, str):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as err:
                raise ValueError(
                    f"`{name}` item {i} is not valid Unicode text (a lone surrogate at position {err.start})"
                ) from None


class ProductImagePipeline(DiffusionPipeline):
    r"""Generate product photos from text with a CLIP text encoder and a denoising-GAN generator.

    Components:
        tokenizer ([`~transformers.CLIPTokenizer`]): CLIP BPE tokenizer.
        text_encoder ([`~transformers.CLIPTextModel`] or [`~transformers.CLIPTextModelWithProjection`]):
            frozen text encoder; its token states feed cross-attention and its pooled (projected)
            embedding feeds the style mapping.
        generator ([`ProductGenerator`]): predicts ``x_0`` from ``x_t``.
        scheduler ([`DDGANScheduler`]): the few-step posterior sampler.
    """

    model_cpu_offload_seq = "text_encoder->generator"
    _optional_components: list[str] = []
    # Prompts are padded to the longest one in the batch: the text encoder is causal and the generator's
    # cross-attention is masked, so the result equals max-length padding at a fraction of the cost. A text
    # encoder with a fixed input length (an ONNX export) sets this to True.
    pad_prompts_to_max_length = False

    def __init__(
        self,
        tokenizer: CLIPTokenizer,
        text_encoder: CLIPTextModel | CLIPTextModelWithProjection,
        generator: ProductGenerator,
        scheduler: DDGANScheduler,
    ):
        super().__init__()
        self.register_modules(tokenizer=tokenizer, text_encoder=text_encoder, generator=generator, scheduler=scheduler)
        self.image_processor = VaeImageProcessor(do_resize=False, vae_scale_factor=1, do_normalize=True)

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> "ProductImagePipeline":
        """Load a saved pipeline (local folder or Hub id) from safetensors only.

        A local folder is checked first (``prodimg.safety.check_pipeline_folder``): pickle weights,
        foreign classes, remote-code markers and escaping symlinks are refused before anything is read.
        """
        if kwargs.get("use_safetensors") is False:
            raise ValueError("use_safetensors=False is not supported: prodimg loads safetensors weights only")
        for key in ("custom_pipeline", "trust_remote_code"):
            if kwargs.get(key):
                raise ValueError(f"{key} is not supported: prodimg never runs code from a model repository")
        kwargs["use_safetensors"] = True
        if kwargs.get("dtype") is None and kwargs.get("torch_dtype") is None:
            # One compute dtype for every component: weights stored in fp16 (the shipped default) are
            # upcast, not run in fp16 (transformers would keep the text encoder in its stored dtype, which
            # is slow and inexact on a CPU). Pass dtype=torch.float16 / torch.bfloat16 to keep half precision.
            kwargs.pop("torch_dtype", None)
            kwargs["dtype"] = torch.float32
        path = str(pretrained_model_name_or_path)
        if os.path.isdir(path):
            check_pipeline_folder(path, cls.__name__)
        elif not HUB_ID.fullmatch(path):
            raise FileNotFoundError(f"pipeline folder {path!r} does not exist (and it is not a Hub repository id)")
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        for name in ("text_encoder", "generator"):
            check_finite_parameters(getattr(pipe, name), name)
        return pipe

    def save_pretrained(self, save_directory: str | os.PathLike, safe_serialization: bool = True, **kwargs: Any):
        """Save as safetensors (refusing non-finite weights)."""
        if not safe_serialization:
            raise ValueError("safe_serialization=False is not supported: prodimg saves safetensors only")
        for name in ("text_encoder", "generator"):
            check_finite_parameters(getattr(self, name), name)
        return super().save_pretrained(save_directory, safe_serialization=True, **kwargs)

    # ------------------------------------------------------------------ prompt encoding
    @property
    def max_text_length(self) -> int:
        return min(self.tokenizer.model_max_length, self.text_encoder.config.max_position_embeddings)

    def _tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        max_len = self.max_text_length
        padding = "max_length" if self.pad_prompts_to_max_length else "longest"
        inputs = self.tokenizer(prompts, padding=padding, max_length=max_len, truncation=True, return_tensors="pt")
        untruncated = self.tokenizer(prompts, padding="longest", return_tensors="pt").input_ids
        if untruncated.shape[-1] > max_len:
            for i, ids in enumerate(untruncated):
                n = int((ids != self.tokenizer.pad_token_id).sum()) if self.tokenizer.pad_token_id is not None else len(ids)
                if n > max_len or ids[max_len - 1] not in (self.tokenizer.eos_token_id, self.tokenizer.pad_token_id):
                    removed = self.tokenizer.batch_decode(ids[max_len - 1 : -1][None], skip_special_tokens=True)[0]
                    if removed.strip():
                        logger.warning(
                            f"Prompt {i} is longer than the text encoder's {max_len} tokens; this part was cut: "
                            f"{removed.strip()!r}"
                        )
        return inputs.input_ids, inputs.attention_mask

    @torch.no_grad()
    def encode_text(self, prompts: list[str], device: torch.device | None = None) -> PromptEmbeds:
        """Run the text encoder on ``prompts`` (no classifier-free guidance, no repetition)."""
        device = device or self._execution_device
        input_ids, attention_mask = self._tokenize(prompts)
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        out = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask)
        pooled = out.text_embeds if getattr(out, "text_embeds", None) is not None else out.pooler_output
        return PromptEmbeds(out.last_hidden_state, pooled, attention_mask)

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        device: torch.device,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = False,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: PromptEmbeds | None = None,
        negative_prompt_embeds: PromptEmbeds | None = None,
    ) -> tuple[PromptEmbeds, PromptEmbeds | None]:
        """Encode prompts (or take precomputed ``PromptEmbeds``), repeated per image; returns
        ``(cond, uncond)`` where ``uncond`` is ``None`` without guidance."""
        if prompt_embeds is None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            prompt_embeds = self.encode_text(prompts, device)
        batch = prompt_embeds.pooled.shape[0]
        uncond = None
        if do_classifier_free_guidance:
            if negative_prompt_embeds is None:
                negatives = [""] * batch if negative_prompt is None else negative_prompt
                negatives = [negatives] * batch if isinstance(negatives, str) else list(negatives)
                negative_prompt_embeds = self.encode_text(negatives, device)
            uncond = negative_prompt_embeds.repeat(num_images_per_prompt)
        return prompt_embeds.repeat(num_images_per_prompt), uncond

    # ------------------------------------------------------------------ checks
    def check_inputs(
        self,
        prompt,
        negative_prompt,
        prompt_embeds,
        negative_prompt_embeds,
        num_images_per_prompt,
        num_inference_steps,
        guidance_scale,
        output_type,
        latents,
        generator,
    ) -> int:
        """Validate the call's arguments; return the number of prompts."""
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("Pass either `prompt` or `prompt_embeds`, not both.")
        if prompt is None and prompt_embeds is None:
            raise ValueError("Provide `prompt` (a string or a list of strings) or `prompt_embeds`.")
        if prompt is not None:
            if isinstance(prompt, str):
                batch = 1
            elif isinstance(prompt, (list, tuple)):
                if len(prompt) == 0:
                    raise ValueError("`prompt` is an empty list; pass at least one prompt.")
                bad = [i for i, p in enumerate(prompt) if not isinstance(p, str)]
                if bad:
                    raise TypeError(
                        f"`prompt` must be a string or a list of strings; item {bad[0]} is {type(prompt[bad[0]]).__name__}"
                    )
                batch = len(prompt)
            else:
                raise TypeError(f"`prompt` must be a string or a list of strings, got {type(prompt).__name__}")
        else:
            batch = self._check_embeds("prompt_embeds", prompt_embeds)
        for name, value in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            _check_unicode(name, value)
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("Pass either `negative_prompt` or `negative_prompt_embeds`, not both.")
        if negative_prompt is not None:
            if isinstance(negative_prompt, (list, tuple)):
                if any(not isinstance(p, str) for p in negative_prompt):
                    raise TypeError("`negative_prompt` must be a string or a list of strings")
                if len(negative_prompt) != batch:
                    raise ValueError(
                        f"`negative_prompt` has {len(negative_prompt)} entries but there are {batch} prompts; "
                        "pass one negative prompt per prompt or a single string"
                    )
            elif not isinstance(negative_prompt, str):
                raise TypeError(f"`negative_prompt` must be a string or a list of strings, got {type(negative_prompt).__name__}")
        if (
            negative_prompt_embeds is not None
            and self._check_embeds("negative_prompt_embeds", negative_prompt_embeds) != batch
        ):
            raise ValueError(
                f"`negative_prompt_embeds` has batch {negative_prompt_embeds.pooled.shape[0]}, prompts have {batch}"
            )
        if isinstance(num_images_per_prompt, bool) or not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"`num_images_per_prompt` must be an int >= 1, got {num_images_per_prompt!r}")
        T = self.scheduler.config.num_train_timesteps
        if num_inference_steps is not None and (
            isinstance(num_inference_steps, bool)
            or not isinstance(num_inference_steps, int)
            or not 1 <= num_inference_steps <= T
        ):
            raise ValueError(
                f"`num_inference_steps` must be an int in 1..{T} (the range this generator was trained for), "
                f"got {num_inference_steps!r}"
            )
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or not np.isfinite(guidance_scale):
            raise TypeError(f"`guidance_scale` must be a finite number, got {guidance_scale!r}")
        if guidance_scale < 0:
            raise ValueError(f"`guidance_scale` must be >= 0, got {guidance_scale}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}")
        total = batch * num_images_per_prompt
        if latents is not None:
            expected = self._latent_shape(total)
            if not torch.is_tensor(latents) or tuple(latents.shape) != expected:
                got = tuple(latents.shape) if torch.is_tensor(latents) else type(latents).__name__
                raise ValueError(f"`latents` must be a tensor of shape {expected}, got {got}")
            if not torch.isfinite(latents).all():
                raise ValueError("`latents` holds NaN or Inf values; pass finite starting noise")
        gens = generator if isinstance(generator, list) else [generator]
        if generator is not None and not all(isinstance(g, torch.Generator) for g in gens):
            raise TypeError(f"`generator` must be a torch.Generator or a list of them, got {generator!r:.80}")
        if isinstance(generator, list) and len(generator) != total:
            raise ValueError(
                f"`generator` is a list of {len(generator)} generators but {total} images are requested "
                f"({batch} prompts x {num_images_per_prompt}); pass one per image or a single generator"
            )
        return batch

    def _check_embeds(self, name: str, embeds) -> int:
        """Check precomputed ``PromptEmbeds`` against the generator's text widths; return their batch size."""
        if not isinstance(embeds, PromptEmbeds):
            raise TypeError(f"`{name}` must be a PromptEmbeds, got {type(embeds).__name__}")
        h, p, m = embeds.hidden_states, embeds.pooled, embeds.attention_mask
        if not all(torch.is_tensor(t) for t in (h, p, m)):
            raise TypeError(f"`{name}` must hold tensors (hidden_states, pooled, attention_mask)")
        cfg = self.generator.config
        if (
            (h.ndim, p.ndim, m.ndim) != (3, 2, 2)
            or not 1 <= h.shape[0] == p.shape[0] == m.shape[0]
            or not 1 <= h.shape[1] == m.shape[1]
            or (h.shape[2], p.shape[1]) != (cfg.text_embed_dim, cfg.pooled_text_dim)
        ):
            shapes = ", ".join(str(tuple(t.shape)) for t in (h, p, m))
            raise ValueError(
                f"`{name}` must hold hidden_states (B, L, {cfg.text_embed_dim}), pooled "
                f"(B, {cfg.pooled_text_dim}) and attention_mask (B, L) with B, L >= 1; got {shapes}"
            )
        if not all(t.is_floating_point() and t.isfinite().all() for t in (h, p)):
            raise ValueError(f"`{name}` must hold finite floating-point embeddings (not NaN/Inf or integers)")
        return int(p.shape[0])

    def _latent_shape(self, n: int) -> tuple[int, int, int, int]:
        cfg = self.generator.config
        return (n, cfg.in_channels, cfg.sample_size, cfg.sample_size)

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        num_inference_steps: int | None = None,
        guidance_scale: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: PromptEmbeds | None = None,
        negative_prompt_embeds: PromptEmbeds | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ProductImagePipelineOutput | tuple:
        r"""Generate product images.

        Args:
            prompt: a description or a list of descriptions (one batch).
            negative_prompt: the unconditional side of classifier-free guidance (default: empty prompt).
            num_images_per_prompt: images per prompt.
            num_inference_steps: denoising steps, 1..T (default: T, the trained number of steps).
            guidance_scale: classifier-free guidance weight; guidance is used when > 1.
            generator: a `torch.Generator`, or a list with one per image for per-image reproducibility.
            latents: the starting noise ``x_T``, shape (B * num_images_per_prompt, C, H, W).
            prompt_embeds / negative_prompt_embeds: precomputed [`PromptEmbeds`] instead of text.
            output_type: "pil", "np" or "pt".
            return_dict: return a [`ProductImagePipelineOutput`] (else a tuple).
        """
        # 1. Check inputs
        batch = self.check_inputs(
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, num_images_per_prompt,
            num_inference_steps, guidance_scale, output_type, latents, generator,
        )
        device = self._execution_device
        do_cfg = guidance_scale > 1.0
        total = batch * num_images_per_prompt

        # 2. Encode the prompt
        cond, uncond = self.encode_prompt(
            prompt, device, num_images_per_prompt, do_cfg, negative_prompt, prompt_embeds, negative_prompt_embeds
        )
        text = PromptEmbeds.cat([uncond, cond]) if do_cfg else cond

        # 3. Prepare timesteps, the starting noise x_T and the latent code z
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        # The chain x_T -> x_0 stays in (at least) float32 whatever the generator's dtype: the generator casts
        # its inputs, and the scheduler's float32 posterior would otherwise turn half-precision latents into
        # float32 after the first step (two dtypes, two graphs under torch.compile).
        dtype = torch.promote_types(self.generator.dtype, torch.float32)
        if latents is None:
            latents = randn_tensor(self._latent_shape(total), generator=generator, device=device, dtype=dtype)
        else:
            latents = latents.to(device=device, dtype=dtype)
        z = randn_tensor((total, self.generator.config.z_dim), generator=generator, device=device, dtype=dtype)
        if do_cfg:
            z = torch.cat([z, z])

        # 4. Denoising loop
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = torch.cat([latents, latents]) if do_cfg else latents
            x0 = self.generator(
                model_input, t, z, text.hidden_states, text.pooled, text.attention_mask
            ).sample
            if do_cfg:
                x0_uncond, x0_cond = x0.chunk(2)
                x0 = (x0_uncond + guidance_scale * (x0_cond - x0_uncond)).clamp(-1, 1)
            latents = self.scheduler.step(x0, t, latents, generator=generator).prev_sample

        # 5. Postprocess
        image = latents.float().clamp(-1, 1)
        image = self.image_processor.postprocess(image, output_type=output_type)
        self.maybe_free_model_hooks()

        # 6. Return
        if not return_dict:
            return (image,)
        return ProductImagePipelineOutput(images=image)
