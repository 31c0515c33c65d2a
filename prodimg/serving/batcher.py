"""Dynamic micro-batching: concurrent generation requests share one pipeline call.

Requests wait in a bounded queue (full -> ``QueueFullError``, answered 503 at once). One asyncio
task forms batches and hands each to a single worker thread, which runs the (blocking) pipeline:

- the oldest waiting request always goes into the next batch (no starvation); other requests with
  the same ``(steps, guidance_scale)`` join it while the batch has room (``max_batch_images``);
- when the worker is idle, the oldest request waits at most ``max_wait_ms`` for company; under load
  requests queue while the worker is busy, so batches fill without any wait;
- every image gets its own ``torch.Generator`` seeded ``seed + k`` (``k`` = its index in its
  request), so a request's images do not depend on which other requests shared its batch (up to
  float rounding of batch-size-dependent CPU kernels: the pipeline guarantees ``atol=1e-5`` on
  ``[0, 1]`` floats, so a PNG pixel may differ by one level);
- if a batched call raises, each request of that batch is retried alone, so a failing request
  only fails itself; requests past their deadline are dropped before they reach the pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from .metrics import ServiceMetrics

logger = logging.getLogger(__name__)


class QueueFullError(Exception):
    """The queue holds ``queue_size`` requests already."""


class DeadlineExceededError(Exception):
    """The request's deadline passed before its images were ready."""


class ServiceStoppedError(Exception):
    """The service is shutting down."""


@dataclass
class GenerationJob:
    prompts: list[str]
    n: int
    seed: int
    steps: int | None
    guidance_scale: float
    negative_prompt: str | None = None
    deadline: float = float("inf")  # time.monotonic() value
    enqueued: float = field(default_factory=time.monotonic)
    future: asyncio.Future | None = None
    abandoned: bool = False  # the caller gave up (deadline or disconnect): skip it

    @property
    def num_images(self) -> int:
        return len(self.prompts) * self.n

    @property
    def batch_key(self) -> tuple:
        # guidance <= 1 means no classifier-free guidance: all such requests compute the same way
        guidance = float(self.guidance_scale) if self.guidance_scale > 1.0 else 1.0
        return (self.steps, guidance)

    def image_prompts(self) -> list[str]:
        """Prompt of every image, in the order of ``ProductImagePipeline(prompts, num_images_per_prompt=n)``."""
        return [p for p in self.prompts for _ in range(self.n)]

    def image_seeds(self) -> list[int]:
        return [self.seed + k for k in range(self.num_images)]


