"""Property-based fuzzing of prodimg's four input surfaces (issue #9, part 1).

Surfaces: ``pipeline`` (``ProductImagePipeline.__call__``), ``cli`` (``prodimg.cli.main``), ``loader``
(``prodimg.data.loading``) and ``http`` (the FastAPI app of ``prodimg.serving``). For each, a hypothesis
strategy draws a *case* (a plain description of which kind of value goes where) and
``run_<surface>_case(ctx, case)`` builds the real inputs, runs them and classifies the outcome:

- ``ok``: it succeeded and the result checks out (image count, shape, finite values in range; exit code
  0 and readable PNGs; a 2xx with well-formed images; every loaded row decodes);
- ``expected``: the documented refusal: a ``ValueError``/``TypeError`` naming the argument (pipeline);
  exit code 2 with a message and no traceback (CLI); ``BadDataError``/``ValueError``/
  ``FileNotFoundError`` naming the row, line, file or column (loader); a 4xx JSON error (HTTP);
- ``unexpected``: anything else: another exception type, a traceback, a 5xx, a success for an invalid or
  unauthenticated request, a refusal of a valid one, a wrong output, or a case past its time limit.

Each drawn value is valid or invalid by the documented contract, so where a case is valid as a whole the
oracle also demands success (over-strict validation is a failure too).

``run_profile(surface, max_examples, seed)`` runs one surface and returns a :class:`ProfileResult`. Runs
are reproducible (fixed hypothesis seed, no example database, so nothing is written to ``.hypothesis/``)
and write only into a temporary folder. Not drawn, because they are expensive by request rather than
wrong: huge valid image counts or batch sizes, full-size dataset builds, multi-process rendering,
FID/KID (the Inception network), ``prodimg serve`` (it blocks) and ``--push_to_hub`` (network).
"""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import json
import logging
import math
import os
import shutil
import tempfile
import time
import traceback
import urllib.parse
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.errors import UnsatisfiedAssumption

from . import time_limit as _time_limit

SURFACES = ("pipeline", "cli", "loader", "http")
TIME_LIMITS = {"pipeline": 60.0, "cli": 240.0, "loader": 60.0, "http": 60.0}
"""Per-case wall-clock limits (seconds); a case past its limit is an unexpected failure (a hang)."""
MAX_FAILURES_KEPT = 25
IMAGE_SIZE = 16  # the tiny pipeline's sample size

NAN, INF = float("nan"), float("inf")


# ============================================================================ outcomes and results
@dataclass
class Outcome:
    kind: str  # "ok", "expected" or "unexpected"
    label: str  # a short class for the counts: "ok", "ValueError", "exit 2", "422", "timeout", ...
    detail: str = ""


def _ok(label: str = "ok") -> Outcome:
    return Outcome("ok", label)


def _expected(label: str, detail: str = "") -> Outcome:
    return Outcome("expected", label, detail)


def _unexpected(label: str, detail: str = "") -> Outcome:
    return Outcome("unexpected", label, detail)


def describe_error(err: BaseException, frames: int = 3) -> str:
    """``Type: message`` plus the innermost frames, for failure reports."""
    tb = traceback.extract_tb(err.__traceback__)[-frames:]
    where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(tb))
    return f"{type(err).__name__}: {_short(str(err))}" + (f" (at {where})" if where else "")


def _short(text: str, limit: int = 400) -> str:
    text = text.replace("\n", " | ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class ProfileResult:
    """Counts of one fuzz run over one surface."""

    surface: str
    seed: int
    max_examples: int
    tried: int = 0
    ok: int = 0
    expected: int = 0
    unexpected: int = 0
    seconds: float = 0.0
    slowest_case_s: float = 0.0
    labels: Counter = field(default_factory=Counter)
    failures: list[dict] = field(default_factory=list)

    def record(self, case: Any, outcome: Outcome, seconds: float) -> None:
        self.tried += 1
        setattr(self, outcome.kind, getattr(self, outcome.kind) + 1)
        self.labels[f"{outcome.kind}:{outcome.label}"] += 1
        self.slowest_case_s = max(self.slowest_case_s, seconds)
        if outcome.kind == "unexpected" and len(self.failures) < MAX_FAILURES_KEPT:
            self.failures.append(
                {"label": outcome.label, "detail": outcome.detail, "case": _short(repr(case), 1500)}
            )

    def as_dict(self) -> dict:
        return {
            "surface": self.surface,
            "seed": self.seed,
            "max_examples": self.max_examples,
            "tried": self.tried,
            "ok": self.ok,
            "expected": self.expected,
            "unexpected": self.unexpected,
            "seconds": round(self.seconds, 2),
            "slowest_case_s": round(self.slowest_case_s, 2),
            "labels": dict(sorted(self.labels.items())),
            "failures": self.failures,
        }

    def describe_failures(self) -> str:
        return "\n".join(f"- [{f['label']}] {f['detail']}\n    case: {f['case']}" for f in self.failures)


# ============================================================================ run-time guards
class CaseTimeout(BaseException):
    """Raised by the per-case alarm (a BaseException, so that no ``except Exception`` swallows it)."""


def time_limit(seconds: float | None):
    """Raise :class:`CaseTimeout` in the main thread after ``seconds`` (a no-op in other threads)."""
    return _time_limit(seconds, lambda message: CaseTimeout(f"the case {message}"))


_NOISY_LOGGERS = (
    "prodimg",
    "transformers",
    "diffusers",
    "datasets",
    "accelerate",
    "httpx",
    "huggingface_hub",
    "fsspec",
    "filelock",
    "PIL",
    "torch",
    "onnxscript",
    "onnx_ir",
    "root",
)


@contextlib.contextmanager
def fuzz_environment():
    """Warnings and library logs off, progress bars off, every Hugging Face library offline, and one torch
    thread (the tiny model gains nothing from more, and a thread pool on a busy machine runs ~100x slower);
    all restored afterwards."""
    import datasets.config
    import datasets.utils
    import diffusers.utils.logging as diffusers_logging
    import huggingface_hub.constants
    import huggingface_hub.utils
    import torch
    import transformers.utils.logging as transformers_logging

    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")}
    patched = [
        (huggingface_hub.constants, "HF_HUB_OFFLINE"),
        (datasets.config, "HF_HUB_OFFLINE"),
        (datasets.config, "HF_DATASETS_OFFLINE"),
    ]
    saved = [getattr(module, name) for module, name in patched]
    bars = [
        (
            diffusers_logging.is_progress_bar_enabled(),
            diffusers_logging.enable_progress_bar,
            diffusers_logging.disable_progress_bar,
        ),
        (
            transformers_logging.is_progress_bar_enabled(),
            transformers_logging.enable_progress_bar,
            transformers_logging.disable_progress_bar,
        ),
        (
            not datasets.utils.are_progress_bars_disabled(),
            datasets.utils.enable_progress_bars,
            datasets.utils.disable_progress_bars,
        ),
        (
            not huggingface_hub.utils.are_progress_bars_disabled(),
            huggingface_hub.utils.enable_progress_bars,
            huggingface_hub.utils.disable_progress_bars,
        ),
    ]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        for lg in loggers:
            lg.setLevel(logging.CRITICAL)
        os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        for module, name in patched:
            setattr(module, name, True)
        for _, _, disable in bars:
            disable()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.set_num_threads(threads)
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for (module, name), value in zip(patched, saved):
            setattr(module, name, value)
        for was_enabled, enable, _ in bars:
            if was_enabled:
                enable()


@contextlib.contextmanager
def hypothesis_storage(path: Path):
    """Point hypothesis' storage (its constants and unicode caches; the example database is off anyway) at
    ``path`` instead of ``./.hypothesis``, and back afterwards."""
    from hypothesis import configuration

    previous = vars(configuration).get("__hypothesis_home_directory")
    configuration.set_hypothesis_home_dir(path)
    try:
        yield
    finally:
        configuration.set_hypothesis_home_dir(previous)


# ============================================================================ shared fixtures
class FuzzContext:
    """What the cases share, built lazily in one temporary folder: the tiny pipeline, its saved folder, a
    tiny dataset, API keys and the HTTP test client. ``close()`` (or ``with``) removes everything."""

    def __init__(self, root: str | os.PathLike | None = None):
        self._tmp = None
        if root is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="prodimg-fuzz-")
            root = self._tmp.name
        self.root = Path(root)
        self._built: dict[str, Any] = {}
        self._stack = contextlib.ExitStack()
        self._cases = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _once(self, name: str, build: Callable[[], Any]) -> Any:
        if name not in self._built:
            self._built[name] = build()
        return self._built[name]

    def prepare(self, surface: str) -> None:
        """Build a surface's fixtures before its cases run (outside the per-case clock)."""
        if surface == "pipeline":
            _ = self.base_embeds
        elif surface == "cli":
            _ = self.pipeline_dir, self.dataset_dir
        elif surface == "http":
            _ = self.http

    @property
    def pipe(self):
        def build():
            from ..testing import make_tiny_pipeline

            pipe = make_tiny_pipeline()
            pipe.set_progress_bar_config(disable=True)
            return pipe

        return self._once("pipe", build)

    @property
    def base_embeds(self):
        return self._once("embeds", lambda: self.pipe.encode_text(["red striped dress", "blue shirt", "a"]))

    @property
    def pipeline_dir(self) -> Path:
        def build():
            path = self.root / "pipeline"
            self.pipe.save_pretrained(path)
            return path

        return self._once("pipeline_dir", build)

    @property
    def dataset_dir(self) -> Path:
        """A save_to_disk DatasetDict (train, test; 4 rows each) with image/text/color/category/pattern."""

        def build():
            from datasets import Dataset, DatasetDict, Features, Value
            from datasets import Image as ImageFeature

            from ..data.colors import COLOR_NAMES

            features = Features(
                {
                    "image": ImageFeature(),
                    "text": Value("string"),
                    "color": Value("string"),
                    "category": Value("string"),
                    "pattern": Value("string"),
                }
            )
            splits = {}
            for s, split in enumerate(("train", "test")):
                rows = {k: [] for k in features}
                for i in range(4):
                    color = COLOR_NAMES[(i + 3 * s) % len(COLOR_NAMES)]
                    rows["image"].append(
                        {"bytes": _encode_image(_solid("RGB", (20, 24), i + s)), "path": None}
                    )
                    rows["text"].append(f"{color} striped dress")
                    rows["color"].append(color)
                    rows["category"].append(("Dress", "Shirt", "Bag", "Sneaker")[i])
                    rows["pattern"].append(("solid", "striped")[i % 2])
                splits[split] = Dataset.from_dict(rows, features=features)
            path = self.root / "dataset"
            DatasetDict(splits).save_to_disk(str(path))
            return path

        return self._once("dataset_dir", build)

    @property
    def http(self) -> HttpFixture:
        def build():
            from fastapi.testclient import TestClient

            from ..pipeline import ProductImagePipeline
            from ..serving import ServiceConfig, create_app
            from ..serving.keys import add_key, revoke_key

            pipe = ProductImagePipeline.from_pretrained(
                self.pipeline_dir
            )  # its own copy: the worker thread's
            pipe.set_progress_bar_config(disable=True)
            keys_file = self.root / "http" / "keys.json"
            keys = {}
            for name, scopes in {
                "gen": ["generate"],
                "mon": ["monitor"],
                "all": ["generate", "monitor"],
                "noscope": [],
                "revoked": ["generate", "monitor"],
            }.items():
                keys[name] = add_key(keys_file, name, scopes)[1]
            revoke_key(keys_file, "revoked")
            config = ServiceConfig(rate_limit=0.0, audit_log=None)
            app = create_app(pipe, config, str(keys_file))
            client = self._stack.enter_context(
                TestClient(app, raise_server_exceptions=False, follow_redirects=False)
            )
            scopes = {
                keys["gen"]: {"generate"},
                keys["mon"]: {"monitor"},
                keys["all"]: {"generate", "monitor"},
                keys["noscope"]: set(),
            }
            return HttpFixture(
                client,
                keys,
                scopes,
                config,
                self.pipe.tokenizer,
                int(pipe.max_text_length),
                int(pipe.scheduler.config.num_train_timesteps),
            )

        return self._once("http", build)

    @contextlib.contextmanager
    def case_dir(self):
        """A fresh folder for one case, removed afterwards."""
        self._cases += 1
        path = self.root / "cases" / f"case-{self._cases:06d}"
        path.mkdir(parents=True)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)


