"""prodimg.testing.run_launch: what the launch tests run through, and what they report when a run hangs."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from datetime import timedelta

import psutil
import pytest

from prodimg.testing import LaunchTimeout, run_launch
from prodimg.training.args import accelerator_from_args

# A parent and a child in its own session (as torchrun starts each rank), both stuck in a named function.
HANGING = textwrap.dedent(
    """
    import os, subprocess, sys, time

    def parent_hangs_here():
        time.sleep(1000)

    def child_hangs_here():
        time.sleep(1000)

    if sys.argv[1:] == ["child"]:
        child_hangs_here()
    child = subprocess.Popen([sys.executable, __file__, "child"], start_new_session=True)
    print(f"child pid {child.pid}", file=sys.stderr, flush=True)
    parent_hangs_here()
    """
)


def test_run_launch_returns_the_output(tmp_path):
    script = tmp_path / "ok.py"
    script.write_text("import sys\nprint('out')\nprint('err', file=sys.stderr)\nsys.exit(3)\n")
    proc = run_launch([sys.executable, script], env=dict(os.environ), timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "out\n", "err\n")


def test_a_hung_launch_leaves_nothing_behind_and_shows_every_stack(tmp_path):
    script = tmp_path / "hang.py"
    script.write_text(HANGING)
    with pytest.raises(LaunchTimeout, match="ran past 5 s") as exc:
        run_launch([sys.executable, script], env=dict(os.environ), timeout=5)
    output = exc.value.output
    # each stack whole (one process at a time), the child's (a rank's) first
    assert output.count("Fatal Python error: Aborted") == 2
    assert 0 <= output.index("in child_hangs_here") < output.index("in parent_hangs_here")
    child = int(output.split("child pid ")[1].split()[0])
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE


def test_accelerator_from_args_sets_the_collective_timeout(tmp_path):
    args = argparse.Namespace(output_dir=tmp_path, report_to="none", logging_dir="logs", ddp_timeout=42)
    accelerator = accelerator_from_args(args)
    assert accelerator.init_handler.timeout == timedelta(seconds=42)
    assert accelerator.project_configuration.logging_dir == os.path.join(tmp_path, "logs")
