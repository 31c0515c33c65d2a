"""``prodimg serve``: the HTTP service and web page (needs the ``serve`` extra)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from pathlib import Path

from ..backends import DTYPES

DEFAULT_KEYS_FILE = "api_keys.json"
# --compile: a short and a long prompt, so that the warm-up also makes the text length dynamic.
WARM_UP_PROMPTS = ("dress", "a light blue checked long-sleeved cotton shirt with a collar, product photo")


def default_keys_file() -> str:
    return os.environ.get("PRODIMG_API_KEYS", DEFAULT_KEYS_FILE)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from ..serving.config import ServiceConfig

    d = ServiceConfig()
    p = subparsers.add_parser(
        "serve",
        help="serve the HTTP API and web page",
        description="Serve POST /v1/images/generations, GET /metrics, /healthz, /readyz and the web page at /. "
        "Create API keys with 'prodimg keys add'; add and revoke them while the service runs.",
    )
    p.add_argument(
        "--pipeline", default=None, help="saved pipeline folder (default: pipelines/prodimg-fashion-32)"
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=8080)
    p.add_argument(
        "--api-keys", default=None, help=f"keys file (default $PRODIMG_API_KEYS or ./{DEFAULT_KEYS_FILE})"
    )
    p.add_argument(
        "--audit-log",
        default="-",
        help="audit log file, one JSON line per request ('-': stderr, 'none': off)",
    )
    p.add_argument(
        "--redact-prompts", action="store_true", help="write only the SHA-256 of prompts to the audit log"
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=d.max_batch_images,
        help=f"images per pipeline call (default {d.max_batch_images}; 1 disables batching)",
    )
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=d.max_wait_ms,
        help=f"how long a request may wait for others to batch with (default {d.max_wait_ms})",
    )
    p.add_argument(
        "--queue-size",
        type=int,
        default=d.queue_size,
        help=f"waiting requests before 503 (default {d.queue_size})",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=d.timeout_s,
        help=f"seconds until a request gets 504 (default {d.timeout_s:g})",
    )
    p.add_argument(
        "--rate-limit",
        type=float,
        default=d.rate_limit,
        help=f"requests/s per key (default {d.rate_limit:g}; 0 disables)",
    )
    p.add_argument(
        "--rate-burst", type=int, default=d.rate_burst, help=f"burst per key (default {d.rate_burst})"
    )
    p.add_argument("--max-n", type=int, default=d.max_n, help=f"largest n per request (default {d.max_n})")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="weights and compute dtype (default float32; bfloat16 is faster on CPUs with native bf16)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the generator, compiled for batch 1 and --max-batch before the service starts "
        "(with --dtype bfloat16, the fastest CPU setting)",
    )
    p.add_argument(
        "--torch-threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..backends import load_pipeline, warm_up_compiled
    from ..serving import ServiceConfig, create_app, run_server
    from .generate import default_pipeline_dir

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = ServiceConfig(
        max_batch_images=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        queue_size=args.queue_size,
        timeout_s=args.timeout,
        rate_limit=args.rate_limit,
        rate_burst=args.rate_burst,
        max_n=args.max_n,
        audit_log=None if args.audit_log == "none" else args.audit_log,
        redact_prompts=args.redact_prompts,
    )
    try:
        if not ipaddress.ip_address(args.host).is_loopback:
            print(
                f"prodimg serve: warning: binding {args.host} exposes the service beyond this machine",
                file=sys.stderr,
            )
    except ValueError:
        pass
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    keys_file = args.api_keys or default_keys_file()
    if not Path(keys_file).exists():
        print(
            f"prodimg serve: no keys file {keys_file} yet; every authenticated route answers 401 until "
            f"'prodimg keys add --api-keys {keys_file}' creates one",
            file=sys.stderr,
        )
    pipeline_path = args.pipeline or str(default_pipeline_dir())
    if not Path(pipeline_path).is_dir():
        raise FileNotFoundError(
            f"pipeline folder {pipeline_path} does not exist; pass --pipeline DIR (a saved pipeline)"
        )
    pipe = load_pipeline(pipeline_path, device=args.device, dtype=args.dtype, compile=args.compile)
    pipe.set_progress_bar_config(disable=True)
    if args.compile:
        # Compile before the first request: compiling can take longer than a request may wait.
        log = logging.getLogger(__name__).info
        seconds = warm_up_compiled(pipe, {1, args.max_batch}, WARM_UP_PROMPTS, log=log)
        log("torch.compile warm-up took %.1f s", seconds)
    app = create_app(pipe, config, keys_file)
    run_server(app, host=args.host, port=args.port)
    return 0
