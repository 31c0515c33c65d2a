"""Long fuzz profile of issue #9 (part 1): hypothesis cases for each input surface, counted.

    HF_HUB_OFFLINE=1 python benchmarks/reliability_fuzz.py --cases 10000 \\
        --surfaces pipeline,cli,loader,http --seed 0 --json outputs/reliability/fuzz.json

Surfaces (strategies and oracles in ``prodimg/reliability/fuzz.py``): ``pipeline`` (the arguments of
``ProductImagePipeline.__call__`` on the tiny pipeline), ``cli`` (argv of ``prodimg generate|eval|keys|
build-dataset|export``), ``loader`` (imagefolders / parquet / save_to_disk data with malformed rows for
``load_image_text_dataset``) and ``http`` (bodies, headers, keys, paths and methods against the service).
Every case must succeed, with its result checked, or fail the documented way; anything else (another
exception, a traceback, a 5xx, an unauthenticated or invalid success, a valid request refused, a case past
its time limit) is an unexpected failure.

Prints a table per surface (cases tried / ok / expected error / unexpected / seconds / slowest case) and the
first unexpected failures, writes everything to ``--json``, and exits 1 if any case failed unexpectedly.
The same strategies run as the fast profile in ``tests/test_reliability_fuzz.py``. Runs are reproducible for
a ``--seed`` (no example database; all files in a temporary folder). Cost measured on the (busy) 2-core
CPU, one torch thread: about 0.03 s per pipeline or HTTP case, 0.06 s per loader case and 0.15-0.25 s per
CLI case, so 10,000 cases per surface take about an hour in all.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def parse_args(argv=None) -> argparse.Namespace:
    from prodimg.reliability.fuzz import SURFACES

    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--cases", type=int, default=10000, help="hypothesis cases per surface (default 10000)")
    p.add_argument(
        "--surfaces", default=",".join(SURFACES), help=f"comma-separated subset of {','.join(SURFACES)}"
    )
    p.add_argument("--seed", type=int, default=0, help="hypothesis seed (default 0)")
    p.add_argument(
        "--json", default=None, metavar="OUT", help="write the counts and failures to this JSON file"
    )
    p.add_argument(
        "--time_limit",
        type=float,
        default=None,
        help="seconds per case before it counts as a hang (default: per surface, see TIME_LIMITS)",
    )
    p.add_argument(
        "--progress_every", type=int, default=500, help="print a progress line every N cases (0: never)"
    )
    args = p.parse_args(argv)
    surfaces = [s.strip() for s in args.surfaces.split(",") if s.strip()]
    unknown = sorted(set(surfaces) - set(SURFACES))
    if unknown or not surfaces:
        p.error(f"--surfaces: unknown {unknown or 'empty list'}; choose from {','.join(SURFACES)}")
    if args.cases < 1:
        p.error("--cases must be >= 1")
    args.surface_list = surfaces
    return args


def main(argv=None) -> int:
    import hypothesis
    import torch

    from prodimg.reliability.fuzz import TIME_LIMITS, FuzzContext, format_table, run_profile

    args = parse_args(argv)
    results = []
    started = time.perf_counter()

    def progress(result) -> None:
        if args.progress_every and result.tried % args.progress_every == 0:
            print(
                f"  [{result.surface}] {result.tried}/{args.cases} cases: ok {result.ok}, expected "
                f"{result.expected}, unexpected {result.unexpected}",
                flush=True,
            )

    with FuzzContext() as ctx:
        for surface in args.surface_list:
            limit = args.time_limit or TIME_LIMITS[surface]
            print(f"[{surface}] up to {args.cases} cases, seed {args.seed}, {limit:g} s per case", flush=True)
            result = run_profile(surface, args.cases, args.seed, context=ctx, limit=limit, progress=progress)
            results.append(result)
            print(format_table([result]).splitlines()[-1], flush=True)
    total = time.perf_counter() - started

    print()
    print(format_table(results))
    print(f"total {total:.1f} s")
    failed = [r for r in results if r.unexpected]
    for r in failed:
        print(f"\n{r.surface}: {r.unexpected} unexpected failure(s); the first {len(r.failures)}:")
        print(r.describe_failures())
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
            "cases_per_surface": args.cases,
            "seed": args.seed,
            "total_seconds": round(total, 1),
            "surfaces": [r.as_dict() for r in results],
            "environment": {
                "python": platform.python_version(),
                "hypothesis": hypothesis.__version__,
                "torch": torch.__version__,
                "cpus": os.cpu_count(),
            },
        }
        out.write_text(json.dumps(report, indent=1, default=str) + "\n")
        print(f"wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