@dataclass
class HttpFixture:
    client: Any
    keys: dict[str, str]  # name -> key ("gen", "mon", "all", "noscope", "revoked")
    scopes: dict[str, set[str]]  # live key -> its scopes
    config: Any
    tokenizer: Any
    max_tokens: int
    max_steps: int


# ============================================================================ image helpers
def _solid(mode: str, size: tuple[int, int], seed: int = 0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    return rgb if mode == "RGB" else rgb.convert(mode)


def _encode_image(image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_with_declared_size(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` (valid CRC) over a tiny payload."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    idat = b"IDAT" + zlib.compress(b"\x00" * 16)
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
        + struct.pack(">I", len(idat) - 4)
        + idat
        + struct.pack(">I", zlib.crc32(idat))
        + struct.pack(">I", 0)
        + b"IEND"
        + struct.pack(">I", zlib.crc32(b"IEND"))
    )


IMAGE_KINDS = (
    "png",
    "png",
    "png",
    "jpeg",
    "gif",
    "bmp",
    "webp",
    "rgba",
    "la",
    "palette_t",
    "i16",
    "cmyk",
    "exif",
    "zero",
    "truncated",
    "text",
    "huge_declared",
    "tiny",
    "missing",
    "directory",
)
DEFINITELY_BAD_IMAGES = {"zero", "text", "huge_declared", "missing", "directory"}  # "tiny": by its size
_EXTENSIONS = {"jpeg": "jpg", "gif": "gif", "bmp": "bmp", "webp": "webp", "cmyk": "jpg", "exif": "jpg"}


def image_bytes(kind: str, size: tuple[int, int], seed: int = 0) -> bytes | None:
    """The file content of one image kind (None: no file; the "directory" kind is made by the caller)."""
    from PIL import Image

    if kind in ("missing", "directory"):
        return None
    if kind == "zero":
        return b""
    if kind == "text":
        return b"this is not an image\n"
    if kind == "huge_declared":
        return _png_with_declared_size(100_000, 100_000)
    if kind == "tiny":
        return _encode_image(_solid("RGB", (2, 3), seed))
    if kind == "truncated":
        data = _encode_image(_solid("RGB", (max(size[0], 24), max(size[1], 24)), seed))
        return data[: len(data) // 2]
    if kind == "jpeg":
        return _encode_image(_solid("RGB", size, seed), "JPEG")
    if kind in ("gif", "bmp", "webp"):
        return _encode_image(_solid("RGB", size, seed), kind.upper())
    if kind == "rgba":
        return _encode_image(_solid("RGBA", size, seed))
    if kind == "la":
        return _encode_image(_solid("LA", size, seed))
    if kind == "palette_t":
        image = _solid("RGB", size, seed).convert("P")
        return _encode_image(image, transparency=0)
    if kind == "i16":
        arr = np.random.default_rng(seed).integers(0, 65536, (size[1], size[0]), dtype=np.uint16)
        return _encode_image(Image.fromarray(arr))  # uint16: mode I;16
    if kind == "cmyk":
        return _encode_image(_solid("CMYK", size, seed), "JPEG")
    if kind == "exif":
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90
        return _encode_image(_solid("RGB", size, seed), "JPEG", exif=exif)
    return _encode_image(_solid("RGB", size, seed))


# ============================================================================ text strategies
def _tag(tag: str, strategy: st.SearchStrategy | None = None) -> st.SearchStrategy:
    return st.just((tag,)) if strategy is None else strategy.map(lambda v: (tag, v))


SURROGATE = st.integers(0xD800, 0xDFFF).map(chr)
SURROGATE_ESCAPE = st.integers(0xDC80, 0xDCFF).map(chr)  # what Python makes of undecodable bytes in argv
ODD_TEXTS = (
    "",
    " ",
    "\x00",
    "\u200b",
    "\ufeff",
    "e\u0301",
    "\U0010ffff",
    "🙂" * 30,
    "a\nb\tc\r",
    "<|endoftext|>",
    "<|startoftext|>x",
    "İß" * 40,
    "\u202eevil",
    "NaN",
    "None",
    "\u3000",
    "%s%n{0}",
)
TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(ODD_TEXTS),
    st.tuples(st.sampled_from(("red ", "dress", "🙂", "x ")), st.integers(20, 600)).map(
        lambda t: t[0] * t[1]
    ),
)
TEXT_WITH_SURROGATE = st.tuples(st.text(max_size=10), SURROGATE, st.text(max_size=10)).map("".join)
JUNK_VALUE = st.one_of(
    st.integers(),
    st.floats(),
    st.booleans(),
    st.binary(max_size=8),
    st.just({"a": 1}),
    st.just(b"red dress"),
    st.just(["nested", ["list"]]),
)


# ============================================================================ surface 1: the pipeline
PIPELINE_PARAMS = (
    "prompt",
    "negative_prompt",
    "prompt_embeds",
    "negative_prompt_embeds",
    "num_images_per_prompt",
    "num_inference_steps",
    "guidance_scale",
    "generator",
    "latents",
    "output_type",
    "return_dict",
    "height",
    "width",
    "callback",
    "eta",
)
OUTPUT_TYPES = ("pil", "np", "pt")
PROMPT_VALID = {"str", "list", "tuple"}
EMBEDS_VALID = ("valid", "float_mask", "short")
EMBEDS_INVALID = (
    "wrong_dim",
    "wrong_pooled_dim",
    "batch_mismatch",
    "mask_len",
    "nan",
    "inf",
    "empty_batch",
    "not_tensor",
    "not_embeds",
    "pooled_3d",
    "int_hidden",
)
GENERATOR_VALID = ("none", "one", "list_ok")
GENERATOR_INVALID = ("list_short", "list_long", "empty_list", "int", "str", "list_ints", "list_mixed")
LATENT_DTYPES = ("float32", "float16", "float64", "bfloat16", "int64", "bool")


def mixed_cases(fields: dict[str, tuple[st.SearchStrategy, st.SearchStrategy]]) -> st.SearchStrategy:
    """Cases from per-field ``(valid, invalid)`` strategies: a third all valid, a third with exactly one
    invalid field, a third with any mix (so that valid calls are common and each refusal is isolated)."""
    names = list(fields)
    valid = st.fixed_dictionaries({k: v for k, (v, _) in fields.items()})
    anything = st.fixed_dictionaries({k: st.one_of(v, bad) for k, (v, bad) in fields.items()})
    one_bad = st.sampled_from(names).flatmap(
        lambda b: st.fixed_dictionaries({k: (bad if k == b else v) for k, (v, bad) in fields.items()})
    )
    return st.one_of(valid, one_bad, anything)


PROMPT_OK = st.one_of(
    _tag("str", TEXT),
    _tag("str", TEXT),
    _tag("list", st.lists(TEXT, min_size=1, max_size=3)),
    _tag("tuple", st.lists(TEXT, min_size=1, max_size=2)),
)
PROMPT_BAD = st.one_of(
    _tag("surrogate", TEXT_WITH_SURROGATE),
    _tag("list_surrogate", st.tuples(TEXT, TEXT_WITH_SURROGATE).map(list)),
    _tag("empty_list"),
    _tag("list_nonstr", st.tuples(TEXT, JUNK_VALUE).map(list)),
    _tag("nonstr", JUNK_VALUE),
    _tag("none"),
)
PROMPT = st.one_of(PROMPT_OK, PROMPT_BAD)
EMBEDS_OK = st.tuples(st.sampled_from(EMBEDS_VALID), st.integers(1, 3))
EMBEDS_BAD = st.tuples(st.sampled_from(EMBEDS_INVALID), st.integers(1, 3))
EMBEDS = st.one_of(EMBEDS_OK, EMBEDS_BAD)
PIPELINE_FIELDS = {
    "text": (
        st.one_of(_tag("prompt", PROMPT_OK), _tag("prompt", PROMPT_OK), _tag("embeds", EMBEDS_OK)),
        st.one_of(
            _tag("prompt", PROMPT_BAD),
            _tag("embeds", EMBEDS_BAD),
            _tag("both", st.tuples(PROMPT, EMBEDS)),
            _tag("neither"),
        ),
    ),
    "negative_prompt": (
        st.one_of(st.none(), st.none(), _tag("str", TEXT), _tag("list_ok", TEXT)),
        st.one_of(
            _tag("list_wrong", st.integers(1, 2)),
            _tag("surrogate", TEXT_WITH_SURROGATE),
            _tag("nonstr", JUNK_VALUE),
            _tag("list_nonstr", JUNK_VALUE),
        ),
    ),
    "negative_prompt_embeds": (st.none(), st.sampled_from(("valid", "wrong_batch", "nan", "not_embeds"))),
    "num_images_per_prompt": (
        st.integers(1, 3),
        st.sampled_from((0, -1, -(10**20), True, False, 2.0, "2", None)),
    ),
    "num_inference_steps": (
        st.one_of(st.none(), st.integers(1, 4)),
        st.sampled_from((0, 5, -1, True, 2.0, "3", 10**20)),
    ),
    "guidance_scale": (
        st.one_of(
            st.floats(0, 30), st.integers(0, 10), st.floats(30, 1e38), st.just(1.0), st.just(np.float64(3.0))
        ),
        st.sampled_from((NAN, INF, -INF, -0.5, -1e10, True, "2", None, complex(2, 0), np.float32(2.0))),
    ),
    "generator": (
        st.tuples(st.sampled_from(GENERATOR_VALID), st.integers(0, 2**32 - 1)),
        st.tuples(st.sampled_from(GENERATOR_INVALID), st.integers(0, 2**32 - 1)),
    ),
    "latents": (
        st.one_of(
            st.none(),
            st.tuples(
                st.just("ok"), st.sampled_from(LATENT_DTYPES), st.floats(0, 1e6), st.integers(0, 2**16)
            ),
        ),
        st.one_of(
            st.tuples(st.sampled_from(("nan", "inf", "-inf")), st.sampled_from(("float32", "float16"))),
            _tag(
                "shape",
                st.sampled_from(
                    ("wrong_batch", "wrong_channels", "wrong_size", "3d", "numpy", "list", "scalar")
                ),
            ),
        ),
    ),
    "output_type": (st.sampled_from(OUTPUT_TYPES), st.sampled_from(("latent", "PIL", "", None, 1, "numpy"))),
    "return_dict": (
        st.sampled_from((True, False)),
        st.sampled_from((None, 0, 1, "yes")),
    ),  # any truthiness works
    "extra": (
        st.just({}),
        st.sampled_from(({"height": 32}, {"width": 16}, {"callback": None}, {"eta": 0.0})),
    ),
}
PIPELINE_CASES = mixed_cases(PIPELINE_FIELDS)


def _prompt_value(spec: tuple) -> Any:
    tag = spec[0]
    if tag == "tuple":
        return tuple(spec[1])
    if tag == "empty_list":
        return []
    if tag == "none":
        return None
    return spec[1]


def _prompt_batch(spec: tuple) -> int:
    value = _prompt_value(spec)
    return len(value) if isinstance(value, (list, tuple)) and value else 1


def make_embeds(ctx: FuzzContext, kind: str, batch: int):
    """A ``PromptEmbeds`` (or something in its place) of one kind for ``batch`` prompts."""
    import torch

    from ..pipeline import PromptEmbeds

    base = ctx.base_embeds
    reps = -(-batch // base.pooled.shape[0])
    h, p, m = (
        t.repeat_interleave(reps, 0)[:batch].clone()
        for t in (base.hidden_states, base.pooled, base.attention_mask)
    )
    if kind == "float_mask":
        m = m.float()
    elif kind == "short":
        h, m = h[:, :10], m[:, :10]
    elif kind == "wrong_dim":
        h = torch.zeros(batch, h.shape[1], h.shape[2] + 3)
    elif kind == "wrong_pooled_dim":
        p = torch.zeros(batch, p.shape[1] + 1)
    elif kind == "batch_mismatch":
        p = torch.cat([p, p])
    elif kind == "mask_len":
        m = m[:, :-1]  # one token short of the hidden states
    elif kind == "nan":
        h[0, 0, 0] = NAN
    elif kind == "inf":
        p[0, 0] = INF
    elif kind == "empty_batch":
        h, p, m = h[:0], p[:0], m[:0]
    elif kind == "not_tensor":
        return PromptEmbeds(h.tolist(), p, m)
    elif kind == "not_embeds":
        return (h, p, m)
    elif kind == "pooled_3d":
        p = p[:, None]
    elif kind == "int_hidden":
        h = h.long()
    return PromptEmbeds(h, p, m)


def build_pipeline_call(ctx: FuzzContext, case: dict) -> tuple[dict, bool, int]:
    """``(kwargs, valid, total)``: the call's arguments, whether the documented contract accepts them, and
    the number of images a successful call returns."""
    import torch

    kwargs: dict[str, Any] = {}
    valid = True
    text = case["text"]
    batch = 1
    if text[0] in ("prompt", "both"):
        spec = text[1] if text[0] == "prompt" else text[1][0]
        kwargs["prompt"] = _prompt_value(spec)
        batch = _prompt_batch(spec)
        valid &= spec[0] in PROMPT_VALID
    if text[0] in ("embeds", "both"):
        kind, n = text[1] if text[0] == "embeds" else text[1][1]
        kwargs["prompt_embeds"] = make_embeds(ctx, kind, n)
        if text[0] == "embeds":
            batch = n
        valid &= kind in EMBEDS_VALID
    valid &= text[0] in ("prompt", "embeds") and kwargs.get("prompt", kwargs.get("prompt_embeds")) is not None

    neg = case["negative_prompt"]
    if neg is not None:
        tag = neg[0]
        if tag == "list_ok":
            kwargs["negative_prompt"] = [neg[1]] * batch
        elif tag == "list_wrong":
            kwargs["negative_prompt"] = ["blurry"] * (batch + neg[1])
        elif tag == "list_nonstr":
            kwargs["negative_prompt"] = ["blurry"] * (batch - 1) + [neg[1]]
        else:
            kwargs["negative_prompt"] = neg[1]
        valid &= tag in ("str", "list_ok")
    neg_embeds = case["negative_prompt_embeds"]
    if neg_embeds is not None:
        kind = {"valid": "valid", "nan": "nan", "not_embeds": "not_embeds"}.get(neg_embeds, "valid")
        kwargs["negative_prompt_embeds"] = make_embeds(ctx, kind, batch + (neg_embeds == "wrong_batch"))
        valid &= neg_embeds == "valid" and neg is None

    n = case["num_images_per_prompt"]
    kwargs["num_images_per_prompt"] = n
    n_ok = isinstance(n, int) and not isinstance(n, bool) and n >= 1
    valid &= n_ok
    total = batch * (n if n_ok else 1)
    steps = case["num_inference_steps"]
    kwargs["num_inference_steps"] = steps
    valid &= steps is None or (isinstance(steps, int) and not isinstance(steps, bool) and 1 <= steps <= 4)
    g = case["guidance_scale"]
    kwargs["guidance_scale"] = g
    valid &= isinstance(g, (int, float)) and not isinstance(g, bool) and math.isfinite(g) and g >= 0
    kwargs["output_type"] = case["output_type"]
    valid &= case["output_type"] in OUTPUT_TYPES
    kwargs["return_dict"] = case["return_dict"]

    gen_kind, seed = case["generator"]
    one = torch.Generator().manual_seed(seed)
    generators = {
        "none": None,
        "one": one,
        "int": seed,
        "str": str(seed),
        "empty_list": [],
        "list_ok": [torch.Generator().manual_seed(seed + i) for i in range(total)],
        "list_short": [torch.Generator().manual_seed(seed + i) for i in range(total - 1)],
        "list_long": [torch.Generator().manual_seed(seed + i) for i in range(total + 1)],
        "list_ints": list(range(total)),
        "list_mixed": [one] + [seed] * (total - 1) if total > 1 else [seed],
    }
    kwargs["generator"] = generators[gen_kind]
    valid &= gen_kind in GENERATOR_VALID

    lat = case["latents"]
    if lat is not None:
        shape = (total, 3, IMAGE_SIZE, IMAGE_SIZE)
        if lat[0] == "ok":
            _, dtype, scale, lseed = lat
            x = torch.randn(shape, generator=torch.Generator().manual_seed(lseed)) * scale
            x = x.to(getattr(torch, dtype))
            kwargs["latents"] = x
            valid &= bool(torch.isfinite(x).all())
        elif lat[0] in ("nan", "inf", "-inf"):
            x = torch.randn(shape).to(getattr(torch, lat[1]))
            x.view(-1)[0] = float(lat[0])
            kwargs["latents"] = x
            valid = False
        else:
            variant = lat[1]
            shapes = {
                "wrong_batch": (total + 1, 3, IMAGE_SIZE, IMAGE_SIZE),
                "wrong_channels": (total, 4, IMAGE_SIZE, IMAGE_SIZE),
                "wrong_size": (total, 3, IMAGE_SIZE * 2, IMAGE_SIZE),
                "3d": (3, IMAGE_SIZE, IMAGE_SIZE),
            }
            if variant in shapes:
                kwargs["latents"] = torch.randn(shapes[variant])
            elif variant == "numpy":
                kwargs["latents"] = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
            elif variant == "list":
                kwargs["latents"] = torch.randn(shape).tolist()
            else:
                kwargs["latents"] = 0.5
            valid = False
    if case["extra"]:
        kwargs.update(case["extra"])
        valid = False
    return kwargs, bool(valid), total


def check_pipeline_output(out: Any, kwargs: dict, total: int) -> str | None:
    """None if ``out`` is what a successful call must return, else what is wrong."""
    import PIL.Image
    import torch

    from ..pipeline import ProductImagePipelineOutput

    if kwargs.get("return_dict"):
        if not isinstance(out, ProductImagePipelineOutput):
            return f"return_dict is truthy but the result is a {type(out).__name__}"
        images = out.images
    else:
        if not (isinstance(out, tuple) and len(out) == 1):
            return f"return_dict is falsy but the result is {type(out).__name__} (expected a 1-tuple)"
        images = out[0]
    kind = kwargs["output_type"]
    if kind == "pil":
        if not isinstance(images, list) or len(images) != total:
            return f"expected a list of {total} PIL images, got {type(images).__name__} of {len(images)}"
        for im in images:
            if not isinstance(im, PIL.Image.Image) or im.mode != "RGB" or im.size != (IMAGE_SIZE, IMAGE_SIZE):
                return f"bad PIL image {im!r}"
        return None
    if kind == "np":
        expected, arr = (total, IMAGE_SIZE, IMAGE_SIZE, 3), images
        if not isinstance(arr, np.ndarray):
            return f"expected a numpy array, got {type(arr).__name__}"
    else:
        expected = (total, 3, IMAGE_SIZE, IMAGE_SIZE)
        if not torch.is_tensor(images):
            return f"expected a tensor, got {type(images).__name__}"
        arr = images.float().cpu().numpy()
    if tuple(arr.shape) != expected:
        return f"shape {tuple(arr.shape)} != {expected}"
    if not np.isfinite(arr).all():
        return f"{int((~np.isfinite(arr)).sum())} non-finite values in the images"
    if arr.min() < 0 or arr.max() > 1:
        return f"values outside [0, 1]: {arr.min()} .. {arr.max()}"
    return None


def run_pipeline_case(ctx: FuzzContext, case: dict) -> Outcome:
    kwargs, valid, total = build_pipeline_call(ctx, case)
    try:
        out = ctx.pipe(**kwargs)
    except (ValueError, TypeError) as err:
        message = str(err)
        if valid:
            return _unexpected("valid call refused", describe_error(err))
        if not any(name in message for name in PIPELINE_PARAMS):
            return _unexpected("error does not name the argument", describe_error(err))
        return _expected(type(err).__name__)
    except Exception as err:  # noqa: BLE001 - everything else is a finding
        return _unexpected(type(err).__name__, describe_error(err))
    if not valid:
        return _unexpected("invalid call accepted", f"returned {type(out).__name__}")
    problem = check_pipeline_output(out, kwargs, total)
    return _unexpected("wrong output", problem) if problem else _ok()


# ============================================================================ surface 2: the CLI
CLI_PLACEHOLDERS = (
    "@PIPE",
    "@DATASET",
    "@OUT",
    "@FILE",
    "@FILE_CHILD",
    "@DIR",
    "@MISSING",
    "@KEYS",
    "@KEYS_EXISTING",
    "@BADJSON",
    "@CSV",
    "@JSONL",
    "@TXT",
    "@HUB",
)
CHEAP_METRICS = ("color_accuracy", "category_accuracy", "pattern_accuracy", "clip_score")
DEVICES = ("cpu", "cpu", "cpu", "cuda", "cuda:1", "bogus", "meta", "cpu:0", "mps", "CPU")
INT_JUNK = ("-1", "0", "abc", "1.5", "", "1e3", "0x10", " 2", "٣", "-" + str(2**70))
FLOAT_JUNK = ("nan", "inf", "-inf", "1e309", "abc", "", "-0", "1e-320", "0x1p3")
BAD_OPSETS = ("-1", "0", "16", "23", "24", "99", str(2**70))

ARG_TEXT = st.one_of(
    st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=30),
    st.sampled_from(ODD_TEXTS[1:]),
    st.tuples(st.text(max_size=8), SURROGATE_ESCAPE, st.text(max_size=8)).map("".join),
).filter(lambda s: "\x00" not in s)
# junk tokens never hold a path separator or start with "~" or "-", so that they can only name things inside
# the case's own folder and never turn into an option that would make a case expensive
JUNK_TOKEN = st.one_of(
    st.text(st.characters(exclude_characters="/\\\x00", exclude_categories=("Cs",)), max_size=12).filter(
        lambda s: not s.startswith(("~", "-"))
    ),
    st.sampled_from(("--bogus", "-x", "--", "-", "--help", "-h", "--=", "@", "..", ".")),
)
JUNK_TAIL = st.one_of(st.just([]), st.just([]), st.just([]), st.lists(JUNK_TOKEN, min_size=1, max_size=3))


def _ints(lo: int, hi: int, junk: tuple = INT_JUNK) -> st.SearchStrategy:
    numbers = st.integers(lo, hi).map(str)
    return st.one_of(numbers, st.sampled_from(junk)) if junk else numbers


def _floats(lo: float, hi: float) -> st.SearchStrategy:
    return st.one_of(
        st.floats(lo, hi).map(repr), st.integers(int(lo), int(hi)).map(str), st.sampled_from(FLOAT_JUNK)
    )


def _opt(flag: str, values: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.just([]), values.map(lambda v: [flag, v]))


def _switch(flag: str) -> st.SearchStrategy:
    return st.sampled_from(([], [flag]))


def _argv(*parts: st.SearchStrategy) -> st.SearchStrategy:
    return st.tuples(*parts).map(lambda groups: [tok for group in groups for tok in group])


SEED = st.one_of(st.integers(0, 2**31).map(str), st.sampled_from(("-5", str(2**63), str(2**70), "abc")))
_GENERATE_COMMON = (
    st.sampled_from(
        [["--pipeline", "@PIPE"]] * 8
        + [["--pipeline", p] for p in ("@MISSING", "@FILE", "@DIR", "@HUB")]
        + [[]]
    ),
    _opt("-n", _ints(1, 3, ("0", "-1", "abc", "٣", "-" + str(2**70)))),
    _opt("--seed", SEED),
    _opt("--steps", _ints(1, 4, ("0", "5", "-1", str(2**70), "x"))),
    _opt("--guidance_scale", _floats(-2, 30)),
    _opt("--negative_prompt", ARG_TEXT),
    _opt("--device", st.sampled_from(DEVICES)),
    _opt("--backend", st.sampled_from(("pytorch", "onnxruntime", "tf"))),
    st.sampled_from(([],) * 5 + (["--int8"],)),
    _opt("--num_threads", _ints(1, 2, ("0", "-3", "100000", str(2**70), "x"))),
)
GENERATE_SINGLE = _argv(
    st.just(["generate"]),
    ARG_TEXT.map(lambda p: [p]),
    *_GENERATE_COMMON,
    st.sampled_from(
        [["-o", "@OUT"]] * 4 + [["--out", "@OUT"], ["-o", "@FILE"], ["-o", "@DIR"], ["-o", "@FILE_CHILD"], []]
    ),
    JUNK_TAIL,
)
GENERATE_CATALOG = _argv(
    st.just(["generate"]),
    *_GENERATE_COMMON,
    st.sampled_from(
        [
            ["--prompts", p]
            for p in ("@CSV", "@CSV", "@JSONL", "@JSONL", "@TXT", "@MISSING", "@DIR", "@DATASET", "@FILE")
        ]
    ),
    st.sampled_from([["--out", "@OUT"]] * 4 + [["--out", "@FILE"], ["--out", "@DIR"], []]),
    _opt("--prompt_column", st.sampled_from(("text", "prompt", "missing", ""))),
    _opt("--split", st.sampled_from(("train", "test", "nope"))),
    _opt("--batch_size", _ints(1, 4, ("0", "-1", "x"))),
    _opt("--on_bad_row", st.sampled_from(("error", "skip", "ignore"))),
    _switch("--overwrite"),
    st.sampled_from((["--no_progress"],) * 4 + ([],)),
    JUNK_TAIL,
)
EVAL = _argv(
    st.just(["eval"]),
    st.sampled_from([["--pipeline", "@PIPE"]] * 6 + [["--pipeline", "@MISSING"], ["--pipeline", "@HUB"], []]),
    st.sampled_from(
        [["--dataset", "@DATASET"]] * 6
        + [["--dataset", d] for d in ("@MISSING", "@FILE", "@DIR", "@HUB")]
        + [[]]
    ),
    # never empty and never fid/kid/precision_recall: those load the Inception network (expensive, not wrong)
    st.lists(st.sampled_from(CHEAP_METRICS + ("bogus", "FID")), min_size=1, max_size=3, unique=True).map(
        lambda m: ["--metrics", ",".join(m)]
    ),
    st.sampled_from(
        [["--output_dir", "@OUT"]] * 4 + [["--output_dir", "@FILE"], ["--output_dir", "@FILE_CHILD"]]
    ),
    _opt("--split", st.sampled_from(("test", "train", "test,train", "bogus", "test,test", "", ","))),
    _opt("--num_images", _ints(2, 5, ("1", "0", "-1", str(10**9), "x"))),
    _opt("--batch_size", _ints(1, 4, ("0", "-2", str(10**9), "x"))),
    _opt("--steps", _ints(1, 4, ("0", "5", "x"))),
    _opt("--guidance_scale", _floats(-2, 30)),
    _opt("--clip_model", st.sampled_from(("none", "@MISSING", "@PIPE", "@FILE"))),
    _opt("--classifier", st.sampled_from(("@MISSING", "@DIR", "@FILE"))),
    _opt("--image_column", st.sampled_from(("image", "text", "color", "bogus"))),
    _opt("--caption_column", st.sampled_from(("text", "image", "color", "bogus"))),
    _opt("--seed", SEED),
    _opt("--device", st.sampled_from(DEVICES)),
    JUNK_TAIL,
)
KEY_ID = st.one_of(
    st.sampled_from(("dup", "ci-bot", "a" * 64, "a" * 65, "-x", "", "key.1", "ключ")), JUNK_TOKEN
)
KEYS = _argv(
    st.just(["keys"]),
    _opt(
        "--api-keys",
        st.sampled_from(("@KEYS", "@KEYS", "@KEYS_EXISTING", "@FILE", "@DIR", "@BADJSON", "@FILE_CHILD")),
    ),
    st.one_of(
        _argv(
            st.just(["add"]),
            _opt("--id", KEY_ID),
            _opt(
                "--scopes",
                st.lists(st.sampled_from(("generate", "monitor", "admin", "", " generate ")), max_size=3).map(
                    ",".join
                ),
            ),
        ),
        _argv(st.just(["revoke"]), KEY_ID.map(lambda k: [k])),
        st.just(["list"]),
        st.just([]),
    ),
    JUNK_TAIL,
)
BUILD_DATASET = _argv(
    st.just(["build-dataset"]),
    st.sampled_from([["fashion-catalog"]] * 5 + [["mnist"], []]),
    st.sampled_from([["--out", "@OUT"]] * 4 + [["--out", "@FILE"], ["--out", "@DIR"], []]),
    _ints(1, 4, ("0", "-1", "abc")).map(lambda v: ["--limit", v]),  # always small: a full build takes minutes
    _opt("--resolution", st.sampled_from(("32", "64", "48", "abc"))),
    _opt("--seed", SEED),
    _opt("--num_workers", st.sampled_from(("1", "0", "-1", "abc"))),  # >1 forks this (threaded) process
    _opt("--source_dir", st.sampled_from(("@MISSING", "@DIR", "@FILE"))),
    _switch("--parquet"),
    _switch("--private"),
    _switch("--overwrite"),
    JUNK_TAIL,
)
_EXPORT_BY_MODE = {
    # refused before anything is exported: --out exists, a bad opset, calibration without --int8, no pipeline
    "exists": _argv(
        st.just(["export", "onnx", "--pipeline", "@PIPE"]),
        st.sampled_from((["--out", "@FILE"], ["--out", "@DIR"])),
        _opt("--opset", _ints(17, 22)),
        _switch("--int8"),
        JUNK_TAIL,
    ),
    "bad_opset": _argv(
        st.just(["export", "onnx", "--pipeline", "@PIPE", "--out", "@OUT", "--opset"]),
        st.sampled_from(BAD_OPSETS).map(lambda v: [v]),
        _opt("--exporter", st.sampled_from(("dynamo", "torchscript"))),
    ),
    "calib_no_int8": st.just(
        ["export", "onnx", "--pipeline", "@PIPE", "--out", "@OUT", "--calibration_prompts", "@CSV"]
    ),
    "no_pipeline": st.sampled_from(("@MISSING", "@FILE", "@DIR", "@HUB")).map(
        lambda p: ["export", "onnx", "--pipeline", p, "--out", "@OUT"]
    ),
    "argparse": st.sampled_from(
        (
            ["export"],
            ["export", "tflite"],
            ["export", "onnx"],
            ["export", "onnx", "--out", "@OUT", "--exporter", "tf"],
            ["export", "onnx", "--out"],
        )
    ),
    # a real export (torchscript: ~5 s; the dynamo exporter takes ~20 s), drawn about once in 100 cases
    "full": _argv(
        st.just(["export", "onnx", "--pipeline", "@PIPE", "--out", "@OUT", "--exporter", "torchscript"]),
        _opt("--opset", _ints(17, 22, ())),
        st.sampled_from(([], ["--int8"], ["--int8", "--calibration_prompts", "@CSV"])),
    ),
}
EXPORT_MODES = (
    ("exists",) * 30
    + ("bad_opset",) * 30
    + ("calib_no_int8",) * 15
    + ("no_pipeline",) * 12
    + ("argparse",) * 12
    + ("full",)
)
EXPORT = st.sampled_from(EXPORT_MODES).flatmap(lambda mode: _EXPORT_BY_MODE[mode])
RANDOM_ARGV = _argv(
    st.sampled_from(
        ([], ["generate"], ["keys"], ["eval"], ["export"], ["build-dataset"], ["--help"], ["-h"])
    ),
    st.lists(JUNK_TOKEN, max_size=5),
)


def _prompt_file_bytes() -> st.SearchStrategy:
    values = st.one_of(
        st.text(max_size=20),
        st.just(""),
        st.just("red " * 90),
        st.integers(),
        st.none(),
        st.just("\ufeffbom"),
        st.just('a,b\n"c'),
    )
    csv_rows = st.tuples(
        st.sampled_from(("text", "prompt", "", "text,extra", "\ufefftext")), st.lists(values, max_size=6)
    )

    def to_csv(t):
        buf = io.StringIO()
        buf.write(t[0] + "\n")
        writer = csv.writer(buf)
        for v in t[1]:
            writer.writerow([] if v is None else [v])
        return buf.getvalue().encode("utf-8")

    jsonl_rows = st.lists(
        st.one_of(
            values.map(lambda v: json.dumps({"text": v}).encode()),
            st.sampled_from(
                (
                    b"{",
                    b"[1, 2]",
                    b"5",
                    b"null",
                    b"",
                    b'{"prompt": "x"}',
                    b"\xff\xfe{}",
                    b'{"text": "a\\ud800"}',
                )
            ),
        ),
        max_size=6,
    )
    return st.one_of(
        csv_rows.map(to_csv),
        jsonl_rows.map(lambda lines: b"\n".join(lines) + b"\n"),
        st.binary(max_size=48),
        st.just(b""),
    )


CLI_CASES = st.fixed_dictionaries(
    {
        "argv": st.one_of(
            GENERATE_SINGLE, GENERATE_CATALOG, EVAL, KEYS, BUILD_DATASET, EXPORT, RANDOM_ARGV
        ).filter(lambda argv: not argv or argv[0] != "serve"),  # `prodimg serve` blocks until killed
        "prompts_file": _prompt_file_bytes(),
    }
)


def _resolve_token(token: str, cdir: Path, ctx: FuzzContext, case: dict) -> str:
    from ..serving.keys import add_key

    if token not in CLI_PLACEHOLDERS:
        return token
    if token == "@PIPE":
        return str(ctx.pipeline_dir)
    if token == "@DATASET":
        return str(ctx.dataset_dir)
    if token == "@HUB":
        return "someone/prodimg-model"  # a Hub id: the run is offline
    path = {
        "@OUT": cdir / "out",
        "@MISSING": cdir / "missing" / "thing",
        "@KEYS": cdir / "keys.json",
        "@FILE": cdir / "file.txt",
        "@FILE_CHILD": cdir / "file.txt" / "child",
        "@DIR": cdir / "dir",
        "@KEYS_EXISTING": cdir / "keys_existing.json",
        "@BADJSON": cdir / "bad.json",
        "@CSV": cdir / "prompts.csv",
        "@JSONL": cdir / "prompts.jsonl",
        "@TXT": cdir / "prompts.txt",
    }[token]
    if token in ("@FILE", "@FILE_CHILD") and not (cdir / "file.txt").exists():
        (cdir / "file.txt").write_text("not json, not an image\n")
    elif token == "@DIR":
        path.mkdir(exist_ok=True)
    elif token == "@KEYS_EXISTING" and not path.exists():
        add_key(path, "dup", ["generate"])
    elif token == "@BADJSON":
        path.write_text("{")
    elif token in ("@CSV", "@JSONL", "@TXT"):
        path.write_bytes(case["prompts_file"])
    return str(path)


@contextlib.contextmanager
def _cli_environment(ctx: FuzzContext, cdir: Path):
    """Run in the case folder, with the default pipeline and keys file pointed inside the fuzz folders, and
    restore what a command may change in this process (threads, logging, working directory)."""
    import torch

    from ..commands import generate

    cwd, threads = os.getcwd(), torch.get_num_threads()
    keys_env = os.environ.get("PRODIMG_API_KEYS")
    default_dir = generate.default_pipeline_dir
    root, catalog_logger = logging.getLogger(), logging.getLogger("prodimg.data.catalog")
    handlers, root_level, catalog_level = root.handlers[:], root.level, catalog_logger.level
    try:
        os.chdir(cdir)
        os.environ["PRODIMG_API_KEYS"] = str(cdir / "env_keys.json")
        generate.default_pipeline_dir = lambda: ctx.pipeline_dir
        yield
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
        generate.default_pipeline_dir = default_dir
        if keys_env is None:
            os.environ.pop("PRODIMG_API_KEYS", None)
        else:
            os.environ["PRODIMG_API_KEYS"] = keys_env
        root.handlers[:] = handlers
        root.setLevel(root_level)
        catalog_logger.setLevel(catalog_level)


def _check_cli_success(stdout: str, cdir: Path) -> str | None:
    """Single-prompt ``generate`` prints the PNG files it wrote: they must be IMAGE_SIZE-pixel PNGs."""
    from PIL import Image

    for line in stdout.splitlines():
        if line.endswith(".png") and not line.startswith("wrote "):
            path = Path(line) if Path(line).is_absolute() else cdir / line
            try:
                with Image.open(path) as im:
                    im.load()
                    if im.format != "PNG" or im.size != (IMAGE_SIZE, IMAGE_SIZE):
                        return f"{line}: {im.format} {im.size}"
            except Exception as err:  # noqa: BLE001
                return f"printed {line} but it is not a readable PNG: {describe_error(err)}"
    return None


def run_cli_case(ctx: FuzzContext, case: dict) -> Outcome:
    from .. import cli

    with ctx.case_dir() as cdir, _cli_environment(ctx, cdir):
        argv = [_resolve_token(tok, cdir, ctx, case) for tok in case["argv"]]
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                rc = cli.main(argv)
        except SystemExit as exc:  # argparse: 0 for --help, 2 for a usage error
            rc = 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
        except Exception as exc:  # noqa: BLE001 - an exception out of main() is a traceback for the user
            return _unexpected(f"traceback ({type(exc).__name__})", describe_error(exc))
        stderr = err.getvalue()
        if "Traceback (most recent call last)" in stderr:
            return _unexpected("traceback on stderr", _short(stderr[stderr.index("Traceback") :]))
        if rc not in (0, 2):
            return _unexpected(f"exit {rc}", _short(stderr[-400:]))
        if rc == 2:
            if not stderr.strip():
                return _unexpected("exit 2 without a message")
            return _expected("exit 2", _short(stderr.strip().splitlines()[-1], 200))
        problem = _check_cli_success(out.getvalue(), cdir) if argv[:1] == ["generate"] else None
        return _unexpected("wrong output", problem) if problem else _ok("exit 0")


# ============================================================================ surface 3: the dataset loader
CAPTION = st.one_of(
    _tag("str", st.text(max_size=20)),
    _tag("str", st.text(max_size=20)),
    _tag("str", st.text(max_size=20)),
    _tag("list", st.lists(st.text(max_size=8), min_size=1, max_size=3)),
    _tag("surrogate", TEXT_WITH_SURROGATE),
    _tag("empty_list"),
    _tag("int", st.integers()),
    _tag("float", st.floats()),
    _tag("null"),
    _tag("bool", st.booleans()),
    _tag("dict"),
    _tag("mixed_list"),
    _tag("missing"),
)
FILE_NAME_KINDS = ("ok",) * 8 + (
    "nested",
    "abs",
    "dotdot",
    "missing",
    "int",
    "empty",
    "unicode",
    "upper",
    "dup",
)
LOADER_ROW = st.fixed_dictionaries(
    {
        "image": st.sampled_from(IMAGE_KINDS),
        "size": st.tuples(st.integers(1, 40), st.integers(1, 40)),
        "caption": CAPTION,
        "file_name": st.sampled_from(FILE_NAME_KINDS),
    }
)
JUNK_LINES = (
    b"{",
    b"[1, 2]",
    b'"text"',
    b"5",
    b"null",
    b"",
    b"   ",
    b"\xef\xbb\xbf{}",
    b'{"file_name": "x.png"}',
    b"\xff\xfe{}",
    b'{"file_name": "img_0.png", "text": "a", "text": 5}',
)
GOOD_IMAGE_KINDS = tuple(k for k in IMAGE_KINDS if k not in DEFINITELY_BAD_IMAGES | {"truncated", "tiny"})
LOADER_ROW_OK = st.fixed_dictionaries(
    {
        "image": st.sampled_from(GOOD_IMAGE_KINDS),
        "size": st.tuples(st.integers(8, 40), st.integers(8, 40)),
        "caption": st.one_of(
            _tag("str", st.text(max_size=20)),
            _tag("list", st.lists(st.text(max_size=8), min_size=1, max_size=3)),
        ),
        "file_name": st.sampled_from(("ok", "ok", "ok", "nested", "unicode")),
    }
)
LOADER_FIELDS = {
    "source": (st.sampled_from(("imagefolder",) * 4 + ("parquet", "disk", "memory")),) * 2,
    "rows": (st.lists(LOADER_ROW_OK, min_size=1, max_size=5), st.lists(LOADER_ROW, max_size=6)),
    "junk_lines": (
        st.just([]),
        st.lists(st.tuples(st.integers(0, 6), st.sampled_from(JUNK_LINES)), min_size=1, max_size=2),
    ),
    "extra_files": (
        st.just([]),
        st.lists(
            st.sampled_from(
                ("stray.png", "notes.txt", "sub/stray.jpg", "metadata.csv", "sub/metadata.jsonl")
            ),
            min_size=1,
            max_size=2,
            unique=True,
        ),
    ),
    "image_repr": (st.sampled_from(("feature", "feature", "binary", "path")), st.just("int")),
    "caption_type": (st.sampled_from(("str", "str", "list")), st.sampled_from(("int", "float", "bool"))),
    "options": (
        st.fixed_dictionaries(
            {
                "skip_bad": st.just(True),
                "max_bad_fraction": st.sampled_from((1.0, 0.5)),
                "validate": st.just(True),
                "decode_check": st.sampled_from((True, True, False)),
                "min_image_size": st.sampled_from((8, 1)),
                "max_image_pixels": st.just(89_478_485),
                "max_samples": st.sampled_from((None, None, 1, 3)),
                "split": st.just("train"),
                "image_column": st.just("image"),
                "caption_column": st.just("text"),
            }
        ),
        st.fixed_dictionaries(
            {
                "skip_bad": st.booleans(),
                "max_bad_fraction": st.sampled_from((1.0, 1.0, 0.5, 0.0, 0.01, -0.1, 1.5, NAN)),
                "validate": st.sampled_from((True, True, True, False)),
                "decode_check": st.sampled_from((True, True, False)),
                "min_image_size": st.sampled_from((8, 8, 1, 30)),
                "max_image_pixels": st.sampled_from((89_478_485, 89_478_485, 600)),
                "max_samples": st.sampled_from((None, None, None, 0, 1, 3, -1)),
                "split": st.sampled_from(("train",) * 5 + ("test", "")),
                "image_column": st.sampled_from(("image",) * 5 + ("img",)),
                "caption_column": st.sampled_from(("text",) * 5 + ("caption", "file_name")),
            }
        ),
    ),
}
LOADER_CASES = mixed_cases(LOADER_FIELDS)


def _caption_value(spec: tuple, index: int) -> Any:
    tag = spec[0]
    return {"empty_list": [], "null": None, "dict": {"a": 1}, "mixed_list": ["p", 1]}.get(
        tag, spec[1] if len(spec) > 1 else None
    )


def _write_image_file(folder: Path, name: str, row: dict, index: int) -> None:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if row["image"] == "directory":
        path.mkdir(exist_ok=True)
        return
    data = image_bytes(row["image"], row["size"], index)
    if data is not None:
        path.write_bytes(data)


def build_imagefolder(folder: Path, case: dict) -> int:
    """Write the case's imagefolder; return how many rows are surely bad and surely loaded as rows."""
    folder.mkdir(parents=True, exist_ok=True)
    lines: list[bytes] = []
    names: list[str] = []
    surely_bad = 0
    opts = case["options"]
    for i, row in enumerate(case["rows"]):
        ext = _EXTENSIONS.get(row["image"], "png")
        kind = row["file_name"]
        real = {"nested": f"sub/img_{i}.{ext}", "unicode": f"ímg ✓ {i}.{ext}"}.get(kind, f"img_{i}.{ext}")
        _write_image_file(folder, real, row, i)
        names.append(real)
        file_name: Any = {
            "ok": real,
            "nested": real,
            "unicode": real,
            "abs": str(folder / real),
            "dotdot": f"../{real}",
            "missing": f"nope_{i}.png",
            "int": i,
            "empty": "",
            "upper": real.upper(),
            "dup": names[0],
        }[kind]
        record: dict[str, Any] = {"file_name": file_name}
        if row["caption"][0] != "missing":
            record["text"] = _caption_value(row["caption"], i)
        lines.append(json.dumps(record).encode("utf-8"))
        w, h = (2, 3) if row["image"] == "tiny" else row["size"]
        bad_image = (
            row["image"] in DEFINITELY_BAD_IMAGES
            or min(w, h) < opts["min_image_size"]
            or (w * h > opts["max_image_pixels"] and row["image"] not in ("truncated",))
        )
        if kind in ("ok", "nested", "unicode") and bad_image:
            surely_bad += 1
    for position, junk in sorted(case["junk_lines"], key=lambda t: -t[0]):
        lines.insert(min(position, len(lines)), junk)
    for extra in case["extra_files"]:
        path = folder / extra
        path.parent.mkdir(parents=True, exist_ok=True)
        if extra.endswith((".png", ".jpg")):
            path.write_bytes(image_bytes("png" if extra.endswith("png") else "jpeg", (12, 12)))
        elif extra.endswith("metadata.jsonl"):
            path.write_bytes(b'{"file_name": "stray.jpg", "text": "nested metadata"}\n')
        elif extra.endswith(".csv"):
            path.write_text("file_name,text\nimg_0.png,from csv\n")
        else:
            path.write_text("notes\n")
    (folder / "metadata.jsonl").write_bytes(b"\n".join(lines) + (b"\n" if lines else b""))
    return surely_bad


def _table_text(text: str) -> str:
    return text.encode("utf-8", "replace").decode()  # an Arrow string cannot hold a lone surrogate


def build_table(folder: Path, case: dict):
    """A ``datasets.Dataset`` of the case's rows, one type per column (files it names go in ``folder``)."""
    from datasets import Dataset, Features, Sequence, Value
    from datasets import Image as ImageFeature

    folder.mkdir(parents=True, exist_ok=True)
    images, captions = [], []
    ctype, irepr = case["caption_type"], case["image_repr"]
    for i, row in enumerate(case["rows"]):
        name = f"img_{i}.png"
        data = image_bytes(row["image"], row["size"], i)
        if irepr == "feature":
            images.append(None if row["image"] == "missing" and i % 2 else {"bytes": data, "path": name})
        elif irepr == "binary":
            images.append(data)
        elif irepr == "path":
            _write_image_file(folder, name, row, i)
            images.append(name if row["image"] != "missing" or i % 2 else None)
        else:
            images.append(i * 7919)
        tag, value = row["caption"][0], _caption_value(row["caption"], i)
        if tag in ("null", "missing"):
            captions.append(None)
        elif ctype == "str":
            captions.append(_table_text(value if isinstance(value, str) else str(value)))
        elif ctype == "list":
            items = value if isinstance(value, list) else [] if tag == "empty_list" else [value]
            captions.append([_table_text(v if isinstance(v, str) else str(v)) for v in items])
        elif ctype == "int":  # an int64 column: a drawn int outside its range cannot be stored (not a loader case)
            ok = isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63
            captions.append(value if ok else i)
        elif ctype == "float":
            ok = isinstance(value, float) or isinstance(value, int) and abs(value) < 2**1000
            captions.append(float(value) if ok else i / 3)
        else:
            captions.append(bool(i % 2))
    caption_feature = {
        "str": Value("string"),
        "list": Sequence(Value("string")),
        "int": Value("int64"),
        "float": Value("float64"),
        "bool": Value("bool"),
    }[ctype]
    image_feature = {
        "feature": ImageFeature(),
        "binary": Value("binary"),
        "path": Value("string"),
        "int": Value("int64"),
    }[irepr]
    features = Features({"image": image_feature, "text": caption_feature})
    return Dataset.from_dict({"image": images, "text": captions}, features=features)


_LOCATION_WORDS = ("row", "line", "column", "split", "file", "max_bad_fraction", "empty")


def _names_a_location(message: str, folder: Path) -> bool:
    low = message.lower()
    return any(word in low for word in _LOCATION_WORDS) or str(folder) in message


def _check_rows_load(ds, opts: dict, base_dir: Path, skip: set[int] = frozenset()) -> str | None:
    """Every row the loader kept must come out of ``ProductImageDataset`` as (3, 16, 16) in [-1, 1] + text."""
    from ..data.loading import ProductImageDataset

    keep = [i for i in range(len(ds)) if i not in skip]
    if not keep:
        return None
    items = ProductImageDataset(
        ds.select(keep), IMAGE_SIZE, opts["image_column"], opts["caption_column"], base_dir=base_dir
    )
    for i in range(len(items)):
        try:
            item = items[i]
        except ValueError as err:
            if opts["validate"] and opts["decode_check"]:
                return f"row {keep[i]} passed validation but does not load: {describe_error(err)}"
            if f"row {i}" not in str(err):
                return f"a row that does not load is not named: {describe_error(err)}"
            continue
        x = item["pixel_values"]
        if (
            tuple(x.shape) != (3, IMAGE_SIZE, IMAGE_SIZE)
            or not bool(x.isfinite().all())
            or x.min() < -1
            or x.max() > 1
        ):
            return f"row {keep[i]}: pixel_values {tuple(x.shape)} in [{float(x.min())}, {float(x.max())}]"
        if not isinstance(item["text"], str):
            return f"row {keep[i]}: text is a {type(item['text']).__name__}"
    return None


def run_loader_case(ctx: FuzzContext, case: dict) -> Outcome:
    from ..data.loading import BadDataError, load_image_text_dataset, validate_image_text_dataset

    opts = dict(case["options"])
    with ctx.case_dir() as cdir:
        data_dir, surely_bad = cdir / "data", None
        try:
            if case["source"] == "memory":
                ds = build_table(data_dir, case)
                report = validate_image_text_dataset(
                    ds,
                    opts["image_column"],
                    opts["caption_column"],
                    min_image_size=opts["min_image_size"],
                    max_image_pixels=opts["max_image_pixels"],
                    decode=opts["decode_check"],
                    base_dir=data_dir,
                )
                if len(ds) - report.num_bad < 0:
                    return _unexpected("inconsistent report", f"{report.num_bad} bad of {len(ds)}")
                problem = _check_rows_load(
                    ds, dict(opts, validate=True), data_dir, {b.index for b in report.bad_rows}
                )
                return _unexpected("wrong rows", problem) if problem else _ok(f"{report.num_bad} bad")
            kwargs = {
                key: opts[key]
                for key in (
                    "skip_bad",
                    "max_bad_fraction",
                    "validate",
                    "min_image_size",
                    "max_image_pixels",
                    "max_samples",
                    "split",
                    "image_column",
                    "caption_column",
                )
            }
            kwargs["decode_check"] = opts["decode_check"]
            if case["source"] == "imagefolder":
                surely_bad = build_imagefolder(data_dir, case)
                kwargs["train_data_dir"] = str(data_dir)
            else:
                table = build_table(data_dir, case)
                if case["source"] == "parquet":
                    table.to_parquet(str(data_dir / "train.parquet"))
                else:
                    table.save_to_disk(str(data_dir / "disk"))
                    data_dir = data_dir / "disk"
                kwargs["dataset_name"] = str(data_dir)
            ds, report = load_image_text_dataset(
                cache_dir=str(cdir / "hf-cache"), return_report=True, **kwargs
            )
        except (BadDataError, ValueError, FileNotFoundError) as err:
            if not _names_a_location(str(err), cdir):
                return _unexpected("error names no row, file or column", describe_error(err))
            return _expected(type(err).__name__)
        except Exception as err:  # noqa: BLE001
            return _unexpected(type(err).__name__, describe_error(err))
        if opts["validate"]:
            if len(ds) != report.num_rows - report.num_bad:
                return _unexpected(
                    "rows not dropped", f"{len(ds)} rows kept of {report.num_rows}, {report.num_bad} bad"
                )
            if report.num_bad and (not opts["skip_bad"] or report.bad_fraction > opts["max_bad_fraction"]):
                return _unexpected("bad rows accepted", f"{report.num_bad} bad rows with options {opts}")
            if surely_bad is not None and opts["max_samples"] is None and report.num_bad < surely_bad:
                return _unexpected(
                    "bad rows missed", f"{report.num_bad} bad rows reported, {surely_bad} made bad"
                )
        try:
            problem = _check_rows_load(ds, opts, data_dir)
        except Exception as err:  # noqa: BLE001
            return _unexpected("loading a kept row failed", describe_error(err))
        return _unexpected("wrong rows", problem) if problem else _ok(f"{len(ds)} rows")


# ============================================================================ surface 4: the HTTP API
GENERATIONS = "/v1/images/generations"
ROUTES = {"/": {"GET"}, "/healthz": {"GET"}, "/readyz": {"GET"}, "/metrics": {"GET"}, GENERATIONS: {"POST"}}
PUBLIC = {"/", "/healthz"}
ROUTE_SCOPE = {"/readyz": "monitor", "/metrics": "monitor", GENERATIONS: "generate"}
METHODS = ("GET", "POST", "POST", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "FOO")
SHORT_TEXT = st.text(max_size=15)
JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
_FIELDS = {
    "prompt": st.one_of(
        SHORT_TEXT,
        SHORT_TEXT,
        SHORT_TEXT,
        st.sampled_from((" ", "\t\n", "\u3000", "\u200b")),
        st.just("word " * 80),
        st.just("a" * 2001),
        TEXT_WITH_SURROGATE,
        JSON_VALUE,
    ),
    "prompts": st.one_of(
        st.lists(SHORT_TEXT, min_size=1, max_size=4),
        st.lists(SHORT_TEXT, min_size=1, max_size=4),
        st.lists(SHORT_TEXT, max_size=18),
        st.lists(JSON_VALUE, max_size=3),
        JSON_VALUE,
    ),
    "negative_prompt": st.one_of(SHORT_TEXT, st.just(""), st.just("blurry " * 80), JSON_VALUE),
    "n": st.one_of(
        st.integers(1, 4),
        st.integers(1, 4),
        st.integers(-3, 20),
        st.sampled_from((10**30, 2.0, True, "2", None)),
    ),
    "seed": st.one_of(
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**32 - 1),
        st.sampled_from((-1, 2**32, 2**64, 1.5, "7", None, True)),
    ),
    "steps": st.one_of(
        st.integers(1, 4), st.integers(1, 4), st.sampled_from((0, 5, -1, None, 2.5, "2", True))
    ),
    "guidance_scale": st.one_of(
        st.floats(0, 20),
        st.floats(0, 20),
        st.integers(0, 20),
        st.sampled_from((NAN, INF, -INF, -0.1, 20.5, True, "1.5", None)),
    ),
    "response_format": st.one_of(
        st.sampled_from(("b64_json", "png")),
        st.sampled_from(("b64_json", "png")),
        st.sampled_from(("PNG", "url", "", None, 1)),
    ),
}
_OPTIONAL = {k: v for k, v in _FIELDS.items() if k not in ("prompt", "prompts")}
_OPTIONAL_VALID = {
    "negative_prompt": st.text(max_size=15),
    "n": st.integers(1, 4),
    "seed": st.integers(0, 2**32 - 1),
    "steps": st.integers(1, 4),
    "guidance_scale": st.one_of(st.floats(0, 20), st.integers(0, 20)),
    "response_format": st.sampled_from(("b64_json", "b64_json", "png")),
}
GENERATION_OBJECT = st.tuples(
    st.one_of(
        st.fixed_dictionaries({"prompt": _FIELDS["prompt"]}, optional=_OPTIONAL),
        st.fixed_dictionaries({"prompts": _FIELDS["prompts"]}, optional=_OPTIONAL),
        st.fixed_dictionaries({}, optional=_FIELDS),
    ),
    st.one_of(
        st.just({}), st.just({}), st.just({}), st.dictionaries(st.text(max_size=8), JSON_VALUE, max_size=2)
    ),
).map(lambda t: {**t[1], **t[0]})


def _encode_json(obj: Any, ascii_only: bool) -> bytes:
    return json.dumps(obj, ensure_ascii=ascii_only, allow_nan=True).encode("utf-8", "surrogatepass")


RAW_BODIES = (
    b"",
    b"{",
    b"null",
    b"[]",
    b'{"prompt": "red dress", "n": 1e400}',
    b"[" * 5000 + b"]" * 5000,
    b'\xef\xbb\xbf{"prompt": "red dress"}',
    b'{"prompt": "red dress"}garbage',
    b'{"prompt": "a\\ud800"}',
    b'{"prompt": "red dress", "guidance_scale": NaN}',
    b'{"prompt": "red dress", "seed": 1' + b"0" * 400 + b"}",
    b'{"prompt": "tab\there"}',
    b'{"prompt": "\\u0000"}',
    b"prompt=red+dress",
    b'{"prompt": "red dress", "prompt": "blue shirt"}',
    b'{"prompts": ["a", "b"], "n": 8}',
)
HTTP_BODY = st.one_of(
    st.tuples(GENERATION_OBJECT, st.booleans()).map(lambda t: _encode_json(*t)),
    st.tuples(GENERATION_OBJECT, st.booleans()).map(lambda t: _encode_json(*t)),
    st.tuples(GENERATION_OBJECT, st.booleans()).map(lambda t: _encode_json(*t)),
    JSON_VALUE.map(lambda v: _encode_json(v, True)),
    st.binary(max_size=64),
    st.sampled_from(RAW_BODIES),
    st.integers(65_000, 66_000).map(lambda k: b'{"prompt": "' + b"a" * k + b'"}'),  # about the 64 KB limit
    st.none(),
)
_KNOWN_PATHS = tuple(ROUTES)
HTTP_PATH = st.one_of(
    st.just(GENERATIONS),
    st.just(GENERATIONS),
    st.just(GENERATIONS),
    st.sampled_from(_KNOWN_PATHS),
    st.sampled_from(_KNOWN_PATHS).map(lambda p: p.rstrip("/") + "/"),
    st.sampled_from(_KNOWN_PATHS).map(str.upper),
    st.sampled_from(_KNOWN_PATHS).map(lambda p: p + "?n=2&prompt=x"),
    st.sampled_from(_KNOWN_PATHS).map(lambda p: "/" + p),
    st.sampled_from(
        (
            "/%2e%2e/readyz",
            "/v1/images/generations%2F",
            "/v1/images/../../readyz",
            "/readyz#frag",
            "/v1/images",
            "/v1",
            "/docs",
            "/openapi.json",
            "/static/../metrics",
            "/%00",
            "/\u00e9",
        )
    ),
    st.text(max_size=20).map(lambda s: "/" + urllib.parse.quote(s, safe="")),
)
AUTH_KINDS = (
    "none",
    "gen",
    "gen",
    "gen",
    "mon",
    "all",
    "noscope",
    "revoked",
    "gen_lower",
    "gen_spaces",
    "gen_tab",
    "gen_truncated",
    "gen_extra",
    "basic",
    "bare",
    "random",
    "dup_bad_first",
    "dup_good_first",
    "empty",
)
LATIN1_TEXT = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40
)
HEADER_NAME = st.from_regex(r"[a-z][a-z0-9-]{0,15}", fullmatch=True).filter(
    lambda h: (
        h not in ("authorization", "content-length", "host", "transfer-encoding", "connection", "expect")
    )
)
SHORT_PROMPT = st.text(min_size=1, max_size=15).filter(str.strip)
VALID_GENERATION = st.tuples(
    st.one_of(
        st.fixed_dictionaries({"prompt": SHORT_PROMPT}, optional=_OPTIONAL_VALID),
        st.fixed_dictionaries(
            {"prompts": st.lists(SHORT_PROMPT, min_size=1, max_size=4)}, optional=_OPTIONAL_VALID
        ),
    ),
    st.booleans(),
).map(lambda t: _encode_json(*t))
HTTP_FIELDS = {
    "target": (
        st.one_of(
            st.just(("POST", GENERATIONS)),
            st.just(("POST", GENERATIONS)),
            st.just(("POST", GENERATIONS)),
            st.sampled_from((("GET", "/"), ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"))),
        ),
        st.tuples(st.sampled_from(METHODS), HTTP_PATH),
    ),
    "auth": (
        st.sampled_from(("all", "all", "gen", "gen_lower", "gen_spaces", "dup_good_first")),
        st.sampled_from(AUTH_KINDS),
    ),
    "auth_random": (LATIN1_TEXT, LATIN1_TEXT),
    "headers": (
        st.one_of(
            st.just([]),
            st.sampled_from(
                (
                    [("content-type", "text/plain")],
                    [("x-forwarded-for", "10.0.0.1")],
                    [("content-type", "application/x-www-form-urlencoded")],
                    [("cookie", "session=1")],
                )
            ),
        ),
        st.lists(st.tuples(HEADER_NAME, LATIN1_TEXT), min_size=1, max_size=3),
    ),
    "content_length": (st.none(), st.sampled_from(("abc", "", "99999999999", "1e3", "65537", "-1", "0"))),
    "body": (VALID_GENERATION, HTTP_BODY),
}
HTTP_CASES = mixed_cases(HTTP_FIELDS)


def _auth_headers(fx: HttpFixture, kind: str, random_text: str) -> list[tuple[str, bytes]]:
    gen = fx.keys["gen"]
    values = {
        "none": [],
        "gen": [f"Bearer {gen}"],
        "mon": [f"Bearer {fx.keys['mon']}"],
        "all": [f"Bearer {fx.keys['all']}"],
        "noscope": [f"Bearer {fx.keys['noscope']}"],
        "revoked": [f"Bearer {fx.keys['revoked']}"],
        "gen_lower": [f"bearer {gen}"],
        "gen_spaces": [f"Bearer   {gen}  "],
        "gen_tab": [f"Bearer\t{gen}"],
        "gen_truncated": [f"Bearer {gen[:-1]}"],
        "gen_extra": [f"Bearer {gen}x"],
        "basic": [f"Basic {gen}"],
        "bare": ["Bearer"],
        "random": [random_text],
        "dup_bad_first": ["Bearer nope", f"Bearer {gen}"],
        "dup_good_first": [f"Bearer {gen}", "Bearer nope"],
        "empty": [""],
    }[kind]
    return [("authorization", v.encode("latin-1")) for v in values]


def _authorised_scopes(fx: HttpFixture, headers: list[tuple[str, bytes]]) -> set[str]:
    """The scopes the request's (first) Authorization header grants, by the documented 'Bearer <key>' rule."""
    values = [v.decode("latin-1") for k, v in headers if k.lower() == "authorization"]
    if not values:
        return set()
    scheme, _, token = values[0].partition(" ")
    if scheme.lower() != "bearer":
        return set()
    return fx.scopes.get(token.strip(), set())


def _has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def expected_generation(fx: HttpFixture, body: bytes | None) -> tuple[bool, int, dict]:
    """``(valid, images, request)`` for a generation body by the documented schema and limits."""
    cfg = fx.config
    try:
        obj = json.loads((body or b"").decode("utf-8"))
    except (ValueError, RecursionError):
        return False, 0, {}
    if not isinstance(obj, dict) or set(obj) - {
        "prompt",
        "prompts",
        "negative_prompt",
        "n",
        "seed",
        "steps",
        "guidance_scale",
        "response_format",
    }:
        return False, 0, {}

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    def is_str(v):
        return isinstance(v, str) and not _has_surrogate(v)

    def too_long(text):
        return (
            len(text) > cfg.max_prompt_chars
            or len(fx.tokenizer(text, truncation=False, verbose=False)["input_ids"]) > fx.max_tokens
        )

    prompt, prompts, neg = obj.get("prompt"), obj.get("prompts"), obj.get("negative_prompt")
    n, g, fmt = obj.get("n", 1), obj.get("guidance_scale", 1.0), obj.get("response_format", "b64_json")
    if (prompt is not None and not is_str(prompt)) or (neg is not None and not is_str(neg)) or not is_int(n):
        return False, 0, {}
    if prompts is not None and not (isinstance(prompts, list) and all(is_str(p) for p in prompts)):
        return False, 0, {}
    if any(obj.get(k) is not None and not is_int(obj.get(k)) for k in ("seed", "steps")):
        return False, 0, {}
    if (
        isinstance(g, bool)
        or not isinstance(g, (int, float))
        or not isinstance(fmt, str)
        or fmt not in ("png", "b64_json")
    ):
        return False, 0, {}
    if (prompt is None) == (prompts is None):
        return False, 0, {}
    texts = [prompt] if prompt is not None else prompts
    if not 1 <= len(texts) <= cfg.max_prompts or any(not t.strip() or too_long(t) for t in texts):
        return False, 0, {}
    if (neg is not None and too_long(neg)) or not 1 <= n <= cfg.max_n:
        return False, 0, {}
    total = len(texts) * n
    steps, seed = obj.get("steps"), obj.get("seed")
    if total > cfg.max_images_per_request or (steps is not None and not 1 <= steps <= fx.max_steps):
        return False, 0, {}
    if (
        not math.isfinite(g)
        or not 0 <= g <= cfg.max_guidance_scale
        or (seed is not None and not 0 <= seed < 2**32)
    ):
        return False, 0, {}
    if fmt == "png" and total != 1:
        return False, 0, {}
    return True, total, obj


def _check_png(data: bytes) -> str | None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.format != "PNG" or im.size != (IMAGE_SIZE, IMAGE_SIZE):
                return f"{im.format} {im.size}"
    except Exception as err:  # noqa: BLE001
        return f"not a PNG: {describe_error(err)}"
    return None


def _check_http_success(resp, path: str, total: int, request: dict) -> str | None:
    if path == GENERATIONS:
        if request.get("response_format") == "png":
            if not resp.headers.get("content-type", "").startswith("image/png"):
                return f"content-type {resp.headers.get('content-type')}"
            return _check_png(resp.content)
        data = resp.json()
        items = data.get("data")
        if not isinstance(items, list) or len(items) != total:
            return f"expected {total} images, got {None if items is None else len(items)}"
        if request.get("seed") is not None and data.get("seed") != request["seed"]:
            return f"seed {data.get('seed')} != requested {request['seed']}"
        for item in items:
            problem = _check_png(base64.b64decode(item["b64_json"]))
            if problem:
                return problem
    elif path == "/healthz" and resp.json() != {"status": "ok"}:
        return f"healthz answered {resp.text[:100]!r}"
    elif path == "/readyz" and resp.json().get("status") != "ready":
        return f"readyz answered {resp.text[:100]!r}"
    return None


def run_http_case(ctx: FuzzContext, case: dict) -> Outcome:
    fx = ctx.http
    headers = _auth_headers(fx, case["auth"], case["auth_random"])
    headers += [(k, v.encode("latin-1")) for k, v in case["headers"]]
    if case["content_length"] is not None:
        headers.append(("content-length", case["content_length"].encode()))
    (method, target), body = case["target"], case["body"]
    try:
        request = fx.client.build_request(method, target, content=body, headers=headers)
    except Exception as err:  # noqa: BLE001 - the client refused to build it: nothing reached the service
        return _expected("not sendable", describe_error(err))
    path = urllib.parse.unquote(request.url.path)
    cl = request.headers.get("content-length")
    too_large = len(body or b"") > fx.config.max_body_bytes or (
        cl is not None and not (cl.strip().lstrip("-").isdigit() and int(cl) <= fx.config.max_body_bytes)
    )
    route_methods = ROUTES.get(path)
    granted = _authorised_scopes(fx, headers)
    total, parsed = 0, {}
    if too_large or route_methods is None:
        must = "refuse"
    elif method == "HEAD" and "GET" in route_methods:
        must = "either" if path in PUBLIC or ROUTE_SCOPE[path] in granted else "refuse"
    elif method not in route_methods:
        must = "refuse"
    elif path in PUBLIC:
        must = "succeed"
    elif ROUTE_SCOPE[path] not in granted:
        must = "refuse"
    elif path == GENERATIONS:
        valid, total, parsed = expected_generation(fx, body)
        must = "succeed" if valid else "refuse"
    else:
        must = "succeed"
    try:
        resp = fx.client.send(request)
    except Exception as err:  # noqa: BLE001
        return _unexpected(f"client error ({type(err).__name__})", describe_error(err))
    status = resp.status_code
    detail = f"{method} {target} -> {status} {resp.text[:300]!r}"
    if status >= 500:
        return _unexpected(str(status), detail)
    if 200 <= status < 300:
        if must == "refuse":
            label = (
                "unauthenticated success"
                if path not in PUBLIC and not granted
                else "invalid request accepted"
            )
            return _unexpected(label, detail)
        if method == "HEAD":
            return _ok(str(status))
        problem = _check_http_success(resp, path, total, parsed)
        return _unexpected("bad response", f"{problem}; {detail}") if problem else _ok(str(status))
    if must == "succeed":
        return _unexpected("valid request refused", detail)
    if 300 <= status < 400:
        if route_methods is not None:
            return _unexpected("redirect on an exact route", detail)
        return _expected(str(status))  # starlette's trailing-slash redirect: the target checks auth again
    if method != "HEAD":
        try:
            error = resp.json()["error"]
            if error["status"] != status or not error.get("message"):
                raise ValueError(error)
        except Exception:  # noqa: BLE001
            return _unexpected("error is not the documented JSON", detail)
    return _expected(str(status))


# ============================================================================ driver
SURFACE_CASES: dict[str, tuple[st.SearchStrategy, Callable[[FuzzContext, Any], Outcome]]] = {
    "pipeline": (PIPELINE_CASES, run_pipeline_case),
    "cli": (CLI_CASES, run_cli_case),
    "loader": (LOADER_CASES, run_loader_case),
    "http": (HTTP_CASES, run_http_case),
}


def run_case(surface: str, ctx: FuzzContext, case: Any, limit: float | None = None) -> Outcome:
    """Run one case of ``surface`` under its time limit and classify it (harness errors included)."""
    limit = TIME_LIMITS[surface] if limit is None else limit
    started = time.perf_counter()
    try:
        with fuzz_environment(), time_limit(limit):
            outcome = SURFACE_CASES[surface][1](ctx, case)
    except CaseTimeout as err:
        return _unexpected("timeout", str(err))
    except UnsatisfiedAssumption:
        raise
    except Exception as err:  # noqa: BLE001
        return _unexpected("harness error", describe_error(err, frames=6))
    if limit and time.perf_counter() - started > limit:
        return _unexpected("timeout", f"took {time.perf_counter() - started:.1f} s > {limit:g} s")
    return outcome


def run_profile(
    surface: str,
    max_examples: int,
    seed: int = 0,
    *,
    context: FuzzContext | None = None,
    limit: float | None = None,
    progress: Callable[[ProfileResult], None] | None = None,
) -> ProfileResult:
    """Draw up to ``max_examples`` cases of ``surface`` (reproducibly for ``seed``), run and classify each.

    Hypothesis may stop early when a strategy's space is exhausted; ``tried`` says how many ran. Pass a
    shared ``context`` to reuse fixtures between surfaces (else one is made and removed here).
    """
    if surface not in SURFACE_CASES:
        raise ValueError(f"unknown surface {surface!r}; choose from {SURFACES}")
    if isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1:
        raise ValueError(f"max_examples must be an int >= 1, got {max_examples!r}")
    strategy = SURFACE_CASES[surface][0]
    result = ProfileResult(surface, seed, max_examples)
    ctx = context if context is not None else FuzzContext()
    started = time.perf_counter()
    try:
        with fuzz_environment(), hypothesis_storage(ctx.root / "hypothesis"):
            ctx.prepare(surface)

            @settings(
                max_examples=max_examples,
                deadline=None,
                database=None,
                derandomize=False,
                suppress_health_check=list(HealthCheck),
                phases=(Phase.explicit, Phase.generate),
                verbosity=Verbosity.quiet,
                print_blob=False,
                report_multiple_bugs=False,
            )
            @hypothesis_seed(seed)
            @given(strategy)
            def _property(case):
                t0 = time.perf_counter()
                outcome = run_case(surface, ctx, case, limit)
                result.record(case, outcome, time.perf_counter() - t0)
                if progress is not None:
                    progress(result)

            _property()
    finally:
        result.seconds = time.perf_counter() - started
        if context is None:
            ctx.close()
    return result


def format_table(results: list[ProfileResult]) -> str:
    """The per-surface counts as a fixed-width table."""
    head = (
        f"{'surface':<10}{'tried':>8}{'ok':>8}{'expected':>10}{'unexpected':>12}{'seconds':>10}{'slowest':>9}"
    )
    rows = [head, "-" * len(head)]
    for r in results:
        rows.append(
            f"{r.surface:<10}{r.tried:>8}{r.ok:>8}{r.expected:>10}{r.unexpected:>12}{r.seconds:>10.1f}"
            f"{r.slowest_case_s:>9.1f}"
        )
    return "\n".join(rows)


__all__ = [
    "SURFACES",
    "CaseTimeout",
    "FuzzContext",
    "Outcome",
    "ProfileResult",
    "format_table",
    "run_case",
    "run_cli_case",
    "run_http_case",
    "run_loader_case",
    "run_pipeline_case",
    "run_profile",
    "time_limit",
]
