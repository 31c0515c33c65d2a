"""Settings of the HTTP service (limits, batching, logging). Every field has a CLI flag in ``prodimg serve``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServiceConfig:
    # request limits
    max_body_bytes: int = 64 * 1024
    max_prompt_chars: int = 2000  # checked before tokenizing; the token limit (77) is the real one
    max_prompts: int = 16
    max_n: int = 8
    max_images_per_request: int = 16
    max_guidance_scale: float = 20.0
    # per-key rate limit (token bucket): requests per second and burst; rate_limit <= 0 disables it
    rate_limit: float = 5.0
    rate_burst: int = 20
    # micro-batching: images per pipeline call and how long the oldest request may wait for company
    max_batch_images: int = 32
    max_wait_ms: float = 2.0
    queue_size: int = 64  # requests waiting for the worker; one more is refused with 503
    warmup: bool = True  # generate one image at startup so the first request does not pay for kernel setup
    timeout_s: float = 30.0  # deadline from arrival to response; past it the caller gets 504
    # logging
    audit_log: str | None = None  # path, "-" for stderr, None for no audit log
    redact_prompts: bool = False

    def __post_init__(self) -> None:
        for name in (
            "max_body_bytes",
            "max_prompt_chars",
            "max_prompts",
            "max_n",
            "max_images_per_request",
            "max_batch_images",
            "queue_size",
            "rate_burst",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"ServiceConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0 or self.timeout_s <= 0:
            raise ValueError(
                f"max_wait_ms must be >= 0 and timeout_s > 0, got {self.max_wait_ms}, {self.timeout_s}"
            )
