"""Catalogue generation: a file of prompts in, an imagefolder dataset out.

``prodimg generate --prompts FILE --out DIR`` (see ``prodimg/commands/generate.py``) calls
:func:`generate_catalog`. The output folder is itself a dataset::

    DIR/metadata.jsonl            one record per image, sorted by row:
                                  {"file_name": "images/000012_0.png", "text": ..., "seed": ..., "row": 12,
                                   "pipeline": "<name>@<digest>", "num_inference_steps": 4,
                                   "guidance_scale": 1.0, "negative_prompt": null}
    DIR/images/000012_0.png       row 12, image 0

so ``datasets.load_dataset("imagefolder", data_dir=DIR)`` loads it and ``push_to_hub`` publishes it.

Seeds. Row ``r`` gets ``row_seed(seed, r)`` (a 62-bit hash of ``--seed`` and the row number) and
its image ``j`` uses ``row_seed + j``, recorded per image; ``prodimg generate TEXT --seed SEED -n 1``
regenerates one image alone (the single-prompt mode also seeds image ``i`` with ``seed + i``).

Determinism. Each image depends only on its own ``torch.Generator``, but CPU kernels round
differently for different batch shapes and thread counts (about 1e-6, enough to flip a PNG byte
now and then). So the batches are fixed globally (consecutive valid rows, ``batch_size`` per batch,
the same whatever the number of processes, and a batch is always recomputed whole) and the
intra-op thread count is set explicitly. Same inputs, settings, ``--batch_size`` and
``--num_threads`` give byte-identical output for any number of processes.

Resuming. A row is done when every one of its images is a complete PNG of the right size *and* a
matching metadata record exists (records are written only after the image has been renamed into
place). Images are written atomically; each process appends its records to a hidden journal
(``.metadata-rankNNNNN.jsonl``, fsynced per batch) and the main process merges the journals into
``metadata.jsonl`` (atomic rename) at the start and at the end of a run, so an interrupted run
loses at most the batch in flight. A truncated image or a torn record line is never taken as done.

Distribution. Under ``accelerate launch --num_processes N`` the pending batches are split between
processes with ``PartialState.split_between_processes``; the main process decides what is done and
broadcasts it, shows one progress bar (rows/s and ETA over all processes, read from the journals)
and writes the final metadata.

Bad rows (empty prompt, missing column, not a string, more tokens than the text encoder takes,
unparsable JSON line) are all found before anything is generated and reported with their row
number (0-based, as ``dataset[row]``) and, for CSV/JSONL, their line number; ``on_bad_row="error"``
stops before generating anything, ``"skip"`` leaves them out. Nothing that is already written is
ever deleted: records for rows that are not in the current input are kept when their image is
intact, and images made with other settings are refused unless ``overwrite=True``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .data.loading import BadRow
from .utils import atomic_write_bytes, atomic_write_text, fsync_dir

logger = logging.getLogger(__name__)

METADATA_NAME = "metadata.jsonl"
IMAGE_DIR = "images"
JOURNAL_PREFIX = ".metadata-rank"
BAD_ROW_ACTIONS = ("error", "skip")
SETTING_FIELDS = ("seed", "pipeline", "num_inference_steps", "guidance_scale", "negative_prompt")
"""Record fields fixed by the run's settings; a mismatch with existing output is a conflict."""
MAX_REPORTED_BAD_ROWS = 50


# ---------------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class PromptRow:
    index: int  # 0-based row number in the source
    text: Any  # the raw value (validated later)
    line: int | None = None  # 1-based line in a CSV/JSONL file
    problem: str | None = None  # set when the row could not even be read


def _read_csv(path: Path, column: str) -> list[PromptRow]:
    rows: list[PromptRow] = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            raise ValueError(f"{path} is empty (no header line)")
        if column not in reader.fieldnames:
            raise ValueError(
                f"column {column!r} not found in {path}; its columns are {reader.fieldnames} (choose with --prompt_column)"
            )
        for i, record in enumerate(reader):
            value = record.get(column)
            problem = f"missing column {column!r} (the line has fewer fields than the header)" if value is None else None
            rows.append(PromptRow(i, value, reader.line_num, problem))
    return rows


