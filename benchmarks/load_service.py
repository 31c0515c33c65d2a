"""Bounded load test of ``prodimg serve`` on loopback: batching vs no batching, latency, soak.

    HF_HUB_OFFLINE=1 python benchmarks/load_service.py                 # about 2 minutes
    HF_HUB_OFFLINE=1 python benchmarks/load_service.py --soak 600      # + a 10-minute soak (memory growth)

Serves ``--pipeline`` (default: ``pipelines/prodimg-fashion-32`` if present, else the tiny test
pipeline saved to a temporary folder) with ``prodimg serve`` in a subprocess bound to 127.0.0.1 and
drives it from this process with keep-alive HTTP/1.1 connections (no other host is ever contacted).
Every phase is bounded by a request count and a time limit.

1. single-request latency: one client, requests one after another (idle server);
2. closed loop, batching on: ``--clients`` clients each send a request as soon as the last returns;
3. open loop at fractions of (2)'s throughput (Poisson arrivals): p50/p95/p99 against 2x (1);
4. closed loop, batching off (``--max-batch 1``), same clients and requests: the throughput ratio
   (phases 2 and 4 alternate over ``--rounds`` rounds between two servers running side by side, so
   that other load on the machine falls on both alike).

Each request is ``{"prompt": <random catalog description>, "n": 1, "seed": <random>}`` (b64_json).
Goals (issue 7): no 5xx; batched >= 3x unbatched at 64 clients; p99 < 2x single-request latency at
the sustainable rate; soak memory growth < 5 %.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PIPELINE = REPO / "pipelines" / "prodimg-fashion-32"
COLORS = ["black", "white", "gray", "red", "orange", "yellow", "green", "blue", "purple", "pink", "brown"]
PATTERNS = ["solid", "striped", "checked", "dotted", "floral", "plain"]
ITEMS = [
    "t-shirt",
    "trousers",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
]


def random_prompt(rng: random.Random) -> str:
    return f"a {rng.choice(COLORS)} {rng.choice(PATTERNS)} {rng.choice(ITEMS)}"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


# ---------------------------------------------------------------------- a minimal HTTP/1.1 client
class Connection:
    """One keep-alive connection; small and fast enough that the client is not the bottleneck."""

    def __init__(self, port: int):
        self.port = port
        self.reader = self.writer = None

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict | None = None
    ) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}", f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            self.close()
            raise ConnectionError("connection closed")
        status = int(status_line.split()[1])
        length, close = 0, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and value.strip().lower() == "close":
                close = True
        payload = await self.reader.readexactly(length)
        if close:
            self.close()
        return status, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class Load:
    def __init__(self, port: int, key: str, seed: int = 0):
        self.port, self.key = port, key
        self.rng = random.Random(seed)

    def body(self) -> bytes:
        return json.dumps(
            {"prompt": random_prompt(self.rng), "n": 1, "seed": self.rng.randrange(2**31)}
        ).encode()

    async def one(self, conn: Connection, stats: dict, started: float | None = None) -> None:
        t0 = started if started is not None else time.perf_counter()
        try:
            status, _ = await conn.request(
                "POST",
                "/v1/images/generations",
                self.body(),
                {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"},
            )
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            conn.close()
            status = 0  # transport error
        stats["status"][status] += 1
        if status == 200:
            stats["latency"].append(time.perf_counter() - t0)
            stats["images"] += 1

    async def closed_loop(self, clients: int, requests: int, time_limit: float) -> dict:
        stats = {"status": Counter(), "latency": [], "images": 0}
        issued = 0
        start = time.perf_counter()

        async def client() -> None:
            nonlocal issued
            conn = Connection(self.port)
            while issued < requests and time.perf_counter() - start < time_limit:
                issued += 1
                await self.one(conn, stats)
            conn.close()

        await asyncio.gather(*(client() for _ in range(clients)))
        stats["wall"] = time.perf_counter() - start
        return stats

    async def open_loop(self, rate: float, requests: int, time_limit: float, max_conns: int = 256) -> dict:
        """Poisson arrivals at ``rate``/s; latency counts from the scheduled arrival."""
        stats = {"status": Counter(), "latency": [], "images": 0}
        idle: list[Connection] = []
        tasks = []
        start = time.perf_counter()
        next_at = start
        arrivals = random.Random(1)

        async def fire(at: float) -> None:
            conn = idle.pop() if idle else Connection(self.port)
            await self.one(conn, stats, started=at)
            if len(idle) < max_conns:
                idle.append(conn)
            else:
                conn.close()

        for _ in range(requests):
            next_at += arrivals.expovariate(rate)
            if next_at - start > time_limit:
                break
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            tasks.append(asyncio.create_task(fire(next_at)))
        await asyncio.gather(*tasks)
        stats["wall"] = time.perf_counter() - start
        for conn in idle:
            conn.close()
        return stats


# Hostile and broken requests for the mixed-traffic phase: (kind, method, path, body, headers-or-None).
# ``None`` headers means "the valid key"; unauthenticated kinds carry no, wrong or under-scoped keys.
def hostile_requests(monitor_key: str) -> list[tuple[str, str, str, bytes, dict | None]]:
    gen = "/v1/images/generations"
    js = {"Content-Type": "application/json"}
    bad_bodies = [
        b"not json", b"{", b"[]", b"null", b"{}", b'{"prompt": 123}', b'{"prompt": ""}', b'{"prompt": "   "}',
        b'{"prompt": "red dress", "n": -1}', b'{"prompt": "red dress", "n": 1000000}',
        b'{"prompt": "red dress", "seed": "x"}', b'{"prompt": "red dress", "steps": 10000}',
        b'{"prompt": "red dress", "guidance_scale": 1e308}', b'{"prompt": "red dress", "unknown": 1}',
        b'{"prompt": ["a", {"b": []}]}', b'{"prompt": "\xff\xfe"}', b"\xff\xfe\xfd",
        json.dumps({"prompt": "red dress " * 2000}).encode(),
        b'{"prompt": "red dress", "n": 1, "response_format": "file:///etc/passwd"}',
        b'{"prompt": "' + b"x" * (2 * 1024 * 1024) + b'"}',
    ]
    out: list[tuple[str, str, str, bytes, dict | None]] = [("invalid", "POST", gen, b, None) for b in bad_bodies]
    valid = json.dumps({"prompt": "a red dress", "n": 1, "seed": 1}).encode()
    for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": "Basic dXNlcjpwYXNz"},
                    {"Authorization": "Bearer "}, {"Authorization": f"Bearer {monitor_key}"},
                    {"Authorization": "Bearer " + "k" * 10000}, {"X-API-Key": "wrong"}):
        out.append(("unauthenticated", "POST", gen, valid, {**js, **headers}))
    out += [("unauthenticated", "GET", "/metrics", b"", {}), ("unauthenticated", "GET", "/readyz", b"", {}),
            ("invalid", "GET", gen, b"", None), ("invalid", "DELETE", gen, b"", None),
            ("invalid", "POST", "/v1/../../etc/passwd", valid, None), ("invalid", "GET", "/nope", b"", None)]
    return out


async def mixed_traffic(port: int, key: str, monitor_key: str, clients: int, seconds: float,
                        invalid_fraction: float = 0.3, unauth_fraction: float = 0.2, seed: int = 0) -> dict:
    """Closed loop of valid, invalid and unauthenticated requests; counts by kind and status."""
    rng = random.Random(seed)
    load = Load(port, key, seed=seed)
    hostile = hostile_requests(monitor_key)
    by_kind = {k: [h for h in hostile if h[0] == k] for k in ("invalid", "unauthenticated")}
    counts = {k: Counter() for k in ("valid", "invalid", "unauthenticated")}
    start = time.perf_counter()

    async def client() -> None:
        conn = Connection(port)
        while time.perf_counter() - start < seconds:
            r = rng.random()
            if r < unauth_fraction:
                kind, method, path, body, headers = rng.choice(by_kind["unauthenticated"])
            elif r < unauth_fraction + invalid_fraction:
                kind, method, path, body, headers = rng.choice(by_kind["invalid"])
            else:
                kind, method, path, body, headers = "valid", "POST", "/v1/images/generations", load.body(), None
            if headers is None:
                headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
            try:
                status, _ = await conn.request(method, path, body, headers)
            except (ConnectionError, OSError, asyncio.IncompleteReadError, ValueError):
                conn.close()
                status = 0
            counts[kind][status] += 1
        conn.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    total = {k: sum(c.values()) for k, c in counts.items()}
    return {
        "seconds": time.perf_counter() - start,
        "requests": total,
        "status": {k: dict(sorted(c.items())) for k, c in counts.items()},
        "server_errors": sum(v for c in counts.values() for s, v in c.items() if s == 0 or s >= 500 and s != 503),
        "unauthenticated_successes": sum(v for s, v in counts["unauthenticated"].items() if 200 <= s < 300),
        "invalid_successes": sum(v for s, v in counts["invalid"].items() if 200 <= s < 300),
        "valid_successes": sum(v for s, v in counts["valid"].items() if s == 200),
    }


def summary(stats: dict) -> dict:
    lat = stats["latency"]
    return {
        "requests": sum(stats["status"].values()),
        "images_per_s": stats["images"] / stats["wall"] if stats["wall"] else 0.0,
        "p50_ms": 1000 * percentile(lat, 0.50),
        "p95_ms": 1000 * percentile(lat, 0.95),
        "p99_ms": 1000 * percentile(lat, 0.99),
        "status": dict(sorted(stats["status"].items())),
        # 503 (queue full) and 504 (deadline) are the service shedding load by design; 500s and broken
        # connections are errors
        "server_errors": sum(
            v for k, v in stats["status"].items() if k == 0 or (k >= 500 and k not in (503, 504))
        ),
        "shed": sum(v for k, v in stats["status"].items() if k in (503, 504)),
        "wall_s": stats["wall"],
    }


def fmt(name: str, s: dict) -> str:
    return (
        f"{name:<34} {s['requests']:>5} req  {s['images_per_s']:7.1f} img/s  p50 {s['p50_ms']:7.1f} ms  "
        f"p95 {s['p95_ms']:7.1f} ms  p99 {s['p99_ms']:7.1f} ms  status {s['status']}"
    )


# ---------------------------------------------------------------------- the server under test
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, pipeline: str, keys: str, key: str, max_batch: int, args: argparse.Namespace):
        self.port = free_port()
        self.key = key
        cmd = [
            sys.executable,
            "-m",
            "prodimg.cli",
            "serve",
            "--pipeline",
            pipeline,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--api-keys",
            keys,
            "--audit-log",
            os.path.join(os.path.dirname(keys), f"audit-{self.port}.jsonl"),
            "--rate-limit",
            "0",
            "--queue-size",
            str(args.queue_size),
            "--max-batch",
            str(max_batch),
            "--max-wait-ms",
            str(args.max_wait_ms),
            "--timeout",
            "60",
            "--torch-threads",
            str(args.torch_threads),
        ]
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        }
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    async def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError("server exited:\n" + self.log.read().decode(errors="replace")[-3000:])
            try:
                conn = Connection(self.port)
                status, _ = await conn.request(
                    "GET", "/readyz", headers={"Authorization": f"Bearer {self.key}"}
                )
                conn.close()
                if status == 200:
                    return
            except OSError:
                pass
            await asyncio.sleep(0.2)
        raise TimeoutError("server not ready")

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


# ---------------------------------------------------------------------- phases
async def measure(args: argparse.Namespace, pipeline: str, keys: str, key: str) -> dict:
    results: dict = {}
    print(
        f"pipeline {pipeline}; {args.clients} clients; torch threads {args.torch_threads}; max wait {args.max_wait_ms} ms; "
        f"{os.cpu_count()} CPUs, load average at start {os.getloadavg()[0]:.2f}"
    )

    # Both servers run side by side and the closed-loop phases alternate between them, so that load
    # from other work on the machine falls on both alike; the ratio is taken over the rounds' totals.
    batched_server = Server(pipeline, keys, key, args.max_batch, args)
    unbatched_server = Server(pipeline, keys, key, 1, args)
    try:
        await batched_server.wait_ready()
        await unbatched_server.wait_ready()
        load = Load(batched_server.port, key, seed=1)
        plain = Load(unbatched_server.port, key, seed=2)
        await load.closed_loop(args.clients, 4 * args.clients, 30)  # warm-up: kernels for each batch size
        await plain.closed_loop(args.clients, args.clients, 30)
        single = summary(await load.closed_loop(1, args.single_requests, args.time_limit))
        print(fmt("single client (idle server)", single))
        rounds: dict[str, list[dict]] = {"batched": [], "unbatched": []}
        per_round = max(1, args.requests // args.rounds)
        for r in range(args.rounds):
            for name, driver in (("batched", load), ("unbatched", plain)):
                stats = await driver.closed_loop(args.clients, per_round, args.time_limit / args.rounds)
                rounds[name].append(stats)
                print(fmt(f"round {r + 1}: {args.clients} clients, {name}", summary(stats)))
        batched, unbatched = summary(merge(rounds["batched"])), summary(merge(rounds["unbatched"]))
        print(fmt(f"{args.clients} clients, batching (max {args.max_batch})", batched))
        print(fmt(f"{args.clients} clients, batching off", unbatched))
        unbatched_server.stop()
        sweep = []
        for fraction in args.rates:
            rate = fraction * batched["images_per_s"]
            n = int(min(args.requests, rate * args.open_loop_seconds))
            s = summary(await load.open_loop(rate, n, args.open_loop_seconds * 1.5))
            s.update(
                offered_rate=rate,
                fraction=fraction,
                p99_over_single=s["p99_ms"] / single["p50_ms"],
                p99_over_single_p99=s["p99_ms"] / single["p99_ms"],
            )
            if s["requests"] < 20:
                print(f"open loop at {rate:.1f} req/s: too few requests ({s['requests']}) for a p99, skipped")
                continue
            sweep.append(s)
            print(
                fmt(f"open loop {rate:6.1f} req/s ({fraction:.0%} of peak)", s)
                + f"  p99/single p50 {s['p99_over_single']:.2f}, /single p99 {s['p99_over_single_p99']:.2f}"
            )
        results.update(single=single, batched=batched, unbatched=unbatched, sweep=sweep)
        if args.mixed:
            results["mixed"] = await mixed_phase(args, batched_server, key)
        if args.soak:
            results["soak"] = await soak(args, batched_server, load)
    finally:
        batched_server.stop()
        unbatched_server.stop()
    return results


async def mixed_phase(args: argparse.Namespace, server: Server, key: str) -> dict:
    print(f"mixed traffic: {args.mixed:.0f} s, {args.clients} clients, 50 % valid / 30 % invalid / "
          f"20 % unauthenticated or under-scoped")
    rss_before = server.rss_mb()
    m = await mixed_traffic(server.port, key, args.monitor_key, args.clients, args.mixed)
    m.update(rss_before_mb=rss_before, rss_after_mb=server.rss_mb(), server_alive=server.proc.poll() is None)
    print(f"mixed: requests {m['requests']}; status {m['status']}")
    print(f"mixed: 5xx/broken {m['server_errors']} (goal 0), unauthenticated successes "
          f"{m['unauthenticated_successes']} (goal 0), invalid accepted {m['invalid_successes']}; RSS "
          f"{m['rss_before_mb']:.1f} -> {m['rss_after_mb']:.1f} MB")
    return m


async def measure_mixed_only(args: argparse.Namespace, pipeline: str, keys: str, key: str) -> dict:
    server = Server(pipeline, keys, key, args.max_batch, args)
    try:
        await server.wait_ready()
        return {"mixed": await mixed_phase(args, server, key)}
    finally:
        server.stop()


def merge(runs: list[dict]) -> dict:
    out = {"status": Counter(), "latency": [], "images": 0, "wall": 0.0}
    for run in runs:
        out["status"].update(run["status"])
        out["latency"].extend(run["latency"])
        out["images"] += run["images"]
        out["wall"] += run["wall"]
    return out


async def soak(args: argparse.Namespace, server: Server, load: Load) -> dict:
    print(f"soak: {args.soak:.0f} s closed loop with {args.clients} clients; RSS sampled every 10 s")
    samples: list[tuple[float, float]] = []
    start = time.perf_counter()
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            samples.append((time.perf_counter() - start, server.rss_mb()))
            try:
                await asyncio.wait_for(stop.wait(), 10)
            except asyncio.TimeoutError:
                pass

    sampler = asyncio.create_task(sample())
    stats = await load.closed_loop(args.clients, 10**9, args.soak)
    stop.set()
    await sampler
    samples.append((time.perf_counter() - start, server.rss_mb()))
    warm = [mb for t, mb in samples if t >= min(60.0, args.soak / 5)] or [samples[0][1]]
    s = summary(stats)
    s.update(
        rss_start_mb=warm[0],
        rss_end_mb=samples[-1][1],
        rss_max_mb=max(mb for _, mb in samples),
        rss_growth_pct=100 * (samples[-1][1] - warm[0]) / warm[0],
    )
    print(fmt("soak", s))
    print(
        f"soak RSS after warm-up {s['rss_start_mb']:.1f} MB -> end {s['rss_end_mb']:.1f} MB "
        f"(max {s['rss_max_mb']:.1f}); growth {s['rss_growth_pct']:+.2f} % (goal < 5 %)"
    )
    return s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--pipeline",
        default=None,
        help="saved pipeline folder (default: pipelines/prodimg-fashion-32, else the tiny one)",
    )
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=2000, help="requests per closed-loop phase")
    parser.add_argument(
        "--time-limit", type=float, default=30.0, help="seconds per phase (all its rounds) at most"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating batched/unbatched closed-loop rounds"
    )
    parser.add_argument("--single-requests", type=int, default=100)
    parser.add_argument(
        "--rates",
        type=float,
        nargs="+",
        default=[0.05, 0.1, 0.25, 0.5, 0.75],
        help="open-loop rates, as fractions of the batched throughput",
    )
    parser.add_argument("--open-loop-seconds", type=float, default=8.0)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--queue-size", type=int, default=256)
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="server's torch threads (1 leaves a core for HTTP and this client)",
    )
    parser.add_argument(
        "--soak",
        type=float,
        nargs="?",
        const=600.0,
        default=0.0,
        help="soak seconds (default when given: 600)",
    )
    parser.add_argument("--mixed", type=float, default=0.0,
                        help="seconds of mixed valid/invalid/unauthenticated traffic (default 0: skip)")
    parser.add_argument("--mixed-only", action="store_true", help="run only the mixed-traffic phase")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.mixed_only and not args.mixed:
        args.mixed = 60.0

    sys.path.insert(0, str(REPO))
    from prodimg.serving.keys import add_key

    with tempfile.TemporaryDirectory(prefix="prodimg-load-") as tmp:
        pipeline = args.pipeline or (str(DEFAULT_PIPELINE) if DEFAULT_PIPELINE.is_dir() else None)
        if pipeline is None:
            from prodimg.testing import make_tiny_pipeline

            pipeline = os.path.join(tmp, "tiny-pipeline")
            make_tiny_pipeline().save_pretrained(pipeline)
        keys = os.path.join(tmp, "keys.json")
        _, key = add_key(keys, "load", ["generate", "monitor"])
        _, args.monitor_key = add_key(keys, "monitor-only", ["monitor"])
        if args.mixed_only:
            results = asyncio.run(measure_mixed_only(args, pipeline, keys, key))
            m = results["mixed"]
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=2, default=str))
            return 0 if m["server_errors"] == 0 and m["unauthenticated_successes"] == 0 and m["server_alive"] else 1
        results = asyncio.run(measure(args, pipeline, keys, key))

    b, u, single = results["batched"], results["unbatched"], results["single"]
    ratio = b["images_per_s"] / u["images_per_s"] if u["images_per_s"] else float("inf")
    errors = b["server_errors"] + u["server_errors"] + sum(s["server_errors"] for s in results["sweep"])
    print(
        f"\nload average at the end {os.getloadavg()[0]:.2f} (other work on this machine skews every figure)"
    )
    shed = b["shed"] + u["shed"] + sum(s["shed"] for s in results["sweep"])
    print(f"server errors (500 or broken connection): {errors}  (goal 0); shed with 503/504: {shed}")
    print(
        f"throughput with batching / without at {args.clients} clients: {b['images_per_s']:.1f} / "
        f"{u['images_per_s']:.1f} img/s = {ratio:.2f}x  (goal >= 3x)"
    )
    for name in ("p50", "p99"):
        bound = 2 * single[f"{name}_ms"]
        ok = [s for s in results["sweep"] if s["p99_ms"] < bound and s["server_errors"] + s["shed"] == 0]
        if ok:
            best = max(ok, key=lambda s: s["offered_rate"])
            print(
                f"p99 < 2x single-request {name} ({bound:.1f} ms) up to {best['offered_rate']:.1f} req/s "
                f"({best['fraction']:.0%} of peak): p99 {best['p99_ms']:.1f} ms"
            )
        else:
            print(f"p99 stayed above 2x single-request {name} ({bound:.1f} ms) at every swept rate")
    results["ratio"] = ratio
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
