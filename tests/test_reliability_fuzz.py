"""Issue #9, part 1: property-based fuzzing (hypothesis) of the pipeline, the CLI, the dataset loader and the
HTTP API: the fast profile, and one regression test per bug the fuzzing found.

Every case must succeed (with a checked result) or fail the documented way: a ValueError/TypeError naming
the argument, exit code 2 with a message and no traceback, a loader error naming the row/line/file/column,
a 4xx JSON error. The long profile (10,000 cases per surface) is ``benchmarks/reliability_fuzz.py``.
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("hypothesis")

from prodimg.cli import main
from prodimg.data.loading import load_image_text_dataset
from prodimg.reliability.fuzz import (
    EMBEDS_INVALID,
    FuzzContext,
    image_bytes,
    make_embeds,
    run_case,
    run_profile,
)

FAST_PROFILE = {"pipeline": 150, "cli": 40, "loader": 100, "http": 150}


@pytest.fixture(scope="module")
def ctx():
    threads = torch.get_num_threads()
    torch.set_num_threads(
        1
    )  # as in the profiles: a thread pool makes the tiny model ~100x slower on a busy CPU
    try:
        with FuzzContext() as context:
            yield context
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("surface", list(FAST_PROFILE))
def test_fast_profile(ctx, surface):
    if surface == "http":
        pytest.importorskip("fastapi", reason="needs the serve extra")
    result = run_profile(surface, FAST_PROFILE[surface], seed=0, context=ctx)
    assert result.tried == FAST_PROFILE[surface]
    assert result.unexpected == 0, f"{result.labels}\n{result.describe_failures()}"
    assert result.ok and result.expected, result.labels  # both the success and the refusal paths ran


def test_profile_is_reproducible_and_writes_nothing_to_hypothesis_home(ctx, tmp_path):
    from hypothesis import configuration

    configuration.set_hypothesis_home_dir(tmp_path / "home")  # stands for ./.hypothesis
    try:
        a = run_profile("pipeline", 8, seed=3, context=ctx)
        b = run_profile("pipeline", 8, seed=3, context=ctx)
    finally:
        configuration.set_hypothesis_home_dir(None)
    assert a.labels == b.labels and a.tried == 8
    assert not (tmp_path / "home").exists()


# ---------------------------------------------------------------------- regressions: the pipeline
def test_pipeline_refuses_lone_surrogates(ctx):
    # found: TypeError "TextEncodeInput must be Union[...]" from the tokenizer, naming no argument
    with pytest.raises(ValueError, match="`prompt` item 0 is not valid Unicode"):
        ctx.pipe("a\ud800b")
    with pytest.raises(ValueError, match="`negative_prompt` item 1 is not valid Unicode"):
        ctx.pipe(["a", "b"], negative_prompt=["x", "\udcff"], guidance_scale=2.0)


@pytest.mark.parametrize("generator", [5, "abc", [5], [torch.Generator(), 7]])
def test_pipeline_refuses_a_generator_that_is_not_one(ctx, generator):
    # found: AttributeError "'int' object has no attribute 'device'" inside randn_tensor
    with pytest.raises(TypeError, match="`generator` must be a torch.Generator"):
        ctx.pipe(["a", "b"] if isinstance(generator, list) else "a", generator=generator)


@pytest.mark.parametrize("kind", [k for k in EMBEDS_INVALID if k != "not_embeds"])  # not a PromptEmbeds at all
def test_pipeline_checks_prompt_embeds(ctx, kind):
    # found: RuntimeError from layer_norm / reshape deep in the generator, or NaN images
    with pytest.raises((ValueError, TypeError), match="`prompt_embeds`"):
        ctx.pipe(prompt_embeds=make_embeds(ctx, kind, 2), output_type="np")
    with pytest.raises(ValueError, match="`negative_prompt_embeds`"):
        ctx.pipe("a", negative_prompt_embeds=make_embeds(ctx, "nan", 1), guidance_scale=2.0)
    ok = ctx.pipe(prompt_embeds=make_embeds(ctx, "short", 2), output_type="np").images  # any length L >= 1
    assert ok.shape == (2, 16, 16, 3)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_pipeline_refuses_non_finite_latents(ctx, value, dtype):
    # found: NaN latents gave NaN images (black PIL images) without an error
    latents = torch.randn(1, 3, 16, 16).to(dtype)
    latents[0, 0, 0, 0] = value
    with pytest.raises(ValueError, match="`latents` holds NaN or Inf"):
        ctx.pipe("red dress", latents=latents, output_type="np")


# ---------------------------------------------------------------------- regressions: the CLI
def cli_case(argv, prompts_file=b"text\nred dress\n"):
    return {"argv": argv, "prompts_file": prompts_file}


@pytest.mark.parametrize(
    "argv, message",
    [
        # found: FileExistsError / IsADirectoryError / OSError tracebacks (main caught only FileNotFoundError)
        (["generate", "red dress", "--pipeline", "@PIPE", "-n", "1", "-o", "@FILE"], "File exists"),
        (["keys", "--api-keys", "@DIR", "list"], "Is a directory"),
        (["keys", "--api-keys", "@FILE_CHILD", "add"], "file.txt"),
        (["generate", "red dress", "--pipeline", "@HUB", "-o", "@OUT"], "someone/prodimg-model"),
        # found: RuntimeError / AssertionError tracebacks for a device torch cannot parse or lacks
        (
            ["generate", "red dress", "--pipeline", "@PIPE", "--device", "bogus", "-o", "@OUT"],
            "--device 'bogus'",
        ),
        (
            ["generate", "red dress", "--pipeline", "@PIPE", "--device", "meta", "-o", "@OUT"],
            "--device 'meta'",
        ),
        (
            [
                "eval",
                "--pipeline",
                "@PIPE",
                "--dataset",
                "@DATASET",
                "--metrics",
                "color_accuracy",
                "--output_dir",
                "@OUT",
                "--device",
                "BOGUS",
            ],
            "--device 'BOGUS'",
        ),
        # found: --num_threads 100000 made torch start 100000 threads: the process ran out of memory
        (
            ["generate", "red dress", "--pipeline", "@PIPE", "--num_threads", "100000", "-o", "@OUT"],
            "--num_threads must be between 1 and",
        ),
        (
            [
                "eval",
                "--pipeline",
                "@PIPE",
                "--dataset",
                "@DATASET",
                "--metrics",
                "color_accuracy",
                "--output_dir",
                "@OUT",
                "--num_threads",
                "-1",
            ],
            "--num_threads must be between 1 and",
        ),
        # found: --opset 23/24 exported (dynamo, 20 s), then failed in onnxruntime; 99: RuntimeError traceback
        (
            ["export", "onnx", "--pipeline", "@PIPE", "--out", "@OUT", "--opset", "23"],
            "opset must be an int in 17..22",
        ),
        (
            ["export", "onnx", "--pipeline", "@PIPE", "--out", "@OUT", "--opset", "99"],
            "opset must be an int in 17..22",
        ),
        # found: KeyError 'Field "image" exists 2 times in schema' (pyarrow) when both columns are the same
        (
            [
                "eval",
                "--pipeline",
                "@PIPE",
                "--dataset",
                "@DATASET",
                "--metrics",
                "color_accuracy",
                "--output_dir",
                "@OUT",
                "--caption_column",
                "image",
            ],
            "names a column twice",
        ),
    ],
)
def test_cli_refusals_are_exit_2_with_a_message(ctx, argv, message):
    threads = torch.get_num_threads()
    outcome = run_case("cli", ctx, cli_case(argv))
    assert (outcome.kind, outcome.label) == ("expected", "exit 2"), outcome
    assert message in outcome.detail
    assert torch.get_num_threads() == threads


def test_cli_device_check_keeps_working_devices(ctx, tmp_path):
    assert (
        main(
            [
                "generate",
                "red dress",
                "--pipeline",
                str(ctx.pipeline_dir),
                "-n",
                "1",
                "--device",
                "cpu:0",
                "-o",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert [p.name for p in tmp_path.iterdir()] == ["red-dress-seed0.png"]


# ---------------------------------------------------------------------- regressions: the dataset loader
def imagefolder(tmp_path, lines: list[bytes]):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "a.png").write_bytes(image_bytes("png", (12, 12)))
    (tmp_path / "b.png").write_bytes(image_bytes("png", (12, 12)))
    (tmp_path / "metadata.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return tmp_path


GOOD_LINE = json.dumps({"file_name": "b.png", "text": "blue"}).encode()


@pytest.mark.parametrize(
    "line, message",
    [
        (
            b"5",
            r"line 1: not a JSON object \(int\)",
        ),  # found: TypeError "argument of type 'int' is not iterable"
        (b"null", r"line 1: not a JSON object \(NoneType\)"),
        (
            b'{"file_name": "a.png", "text": "caf\xe9"}',
            "line 1: not valid UTF-8",
        ),  # found: bare UnicodeDecodeError
        # found: datasets' DatasetGenerationError (not a ValueError) for a file_name outside the folder
        (b'{"file_name": "/etc/passwd", "text": "x"}', "line 1: file_name '/etc/passwd' points outside"),
        (b'{"file_name": "../a.png", "text": "x"}', "line 1: file_name '../a.png' points outside"),
    ],
)
def test_loader_names_file_and_line_of_bad_metadata(tmp_path, line, message):
    folder = imagefolder(tmp_path / "data", [line, GOOD_LINE])
    with pytest.raises(ValueError, match=message) as err:
        load_image_text_dataset(train_data_dir=str(folder), cache_dir=str(tmp_path / "cache"))
    assert "metadata.jsonl" in str(err.value)


def test_loader_refuses_metadata_without_rows(tmp_path):
    # found: IndexError inside datasets' imagefolder builder
    folder = imagefolder(tmp_path / "data", [b"", b"   "])
    with pytest.raises(ValueError, match="metadata.jsonl has no rows"):
        load_image_text_dataset(train_data_dir=str(folder), cache_dir=str(tmp_path / "cache"))


def test_loader_refuses_one_column_for_image_and_caption(ctx):
    # found: pyarrow KeyError from select_columns(["image", "image"])
    with pytest.raises(ValueError, match="names a column twice"):
        load_image_text_dataset(str(ctx.dataset_dir), split="test", caption_column="image")


def test_loader_refuses_an_empty_save_to_disk_dataset(tmp_path):
    # found: IndexError inside datasets.load_from_disk (a split saved with 0 rows has 0 shards)
    from datasets import Dataset, Features, Value

    Dataset.from_dict(
        {"image": [], "text": []}, features=Features({"image": Value("binary"), "text": Value("string")})
    ).save_to_disk(str(tmp_path / "disk"))
    with pytest.raises(ValueError, match="0 rows"):
        load_image_text_dataset(str(tmp_path / "disk"))


def test_loader_wraps_data_errors_met_while_reading_an_imagefolder(tmp_path):
    # found: datasets' DatasetGenerationError (not a ValueError) for a caption with a lone surrogate escape
    # (here with a second, nested metadata.jsonl, where the parse error comes while generating the split)
    folder = imagefolder(tmp_path / "data", [b'{"file_name": "a.png", "text": "N\\uda77"}', GOOD_LINE])
    (folder / "sub").mkdir()
    (folder / "sub" / "c.png").write_bytes(image_bytes("png", (12, 12)))
    (folder / "sub" / "metadata.jsonl").write_text('{"file_name": "c.png", "text": "nested"}\n')
    with pytest.raises(ValueError, match="surrogate"):
        load_image_text_dataset(train_data_dir=str(folder), cache_dir=str(tmp_path / "cache"))


def test_loader_still_reads_nested_and_dotted_names(tmp_path):
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.png").write_bytes(image_bytes("png", (12, 12)))
    (folder / "..b.png").write_bytes(image_bytes("png", (12, 12)))
    lines = [
        json.dumps({"file_name": "sub/../sub/a.png", "text": "a"}),
        json.dumps({"file_name": "..b.png", "text": "b"}),
    ]
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    ds = load_image_text_dataset(train_data_dir=str(folder), cache_dir=str(tmp_path / "cache"))
    assert sorted(ds["text"]) == ["a", "b"]


# ---------------------------------------------------------------------- the minimal failing cases, replayed
FOUND_CASES = [
    (
        "pipeline",
        {
            "text": ("prompt", ("surrogate", "\ud800")),
            "negative_prompt": None,
            "negative_prompt_embeds": None,
            "num_images_per_prompt": 1,
            "num_inference_steps": None,
            "guidance_scale": 0.0,
            "generator": ("none", 0),
            "latents": None,
            "output_type": "pil",
            "return_dict": True,
            "extra": {},
        },
    ),
    (
        "pipeline",
        {
            "text": ("prompt", ("str", "")),
            "negative_prompt": None,
            "negative_prompt_embeds": None,
            "num_images_per_prompt": 1,
            "num_inference_steps": None,
            "guidance_scale": 1.0,
            "generator": ("int", 1),
            "latents": None,
            "output_type": "pil",
            "return_dict": False,
            "extra": {},
        },
    ),
    (
        "pipeline",
        {
            "text": ("prompt", ("str", "")),
            "negative_prompt": ("str", ""),
            "negative_prompt_embeds": None,
            "num_images_per_prompt": 1,
            "num_inference_steps": 1,
            "guidance_scale": 1,
            "generator": ("one", 1),
            "latents": ("nan", "float16"),
            "output_type": "np",
            "return_dict": False,
            "extra": {},
        },
    ),
    (
        "loader",
        {
            "source": "imagefolder",
            "rows": [],
            "junk_lines": [],
            "extra_files": [],
            "image_repr": "feature",
            "caption_type": "str",
            "options": {
                "skip_bad": False,
                "max_bad_fraction": 1.0,
                "validate": True,
                "decode_check": True,
                "min_image_size": 8,
                "max_image_pixels": 89478485,
                "max_samples": None,
                "split": "train",
                "image_column": "image",
                "caption_column": "text",
            },
        },
    ),
    (
        "loader",
        {
            "source": "disk",
            "rows": [],
            "junk_lines": [],
            "extra_files": [],
            "image_repr": "feature",
            "caption_type": "str",
            "options": {
                "skip_bad": False,
                "max_bad_fraction": 1.0,
                "validate": True,
                "decode_check": True,
                "min_image_size": 8,
                "max_image_pixels": 89478485,
                "max_samples": None,
                "split": "train",
                "image_column": "image",
                "caption_column": "text",
            },
        },
    ),
    (
        "loader",
        {
            "source": "imagefolder",
            "junk_lines": [(3, b"null")],
            "extra_files": [],
            "image_repr": "int",
            "caption_type": "str",
            "rows": [{"caption": ("str", ""), "size": (21, 23), "file_name": "abs", "image": "png"}],
            "options": {
                "max_bad_fraction": 1.0,
                "decode_check": False,
                "validate": True,
                "skip_bad": True,
                "max_samples": None,
                "caption_column": "caption",
                "max_image_pixels": 600,
                "min_image_size": 30,
                "split": "train",
                "image_column": "image",
            },
        },
    ),
]


FOUND_CASES.append(
    (
        "loader",
        {
            "source": "imagefolder",
            "extra_files": ["sub/metadata.jsonl"],
            "rows": [
                {"image": "palette_t", "caption": ("missing",), "size": (3, 2), "file_name": "ok"},
                {
                    "caption": ("surrogate", "N\x9b[\uda77ñ^"),
                    "image": "missing",
                    "size": (10, 26),
                    "file_name": "upper",
                },
                {"image": "zero", "file_name": "empty", "size": (4, 16), "caption": ("str", "")},
                {"caption": ("dict",), "image": "la", "size": (17, 6), "file_name": "int"},
            ],
            "image_repr": "int",
            "caption_type": "int",
            "junk_lines": [],
            "options": {
                "min_image_size": 8,
                "split": "train",
                "skip_bad": False,
                "image_column": "image",
                "caption_column": "caption",
                "validate": True,
                "decode_check": False,
                "max_image_pixels": 600,
                "max_bad_fraction": 1.0,
                "max_samples": None,
            },
        },
    )
)


@pytest.mark.parametrize("surface, case", FOUND_CASES)
def test_found_cases_are_now_documented_refusals(ctx, surface, case):
    outcome = run_case(surface, ctx, case)
    assert outcome.kind == "expected", outcome


def test_huge_int_captions_do_not_break_the_in_memory_fixture(ctx):
    """Found by the 10,000-case loader run: the harness itself could not store an int caption outside int64."""
    case = {
        "image_repr": "path", "source": "memory", "junk_lines": [(6, b"\xef\xbb\xbf{}"), (5, b"[1, 2]")],
        "options": {"max_image_pixels": 600, "split": "train", "min_image_size": 1, "image_column": "image",
                    "decode_check": True, "max_bad_fraction": 0.0, "caption_column": "text", "skip_bad": True,
                    "validate": True, "max_samples": None},
        "extra_files": ["sub/metadata.jsonl", "stray.png"], "caption_type": "int",
        "rows": [{"file_name": "ok", "size": (2, 20), "image": "truncated",
                  "caption": ("int", -1051561579417119855613067657216)}],
    }
    assert run_case("loader", ctx, case).kind != "unexpected"