def _read_jsonl(path: Path, column: str) -> list[PromptRow]:
    rows: list[PromptRow] = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            index = len(rows)
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                rows.append(PromptRow(index, None, line_no, f"not valid JSON ({err.msg})"))
                continue
            if not isinstance(record, dict):
                rows.append(PromptRow(index, None, line_no, f"not a JSON object (got {type(record).__name__})"))
            elif column not in record:
                rows.append(PromptRow(index, None, line_no, f"missing column {column!r}"))
            else:
                rows.append(PromptRow(index, record[column], line_no))
    return rows


def _read_dataset(source: str, column: str, split: str) -> list[PromptRow]:
    from .data.loading import check_columns, open_source

    dataset, _ = open_source(dataset_name=source, split=split, caption_column=column)
    try:
        check_columns(dataset, [column])
    except ValueError as err:
        raise ValueError(f"{err} (choose with --prompt_column)".replace(" (choose with --image_column / --caption_column)", "")) from None
    values = dataset.select_columns([column])[column]
    return [PromptRow(i, v) for i, v in enumerate(values)]


def read_prompt_rows(source: str | os.PathLike, prompt_column: str = "text", split: str = "train") -> list[PromptRow]:
    """Rows of a ``.csv`` (header line), ``.jsonl`` (one object per line) or a dataset: a
    ``save_to_disk`` folder, parquet file/folder, or a Hub dataset id (``split``)."""
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if suffix in (".csv", ".jsonl", ".ndjson", ".parquet") and not path.exists():
        raise FileNotFoundError(f"--prompts {path} does not exist")
    if path.is_file() and suffix == ".csv":
        return _read_csv(path, prompt_column)
    if path.is_file() and suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(path, prompt_column)
    if path.is_file() and suffix != ".parquet":
        raise ValueError(f"--prompts {path}: expected a .csv or .jsonl file, a parquet file or a dataset folder")
    return _read_dataset(str(source), prompt_column, split)


def check_prompt_rows(rows: list[PromptRow], tokenizer, max_tokens: int) -> tuple[list[PromptRow], list[BadRow]]:
    """Split rows into valid ones and bad ones (with the reason)."""
    good: list[PromptRow] = []
    bad: list[BadRow] = []
    candidates: list[PromptRow] = []

    def where(row: PromptRow) -> str | None:
        return f"line {row.line}" if row.line is not None else None

    for row in rows:
        if row.problem:
            bad.append(BadRow(row.index, row.problem, where(row)))
        elif row.text is None:
            bad.append(BadRow(row.index, "empty prompt (null)", where(row)))
        elif not isinstance(row.text, str):
            bad.append(BadRow(row.index, f"prompt must be a string, got {type(row.text).__name__}", where(row)))
        elif not row.text.strip():
            bad.append(BadRow(row.index, "empty prompt", where(row)))
        else:
            candidates.append(row)
    if candidates:
        lengths = [len(ids) for ids in tokenizer([r.text for r in candidates], truncation=False, verbose=False).input_ids]
        for row, n in zip(candidates, lengths):
            if n > max_tokens:
                bad.append(BadRow(
                    row.index,
                    f"prompt too long: {n} tokens, the text encoder takes {max_tokens} (start and end tokens included)",
                    where(row),
                ))
            else:
                good.append(row)
    bad.sort(key=lambda b: b.index)
    return good, bad


def format_bad_rows(bad: list[BadRow], limit: int = MAX_REPORTED_BAD_ROWS) -> str:
    lines = [f"  {b}" for b in bad[:limit]]
    if len(bad) > limit:
        lines.append(f"  ... and {len(bad) - limit} more")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- identity
