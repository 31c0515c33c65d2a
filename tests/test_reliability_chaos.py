"""Crash-resume chaos, fast profile (issue #9 item 3): SIGKILL training and catalogue generation at
random moments (and once in the middle of a checkpoint write), rerun, and require that no corrupt
checkpoint is ever resumed, at most one checkpoint interval is lost, and the final outputs equal an
uninterrupted run byte for byte. The long profile (>= 20 kills each) is benchmarks/reliability.py."""

from __future__ import annotations

import pytest

from prodimg.reliability.chaos import (
    _last_step_shown,
    chaos_catalog,
    chaos_training,
    check_checkpoint_files,
    make_fixture,
)


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    return make_fixture(tmp_path_factory.mktemp("chaos") / "fixture")


def test_training_survives_sigkills(fixture, tmp_path):
    report = chaos_training(tmp_path, kills=2, steps=24, interval=4, checkpoint_kill_every=2, fixture=fixture,
                            seed=1)
    assert report["failures"] == []
    assert report["kills"] == 2 and report["kills_during_checkpoint_write"] == 1
    assert report["final_files_compared"] >= 5  # the final checkpoint's and the pipeline's safetensors


def test_catalogue_generation_survives_sigkills(fixture, tmp_path):
    report = chaos_catalog(tmp_path, kills=1, fixture=fixture, seed=1)
    assert report["failures"] == []
    assert report["kills"] == 1 and report["files_compared"] == 2 * report["rows"] + 1


def test_checkpoint_checker_finds_truncated_and_non_finite_files(tmp_path):
    import torch
    from safetensors.torch import save_file

    good = tmp_path / "ok"
    good.mkdir()
    save_file({"w": torch.ones(4)}, str(good / "model.safetensors"))
    assert check_checkpoint_files(good) is None
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes()[:-5])
    assert "unreadable" in check_checkpoint_files(cut)
    nan = tmp_path / "nan"
    nan.mkdir()
    save_file({"w": torch.tensor([1.0, float("nan")])}, str(nan / "model.safetensors"))
    assert "not finite" in check_checkpoint_files(nan)


def test_progress_parser_reads_only_the_training_bar():
    log = ("Loading weights: 100%|##########| 37/37 [00:00<00:00]\n"
           "Steps:  30%|###       | 12/40 [00:00<00:02, 11.60it/s]\rSteps:  32%|###       | 13/40 [00:01<00:02]")
    assert _last_step_shown(log) == 13