def encode_png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class MicroBatcher:
    def __init__(
        self,
        pipeline,
        max_batch_images: int = 32,
        max_wait_ms: float = 2.0,
        queue_size: int = 64,
        metrics: ServiceMetrics | None = None,
    ):
        self.pipeline = pipeline
        self.max_batch_images = max_batch_images
        self.max_wait_s = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self.metrics = metrics
        self._pending: deque[GenerationJob] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._stopping = False
        self.busy = False

    # ------------------------------------------------------------------ lifecycle
    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done() and not self._stopping

    async def start(self, warmup: bool = False) -> None:
        self._wake = asyncio.Event()
        self._stopping = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prodimg-generate")
        if warmup:
            job = GenerationJob(prompts=["warm-up"], n=1, seed=0, steps=None, guidance_scale=1.0)
            await asyncio.get_running_loop().run_in_executor(
                self._executor, self._pipeline_call, [job], False
            )
        self._task = asyncio.create_task(self._run(), name="prodimg-batcher")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._pending:
            job = self._pending.popleft()
            if job.future is not None and not job.future.done():
                job.future.set_exception(ServiceStoppedError("the service is shutting down"))
        self._update_depth()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------ queue
    @property
    def depth(self) -> int:
        return len(self._pending)

    def _update_depth(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._pending))

    def submit(self, job: GenerationJob) -> asyncio.Future:
        """Queue ``job``; its future resolves to a list of PNG bytes (one per image, in order)."""
        if not self.running:
            raise ServiceStoppedError("the generation worker is not running")
        if len(self._pending) >= self.queue_size:
            self._drop_dead()  # callers that gave up do not hold places
        if len(self._pending) >= self.queue_size:
            raise QueueFullError(f"{len(self._pending)} requests are already waiting")
        job.future = asyncio.get_running_loop().create_future()
        self._pending.append(job)
        self._update_depth()
        self._wake.set()
        return job.future

    # ------------------------------------------------------------------ batch forming
    def _drop_dead(self) -> None:
        now = time.monotonic()
        alive = deque()
        for job in self._pending:
            if job.abandoned or job.future.done():
                continue
            if now >= job.deadline:
                job.future.set_exception(DeadlineExceededError("the request waited past its deadline"))
                continue
            alive.append(job)
        self._pending = alive

    def _compatible_images(self, first: GenerationJob) -> int:
        return sum(j.num_images for j in self._pending if j.batch_key == first.batch_key)

    def _take_batch(self) -> list[GenerationJob]:
        first = self._pending.popleft()
        batch, total, rest = [first], first.num_images, deque()
        for job in self._pending:
            if job.batch_key == first.batch_key and total + job.num_images <= self.max_batch_images:
                batch.append(job)
                total += job.num_images
            else:
                rest.append(job)
        self._pending = rest
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._drop_dead()
            if not self._pending:
                self._update_depth()
                self._wake.clear()
                await self._wake.wait()
                continue
            first = self._pending[0]
            wait_until = first.enqueued + self.max_wait_s
            while self._compatible_images(first) < self.max_batch_images:
                remaining = wait_until - time.monotonic()
                if remaining <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            self._drop_dead()
            if not self._pending:
                continue
            batch = self._take_batch()
            self._update_depth()
            self.busy = True
            try:
                results = await loop.run_in_executor(self._executor, self._generate, batch)
            except Exception as err:  # noqa: BLE001 - the executor itself failed (e.g. shut down)
                results = [err] * len(batch)
            finally:
                self.busy = False
            for job, result in zip(batch, results):
                if job.future.done():
                    continue
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)

    # ------------------------------------------------------------------ worker thread
    def _generate(self, batch: list[GenerationJob]) -> list[list[bytes] | BaseException]:
        """Runs in the worker thread: one pipeline call for ``batch``; on failure, each job alone."""
        try:
            return self._pipeline_call(batch)
        except Exception as err:
            if len(batch) == 1:
                logger.exception("generation failed")
                return [err]
        logger.warning("a batch of %d requests failed; retrying each alone", len(batch))
        results: list[list[bytes] | BaseException] = []
        for job in batch:
            if job.abandoned or time.monotonic() >= job.deadline:
                results.append(DeadlineExceededError("the request's deadline passed"))
                continue
            try:
                results.extend(self._pipeline_call([job]))
            except Exception as err:
                logger.exception("generation failed")
                results.append(err)
        return results

    def _pipeline_call(self, batch: list[GenerationJob], observe: bool = True) -> list[list[bytes]]:
        start = time.perf_counter()
        prompts = [p for job in batch for p in job.image_prompts()]
        seeds = [s for job in batch for s in job.image_seeds()]
        steps, guidance_scale = batch[0].batch_key
        negative = None
        if guidance_scale > 1.0 and any(job.negative_prompt is not None for job in batch):
            negative = [job.negative_prompt or "" for job in batch for _ in range(job.num_images)]
        device = getattr(self.pipeline, "device", torch.device("cpu"))
        generators = [torch.Generator(device).manual_seed(s) for s in seeds]
        images = self.pipeline(
            prompts,
            negative_prompt=negative,
            num_images_per_prompt=1,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=generators,
            output_type="pil",
        ).images
        pngs = [encode_png(im) for im in images]
        if observe and self.metrics is not None:
            self.metrics.batch_images.observe(len(pngs))
            self.metrics.batch_requests.observe(len(batch))
            self.metrics.pipeline_seconds.observe(time.perf_counter() - start)
        out, i = [], 0
        for job in batch:
            out.append(pngs[i : i + job.num_images])
            i += job.num_images
        return out