def row_seed(base_seed: int, row: int) -> int:
    """The seed of row ``row``: a 62-bit hash of (``base_seed``, ``row``); image ``j`` uses ``+ j``."""
    digest = hashlib.sha256(f"prodimg-catalog:{int(base_seed)}:{int(row)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 2


def image_file_name(row: int, image: int) -> str:
    return f"{IMAGE_DIR}/{row:06d}_{image}.png"


def _config_items(config) -> dict:
    items = dict(config.to_dict() if hasattr(config, "to_dict") else config)
    return {k: v for k, v in items.items() if not k.startswith("_") and k != "transformers_version"}


def pipeline_id(pipe, name: str) -> str:
    """``name@digest``: ``name`` is the pipeline's folder name or Hub id, ``digest`` the first 12 hex
    digits of a SHA-256 over the generator, text encoder and scheduler configs and weights (so any
    change of weights, dtype or schedule gives another id). ONNX pipelines carry their own id."""
    if getattr(pipe, "pipeline_id", None):
        return pipe.pipeline_id
    h = hashlib.sha256()
    for component in (pipe.generator, pipe.text_encoder):
        h.update(json.dumps(_config_items(component.config), sort_keys=True, default=str).encode())
        for key, tensor in sorted(component.state_dict().items()):
            h.update(key.encode())
            h.update(str(tensor.dtype).encode())
            h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    h.update(json.dumps(_config_items(pipe.scheduler.config), sort_keys=True, default=str).encode())
    name = Path(str(name).rstrip("/")).name if os.path.isdir(str(name)) else str(name)
    return f"{name}@{h.hexdigest()[:12]}"


@dataclass(frozen=True)
class CatalogSettings:
    pipeline: str
    seed: int = 0
    num_images_per_prompt: int = 1
    num_inference_steps: int = 4
    guidance_scale: float = 1.0
    negative_prompt: str | None = None

    def records(self, row: PromptRow) -> list[dict[str, Any]]:
        base = row_seed(self.seed, row.index)
        return [
            {
                "file_name": image_file_name(row.index, j),
                "text": row.text,
                "seed": base + j,
                "row": row.index,
                "pipeline": self.pipeline,
                "num_inference_steps": self.num_inference_steps,
                "guidance_scale": float(self.guidance_scale),
                "negative_prompt": self.negative_prompt,
            }
            for j in range(self.num_images_per_prompt)
        ]


def record_line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


# ---------------------------------------------------------------------------------------- output state
def image_is_complete(path: Path, size: int) -> bool:
    """True when ``path`` is a PNG whose chunks all check out (CRCs, IEND) and that decodes fully to
    an RGB ``size`` x ``size`` image."""
    try:
        with Image.open(path) as im:
            if im.format != "PNG":
                return False
            im.verify()
        with Image.open(path) as im:
            im.load()
            return im.size == (size, size) and im.mode == "RGB"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False


def journal_paths(out_dir: Path) -> list[Path]:
    return sorted(out_dir.glob(f"{JOURNAL_PREFIX}*.jsonl"))


def read_records(out_dir: Path) -> tuple[dict[str, dict[str, Any]], int]:
    """Records of ``metadata.jsonl`` then the journals (later ones win), and the number of unreadable lines."""
    records: dict[str, dict[str, Any]] = {}
    unreadable = 0
    for path in [out_dir / METADATA_NAME, *journal_paths(out_dir)]:
        if not path.is_file():
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    unreadable += 1  # e.g. a line torn by a crash: never counts as done
                    continue
                if not line.endswith("\n") or not isinstance(record, dict) or not isinstance(record.get("file_name"), str):
                    unreadable += 1
                    continue
                records[record["file_name"]] = record
    return records, unreadable


def _sort_key(record: dict[str, Any]):
    row = record.get("row")
    return (row if isinstance(row, int) else sys.maxsize, record["file_name"])


def write_metadata(out_dir: Path, records: Iterable[dict[str, Any]]) -> int:
    ordered = sorted(records, key=_sort_key)
    atomic_write_text(out_dir / METADATA_NAME, "".join(record_line(r) for r in ordered))
    for journal in journal_paths(out_dir):
        journal.unlink()
    fsync_dir(out_dir)
    return len(ordered)


@dataclass
class ResumePlan:
    done_rows: list[int]
    conflicts: list[str] = field(default_factory=list)
    kept_foreign: int = 0
    dropped: int = 0
    unreadable_lines: int = 0


def plan_resume(out_dir: Path, rows: list[PromptRow], settings: CatalogSettings, image_size: int, overwrite: bool) -> tuple[ResumePlan, list[dict]]:
    """Which rows are already done; the records to keep. Conflicting settings are listed (an error
    unless ``overwrite``)."""
    existing, unreadable = read_records(out_dir)
    keep: list[dict] = []
    done: list[int] = []
    conflicts: list[str] = []
    expected_names: set[str] = set()
    for row in rows:
        complete = True
        for want in settings.records(row):
            expected_names.add(want["file_name"])
            have = existing.get(want["file_name"])
            if have is None:
                complete = False
                continue
            diff = [k for k in SETTING_FIELDS if have.get(k) != want[k]]
            if diff and not overwrite and len(conflicts) < 5:
                k = diff[0]
                conflicts.append(f"{want['file_name']}: {k} {have.get(k)!r} in the folder, {want[k]!r} now")
            if have != want or not image_is_complete(out_dir / want["file_name"], image_size):
                complete = False
        if complete:
            done.append(row.index)
            keep.extend(settings.records(row))
    kept_foreign = dropped = 0
    for name, record in existing.items():
        if name in expected_names:
            continue
        if image_is_complete(out_dir / name, image_size):
            keep.append(record)
            kept_foreign += 1
        else:
            dropped += 1
    plan = ResumePlan(done, conflicts, kept_foreign, dropped, unreadable)
    return plan, keep


# ---------------------------------------------------------------------------------------- progress
class _JournalProgress:
    """Counts rows finished by all processes from the growth of their journals."""

    def __init__(self, out_dir: Path, images_per_row: int):
        self.out_dir = out_dir
        self.k = images_per_row
        self.offsets: dict[Path, int] = {}
        self.lines: dict[Path, int] = {}

    def rows(self) -> int:
        for path in journal_paths(self.out_dir):
            try:
                with open(path, "rb") as f:
                    f.seek(self.offsets.get(path, 0))
                    data = f.read()
            except FileNotFoundError:
                continue
            end = data.rfind(b"\n") + 1  # only complete lines
            self.offsets[path] = self.offsets.get(path, 0) + end
            self.lines[path] = self.lines.get(path, 0) + data[:end].count(b"\n")
        return sum(n // self.k for n in self.lines.values())


# ---------------------------------------------------------------------------------------- generation
@dataclass
class CatalogReport:
    out_dir: Path
    total_rows: int
    valid_rows: int
    bad_rows: list[BadRow]
    already_done: int
    generated_rows: int  # by this process
    images_written: int  # by this process
    metadata_records: int | None = None  # main process only
    kept_foreign: int = 0
    elapsed_s: float = 0.0


def _encode_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def generate_catalog(
    pipe,
    prompts: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    pipeline_name: str,
    prompt_column: str = "text",
    split: str = "train",
    num_images_per_prompt: int = 1,
    batch_size: int = 16,
    seed: int = 0,
    num_inference_steps: int | None = None,
    guidance_scale: float = 1.0,
    negative_prompt: str | None = None,
    on_bad_row: str = "error",
    overwrite: bool = False,
    progress: bool = True,
    state=None,
) -> CatalogReport:
    """Generate ``num_images_per_prompt`` images for every valid row of ``prompts`` into ``out_dir``
    (resuming), on this process's share of the rows. ``pipe`` is loaded on this process's device."""
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list
    from tqdm.auto import tqdm

    start_time = time.perf_counter()
    if on_bad_row not in BAD_ROW_ACTIONS:
        raise ValueError(f"on_bad_row must be one of {BAD_ROW_ACTIONS}, got {on_bad_row!r}")
    for name, value in (("num_images_per_prompt", num_images_per_prompt), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    state = state or PartialState()
    out_dir = Path(out_dir)
    steps = num_inference_steps or pipe.scheduler.config.num_train_timesteps
    # Check the generation arguments before any file is touched (same errors as the pipeline's).
    pipe.check_inputs("x", negative_prompt, None, None, num_images_per_prompt, steps, guidance_scale, "pil", None, None)

    # 1. Read and check every row (on every process, identically; the main process reads first so
    #    that a dataset is prepared in the cache once).
    with state.main_process_first():
        rows = read_prompt_rows(prompts, prompt_column, split)
    valid, bad = check_prompt_rows(rows, pipe.tokenizer, pipe.max_text_length)
    if bad:
        message = f"{len(bad)} bad row(s) of {len(rows)} in {prompts}:\n{format_bad_rows(bad)}"
        if on_bad_row == "error":
            raise ValueError(message + "\nfix them, or pass --on_bad_row skip to leave them out")
        if state.is_main_process:
            print(f"prodimg generate: skipping {message}", file=sys.stderr)
    if not valid:
        raise ValueError(f"{prompts} has no valid rows to generate ({len(rows)} rows, {len(bad)} bad)")
    settings = CatalogSettings(
        pipeline=pipeline_id(pipe, pipeline_name),
        seed=seed,
        num_images_per_prompt=num_images_per_prompt,
        num_inference_steps=steps,
        guidance_scale=float(guidance_scale),
        negative_prompt=negative_prompt,
    )
    image_size = pipe.generator.config.sample_size

    # 2. The main process decides what is done, rewrites metadata.jsonl and tells the others.
    plan_box: list[Any] = [(None, None)]  # (error message, ResumePlan)
    if state.is_main_process:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            plan, keep = plan_resume(out_dir, valid, settings, image_size, overwrite)
            if plan.conflicts:
                plan_box[0] = (
                    f"{out_dir} holds images made with other settings, e.g.\n  " + "\n  ".join(plan.conflicts)
                    + "\nuse another --out, the same settings, or --overwrite to regenerate them",
                    None,
                )
            else:
                write_metadata(out_dir, keep)
                plan_box[0] = (None, plan)
        except Exception as err:  # noqa: BLE001  (tell the other processes instead of leaving them at a barrier)
            plan_box[0] = (f"{type(err).__name__}: {err}", None)
    broadcast_object_list(plan_box, from_process=0)
    error, plan = plan_box[0]
    if error is not None:
        raise ValueError(error)
    done = set(plan.done_rows)
    if state.is_main_process and plan.unreadable_lines:
        print(f"prodimg generate: ignored {plan.unreadable_lines} unreadable metadata line(s) in {out_dir}", file=sys.stderr)

    # 3. Fixed global batches; split those with work left between the processes.
    batches = [valid[i : i + batch_size] for i in range(0, len(valid), batch_size)]
    pending = [b for b in batches if any(r.index not in done for r in b)]
    todo_rows = sum(1 for b in pending for r in b if r.index not in done)
    gen_device = pipe._execution_device
    generated = written = 0
    journal_path = out_dir / f"{JOURNAL_PREFIX}{state.process_index:05d}.jsonl"
    tracker = _JournalProgress(out_dir, num_images_per_prompt)
    show = bool(progress and state.is_main_process)
    bar = tqdm(
        total=todo_rows, unit="row", desc=f"generating ({state.num_processes} process{'es' if state.num_processes > 1 else ''})",
        disable=not show, dynamic_ncols=True,
    )
    pipe.set_progress_bar_config(disable=True)
    with state.split_between_processes(pending) as mine, open(journal_path, "a", encoding="utf-8") as journal:
        for batch in mine:
            generators = [
                torch.Generator(gen_device).manual_seed(row_seed(seed, r.index) + j)
                for r in batch
                for j in range(num_images_per_prompt)
            ]
            images = pipe(
                [r.text for r in batch],
                negative_prompt=negative_prompt,
                num_images_per_prompt=num_images_per_prompt,
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                generator=generators,
                output_type="pil",
            ).images
            lines = []
            for b, row in enumerate(batch):
                if row.index in done:
                    continue
                records = settings.records(row)
                for j, record in enumerate(records):
                    atomic_write_bytes(out_dir / record["file_name"], _encode_png(images[b * num_images_per_prompt + j]))
                    written += 1
                lines.extend(record_line(r) for r in records)
                generated += 1
            journal.write("".join(lines))
            journal.flush()
            os.fsync(journal.fileno())
            if show:
                bar.update(tracker.rows() - bar.n)
        if show:  # follow the other processes until every row is in
            while bar.n < todo_rows and state.num_processes > 1:
                time.sleep(0.2)
                bar.update(tracker.rows() - bar.n)
    bar.close()

    # 4. Merge the journals into metadata.jsonl.
    state.wait_for_everyone()
    records_count = None
    if state.is_main_process:
        records, _ = read_records(out_dir)
        records_count = write_metadata(out_dir, records.values())
    state.wait_for_everyone()
    return CatalogReport(
        out_dir=out_dir,
        total_rows=len(rows),
        valid_rows=len(valid),
        bad_rows=bad,
        already_done=len(done),
        generated_rows=generated,
        images_written=written,
        metadata_records=records_count,
        kept_foreign=plan.kept_foreign,
        elapsed_s=time.perf_counter() - start_time,
    )
