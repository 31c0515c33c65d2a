"""The reliability suite's long profile (issue #9): the figures of docs/RELIABILITY.md in one command.

    HF_HUB_OFFLINE=1 python benchmarks/reliability.py --json runs/reliability/report.json

1. fuzzing: ``--fuzz_cases`` hypothesis cases per surface (pipeline call, CLI, dataset loader, HTTP
   API; :mod:`prodimg.reliability.fuzz`): every case succeeds or fails with its documented error;
2. hostile model files: the whole corpus of :mod:`prodimg.reliability.hostile_files` is loaded with
   ``ProductImagePipeline.from_pretrained``: every folder refused with a clear error, no canary written,
   nothing imported or unpickled;
3. chaos: ``--kills`` SIGKILLs of a training run (a third of them in the middle of a checkpoint write)
   and of catalogue generation, each resumed (:mod:`prodimg.reliability.chaos`);
4. numerics: a tiny training with non-finite losses forced at ``--nonfinite_steps`` steps: all skipped
   and counted, the saved pipeline finite;
5. the service: ``benchmarks/load_service.py --mixed-only`` for ``--mixed_seconds``: valid, invalid and
   unauthenticated requests against the shipped pipeline: no 5xx, no unauthenticated success.

Prints one summary table, writes the JSON report, and exits 1 if any promise was broken.
Use ``--only fuzz,files`` to run a subset.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARTS = ("fuzz", "files", "chaos", "numerics", "service")


def run_fuzz(args, report: dict) -> bool:
    from prodimg.reliability.fuzz import SURFACES, TIME_LIMITS, FuzzContext, format_table, run_profile

    results = []
    ctx = FuzzContext()
    try:
        for surface in SURFACES:
            print(f"[fuzz] {surface}: {args.fuzz_cases} cases, {TIME_LIMITS[surface]:g} s per case", flush=True)
            r = run_profile(surface, args.fuzz_cases, args.seed, context=ctx, limit=TIME_LIMITS[surface])
            results.append(r)
            print(format_table([r]).splitlines()[-1], flush=True)
    finally:
        ctx.close()
    print(format_table(results))
    for r in results:
        if r.unexpected:
            print(f"{r.surface}: {r.unexpected} unexpected failure(s):\n{r.describe_failures()}")
    report["fuzz"] = [r.as_dict() for r in results]
    return all(r.unexpected == 0 for r in results)


def run_files(args, report: dict) -> bool:
    from prodimg.reliability.hostile_files import HostileFileBreach, build_hostile_corpus, check_hostile_case
    from prodimg.testing import make_tiny_pipeline

    root = Path(args.workdir) / "hostile"
    make_tiny_pipeline().save_pretrained(root / "base")
    cases = build_hostile_corpus(root, root / "base")
    refused, problems = 0, []
    for case in cases:
        try:
            ok, error = check_hostile_case(case)
        except HostileFileBreach as err:
            problems.append(f"{case.name}: BREACH {err}")
            continue
        refused += ok
        if not ok:
            problems.append(f"{case.name}: {error}")
    report["files"] = {"cases": len(cases), "refused": refused, "problems": problems}
    print(f"[files] {refused}/{len(cases)} hostile or broken pipeline folders refused; problems: {problems or 'none'}")
    return refused == len(cases) and not problems


def run_chaos(args, report: dict) -> bool:
    from prodimg.reliability.chaos import chaos_catalog, chaos_training, make_fixture

    work = Path(args.workdir) / "chaos"
    fixture = make_fixture(work / "fixture")
    train = chaos_training(work / "training", kills=args.kills, seed=args.seed, fixture=fixture)
    print(f"[chaos] training: {train['kills']} kills ({train['kills_during_checkpoint_write']} during checkpoint "
          f"writes), max steps lost {train['max_steps_lost']} (interval {train['checkpoint_interval']}), "
          f"{train['checkpoints_verified']} checkpoint checks, final weights compared: "
          f"{train.get('final_files_compared')}; failures: {train['failures'] or 'none'}")
    catalog = chaos_catalog(work / "catalog", kills=args.kills, seed=args.seed, fixture=fixture)
    print(f"[chaos] catalogue: {catalog['kills']} kills, {catalog['rows']} rows x {catalog['images_per_row']} "
          f"images, files compared {catalog.get('files_compared')}; failures: {catalog['failures'] or 'none'}")
    report["chaos"] = {"training": train, "catalog": catalog}
    return not train["failures"] and not catalog["failures"] and train["kills"] >= args.kills


def run_numerics(args, report: dict) -> bool:
    from prodimg import ProductImagePipeline
    from prodimg.reliability.chaos import check_checkpoint_files, make_fixture, run_training

    work = Path(args.workdir) / "numerics"
    fixture = make_fixture(work / "fixture")
    out = work / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PRODIMG_TEST_FORCE_NONFINITE": ",".join(map(str, args.nonfinite_steps))}
    steps = max(args.nonfinite_steps) + 4
    code = run_training(fixture, out, steps, 4, work / "train.log", env=env)
    summary = json.loads((out / "training_summary.json").read_text()) if code == 0 else {}
    finite = code == 0 and check_checkpoint_files(out / "generator") is None
    if finite:
        ProductImagePipeline.from_pretrained(out)  # the load-time finiteness check too
    result = {"exit_code": code, "injected": len(args.nonfinite_steps),
              "skipped": summary.get("nonfinite_steps_skipped"), "global_step": summary.get("global_step"),
              "saved_weights_finite": finite}
    report["numerics"] = result
    print(f"[numerics] {result['injected']} non-finite steps injected, {result['skipped']} skipped and counted, "
          f"run finished at step {result['global_step']}/{steps}, saved weights finite: {finite}")
    return code == 0 and result["skipped"] == result["injected"] and finite


def run_service(args, report: dict) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "mixed.json"
        cmd = [sys.executable, str(REPO / "benchmarks" / "load_service.py"), "--mixed-only", "--mixed",
               str(args.mixed_seconds), "--clients", str(args.clients), "--json", str(out)]
        proc = subprocess.run(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True,
                              check=False)
        print(proc.stdout[-2000:], end="")
        if not out.is_file():
            print(proc.stderr[-3000:])
            report["service"] = {"error": proc.stderr[-3000:]}
            return False
        mixed = json.loads(out.read_text())["mixed"]
    report["service"] = mixed
    return proc.returncode == 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=",".join(PARTS), help=f"comma list of {PARTS}")
    p.add_argument("--fuzz_cases", type=int, default=10000, help="hypothesis cases per surface (default 10000)")
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs of training and of catalogue generation")
    p.add_argument("--nonfinite_steps", type=int, nargs="+", default=[2, 3, 7, 11, 12])
    p.add_argument("--mixed_seconds", type=float, default=120.0)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--json", default=None, help="write the report here")
    args = p.parse_args(argv)
    parts = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        p.error(f"unknown parts {sorted(unknown)}; choose from {PARTS}")
    runners = {"fuzz": run_fuzz, "files": run_files, "chaos": run_chaos, "numerics": run_numerics,
               "service": run_service}
    report: dict = {"args": vars(args), "passed": {}, "seconds": {}}
    with tempfile.TemporaryDirectory(prefix="prodimg-reliability-") as tmp:
        if args.workdir is None:
            args.workdir = tmp
        for part in parts:
            t0 = time.perf_counter()
            report["passed"][part] = runners[part](args, report)
            report["seconds"][part] = round(time.perf_counter() - t0, 1)
            print(f"== {part}: {'PASSED' if report['passed'][part] else 'FAILED'} "
                  f"({report['seconds'][part]:.0f} s)", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    print("\nsummary: " + ", ".join(f"{k} {'passed' if v else 'FAILED'}" for k, v in report["passed"].items()))
    return 0 if all(report["passed"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
