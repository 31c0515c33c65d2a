"""Tiny seeded components for tests and examples (never for real use)."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence

import torch
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

from .models import ProductDiscriminator, ProductGenerator
from .schedulers import DDGANScheduler
from .text import load_clip_tokenizer

TINY_TEXT_DIM = 32


def tiny_text_config() -> CLIPTextConfig:
    """The text tower of every tiny component: 2 layers, width 32, the real CLIP vocabulary."""
    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=TINY_TEXT_DIM,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=TINY_TEXT_DIM,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )


def tiny_text_encoder(seed: int = 0) -> CLIPTextModelWithProjection:
    torch.manual_seed(seed)
    return CLIPTextModelWithProjection(tiny_text_config()).eval()


def tiny_clip_model(seed: int = 0, image_size: int = 16):
    """A tiny random ``CLIPModel`` whose text tower has the shape of :func:`tiny_text_encoder`'s."""
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig

    torch.manual_seed(seed)
    vision = CLIPVisionConfig(
        hidden_size=TINY_TEXT_DIM,
        intermediate_size=37,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=4,
        projection_dim=TINY_TEXT_DIM,
    )
    config = CLIPConfig(
        text_config=tiny_text_config().to_dict(), vision_config=vision.to_dict(), projection_dim=TINY_TEXT_DIM
    )
    return CLIPModel(config).eval()


def tiny_generator(seed: int = 0, sample_size: int = 16, num_train_timesteps: int = 4) -> ProductGenerator:
    torch.manual_seed(seed)
    return ProductGenerator(
        sample_size=sample_size,
        block_out_channels=(8, 16),
        layers_per_block=1,
        attention_resolutions=(sample_size // 2,),
        z_dim=8,
        text_embed_dim=TINY_TEXT_DIM,
        pooled_text_dim=TINY_TEXT_DIM,
        style_dim=16,
        num_train_timesteps=num_train_timesteps,
        num_attention_heads=2,
        norm_num_groups=4,
    )


def tiny_discriminator(seed: int = 0, sample_size: int = 16, num_train_timesteps: int = 4) -> ProductDiscriminator:
    torch.manual_seed(seed)
    return ProductDiscriminator(
        sample_size=sample_size,
        block_out_channels=(8, 16, 16),
        pooled_text_dim=TINY_TEXT_DIM,
        num_train_timesteps=num_train_timesteps,
        temb_dim=16,
    )


def get_dummy_components(seed: int = 0, sample_size: int = 16, num_train_timesteps: int = 4) -> dict:
    """Tokenizer, tiny text encoder, tiny generator and scheduler, deterministic for ``seed``.

    Generator weights are perturbed away from their (partly zero) initialisation so that every
    input, including the text, changes the output.
    """
    generator = tiny_generator(seed, sample_size, num_train_timesteps)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in generator.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return {
        "tokenizer": load_clip_tokenizer(),
        "text_encoder": tiny_text_encoder(seed),
        "generator": generator.eval(),
        "scheduler": DDGANScheduler(num_train_timesteps=num_train_timesteps),
    }


def make_tiny_pipeline(seed: int = 0, **kwargs):
    from .pipeline import ProductImagePipeline

    return ProductImagePipeline(**get_dummy_components(seed, **kwargs))


# ------------------------------------------------------------------------------------ launching
def free_port() -> int:
    """A TCP port that was free a moment ago (for ``accelerate launch --main_process_port``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_ended(process, timeout: float) -> None:
    """Wait until ``process`` (a ``psutil.Process``, not necessarily a child of this one) is gone or a
    zombie (its parent may be stopped, and will not reap it), at most ``timeout`` seconds."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.05)


class LaunchTimeout(AssertionError):
    """A launched command ran past its time; ``output`` ends with each process's Python stacks."""

    def __init__(self, cmd: Sequence[str], timeout: float, output: str):
        # faulthandler's list of loaded extension modules is one long line per process: not the stack
        self.output = output = "\n".join(
            line for line in output.splitlines() if not line.startswith("Extension modules:")
        )
        super().__init__(
            f"{' '.join(map(str, cmd[:8]))} ... ran past {timeout:g} s and was stopped; the end of its "
            f"stderr, with the Python stack of every thread of each process:\n{output[-12000:]}"
        )


def run_launch(cmd: Sequence[str], *, env: dict, timeout: float = 300, cwd=None) -> subprocess.CompletedProcess:
    """Run ``cmd`` (typically ``accelerate launch ...``) to the end and return its result (text output).

    Past ``timeout`` seconds nothing is left behind, and the hang is explained. torchrun starts each
    rank in its own session, so the launcher's process tree is collected first and frozen (SIGSTOP),
    so that no process reacts to another's end. Then, one at a time (ranks first, so their stacks do
    not interleave in the shared stderr), each gets SIGABRT and SIGCONT: Python's faulthandler
    (``PYTHONFAULTHANDLER``) writes the stack of each of its threads. What is left gets SIGKILL.
    :class:`LaunchTimeout` carries those stacks. Output goes to files, not pipes, so a chatty process
    can never block on a full pipe."""
    import psutil

    env = {**env, "PYTHONFAULTHANDLER": "1"}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(list(map(str, cmd)), env=env, cwd=cwd, stdout=out, stderr=err, start_new_session=True)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                launcher = psutil.Process(proc.pid)
                tree = [launcher, *launcher.children(recursive=True)]
            except psutil.NoSuchProcess:
                tree = []
            for p in tree:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.suspend()
            for p in reversed(tree):
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.send_signal(signal.SIGABRT)
                    p.resume()
                    _wait_until_ended(p, 10)
            for p in tree:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
            proc.wait()
            err.seek(0)
            raise LaunchTimeout(cmd, timeout, err.read().decode(errors="replace")) from None
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(
            proc.args, proc.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace")
        )


def _gloo_worker(rank: int, world: int, store: str, out: str, fn) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.save(fn(rank, world), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_in_gloo_processes(fn, world: int, tmp_dir) -> list:
    """``fn(rank, world)`` in ``world`` spawned processes of one gloo process group (a file rendezvous
    in ``tmp_dir``, no port); returns each rank's result (anything ``torch.save`` takes), in rank order.
    ``fn`` must be importable (a module-level function) for the spawned processes."""
    import torch.multiprocessing as mp

    tmp = str(tmp_dir)
    mp.spawn(_gloo_worker, args=(world, f"{tmp}/gloo-store", tmp, fn), nprocs=world, join=True)
    return [torch.load(f"{tmp}/rank{rank}.pt") for rank in range(world)]
