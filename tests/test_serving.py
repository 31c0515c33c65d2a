"""The HTTP service: auth on every route, limits, micro-batching, audit log, metrics, key management.

Each test serves a tiny saved pipeline with uvicorn on a loopback port (``BackgroundServer``).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import PIL.Image
import pytest
import torch

pytest.importorskip("fastapi", reason="needs the serve extra: pip install -e '.[serve]'")

from prodimg.cli import build_parser, main
from prodimg.pipeline import ProductImagePipeline
from prodimg.schedulers import DDGANScheduler
from prodimg.serving import BackgroundServer, ServiceConfig, add_key, create_app
from prodimg.serving.app import GENERATIONS_PATH, PUBLIC_PATHS, _check_route_table
from prodimg.serving.keys import hash_key
from prodimg.testing import make_tiny_pipeline

GEN = GENERATIONS_PATH


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("pipeline")
    make_tiny_pipeline().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pipe(pipeline_dir):
    p = ProductImagePipeline.from_pretrained(pipeline_dir)
    p.set_progress_bar_config(disable=True)
    return p


def write_keys(path):
    """A keys file with one key per scope combination; returns (path, {name: key})."""
    found = {}
    for name, scopes in {
        "gen": ["generate"],
        "mon": ["monitor"],
        "all": ["generate", "monitor"],
        "none": [],
    }.items():
        found[name] = add_key(path, name, scopes)[1]
    return path, found


@pytest.fixture()
def keys(tmp_path):
    return write_keys(tmp_path / "keys.json")


@pytest.fixture(scope="module")
def shared(pipe, tmp_path_factory):
    """One server for the tests that only send requests and read answers: (server, keys)."""
    found = write_keys(tmp_path_factory.mktemp("shared") / "keys.json")
    app = create_app(pipe, ServiceConfig(rate_limit=0.0, audit_log=None), found[0])
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        server.app, server.client = app, client
        yield server, found


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture()
def serve(keys, tmp_path):
    """serve(pipe, **config) -> a running server (stopped at the end of the test)."""
    stack = contextlib.ExitStack()

    def start(pipeline, **overrides):
        settings = {"rate_limit": 0.0, "audit_log": str(tmp_path / "audit.jsonl")}
        settings.update(overrides)
        app = create_app(pipeline, ServiceConfig(**settings), keys[0])
        server = stack.enter_context(BackgroundServer(app))
        server.app = app
        server.client = stack.enter_context(httpx.Client(base_url=server.url, timeout=30))
        return server

    with stack:
        yield start


class GatedPipeline(ProductImagePipeline):
    """The tiny pipeline, with a gate the test opens and closes and a word that makes it fail."""

    def __call__(self, prompt=None, **kwargs):
        self.calls.append(list(prompt))
        if not self.gate.wait(20):
            raise RuntimeError("gate never opened")
        if any(self.fail_word in p for p in prompt):
            raise RuntimeError("injected failure")
        return super().__call__(prompt, **kwargs)


def gated(pipe) -> GatedPipeline:
    g = GatedPipeline(
        tokenizer=pipe.tokenizer,
        text_encoder=pipe.text_encoder,
        generator=pipe.generator,
        scheduler=DDGANScheduler.from_config(pipe.scheduler.config),
    )
    g.set_progress_bar_config(disable=True)
    g.gate, g.fail_word, g.calls = threading.Event(), "EXPLODE", []
    g.gate.set()
    return g


def decode(b64: str) -> np.ndarray:
    return np.asarray(PIL.Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")).astype(np.int16)


def assert_same_image(a: np.ndarray, b: np.ndarray) -> None:
    # The pipeline promises batch == single up to atol 1e-5 on [0, 1] floats (CPU kernels pick
    # batch-size-dependent code paths), so after rounding to 8 bits a pixel may flip by one level.
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= 1
    assert (a == b).mean() > 0.98


def error_code(response: httpx.Response) -> str:
    return response.json()["error"]["code"]


# ---------------------------------------------------------------------- auth, from the route table
def test_every_route_authenticates_per_its_scope(shared):
    server, keys = shared
    _, k = keys
    routes = [r for r in server.app.routes if hasattr(r, "methods")]
    assert {r.path for r in routes} >= {"/", "/healthz", "/readyz", "/metrics", GEN}
    bodies = {GEN: {"prompt": "red dress", "seed": 1}}
    checked = 0
    for route in routes:
        for method in sorted(route.methods):
            body = bodies.get(route.path)

            def call(headers=None, method=method, path=route.path, body=body):
                return server.client.request(method, path, json=body, headers=headers)

            if route.path in PUBLIC_PATHS:
                assert call().status_code == 200, route.path
                continue
            scope = server.app.state.route_scopes[(method, route.path)]
            r = call()
            assert r.status_code == 401 and error_code(r) == "missing_api_key", route.path
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert call({"Authorization": "Bearer pik_not-a-key"}).status_code == 401
            assert call({"Authorization": "Basic " + k["all"]}).status_code == 401
            r = call(auth(k["none"]))
            assert r.status_code == 403 and error_code(r) == "insufficient_scope", route.path
            other = "mon" if scope == "generate" else "gen"
            assert call(auth(k[other])).status_code == 403, route.path
            r = call(auth(k["gen" if scope == "generate" else "mon"]))
            assert r.status_code == 200, (route.path, r.text)
            checked += 1
    assert checked >= 3
    assert server.client.get("/no-such-route").status_code == 404


def test_a_route_without_scope_is_refused(pipe):
    app = create_app(pipe, ServiceConfig(warmup=False))

    @app.get("/debug")
    async def debug():
        return {}

    with pytest.raises(RuntimeError, match="/debug"):
        _check_route_table(app)


def test_keys_are_hashed_and_managed_without_restart(serve, pipe, keys, capsys):
    path, k = keys
    text = path.read_text()
    assert all(key not in text for key in k.values())
    assert hash_key(k["gen"]) in text
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    server = serve(pipe)
    body = {"prompt": "blue shirt", "response_format": "png", "seed": 3}

    assert main(["keys", "--api-keys", str(path), "add", "--id", "late", "--scopes", "generate"]) == 0
    new_key = capsys.readouterr().out.strip().splitlines()[-1]
    assert new_key.startswith("pik_") and new_key not in path.read_text()
    assert server.client.post(GEN, json=body, headers=auth(new_key)).status_code == 200

    assert main(["keys", "--api-keys", str(path), "revoke", "late"]) == 0
    assert capsys.readouterr().out.strip() == "revoked late"
    r = server.client.post(GEN, json=body, headers=auth(new_key))
    assert r.status_code == 401 and error_code(r) == "invalid_api_key"
    assert server.client.post(GEN, json=body, headers=auth(k["gen"])).status_code == 200

    assert main(["keys", "--api-keys", str(path), "list"]) == 0
    listing = capsys.readouterr().out
    assert "gen\tgenerate" in listing and "late" not in listing and "pik_" not in listing

    path.write_text("{not json")  # a broken file fails closed
    assert server.client.post(GEN, json=body, headers=auth(k["gen"])).status_code == 401


# ---------------------------------------------------------------------- generation and limits
def test_generation_returns_images_and_seed_that_reproduce(shared, pipe):
    server, keys = shared
    h = auth(keys[1]["gen"])
    r = server.client.post(GEN, json={"prompts": ["red dress", "green scarf"], "n": 2}, headers=h)
    assert r.status_code == 200, r.text
    out = r.json()
    seed = out["seed"]
    assert [d["seed"] for d in out["data"]] == [seed, seed + 1, seed + 2, seed + 3]
    assert [d["prompt_index"] for d in out["data"]] == [0, 0, 1, 1]
    assert out["truncated"] is False and out["steps"] == pipe.scheduler.config.num_train_timesteps
    again = server.client.post(
        GEN, json={"prompts": ["red dress", "green scarf"], "n": 2, "seed": seed}, headers=h
    ).json()
    assert [d["b64_json"] for d in again["data"]] == [d["b64_json"] for d in out["data"]]
    # image k is what the pipeline makes with Generator(seed + k), like `prodimg generate --seed`
    direct = pipe(
        ["red dress", "green scarf"],
        num_images_per_prompt=2,
        generator=[torch.Generator().manual_seed(seed + i) for i in range(4)],
        output_type="np",
    ).images
    for d, img in zip(out["data"], direct):
        assert_same_image(decode(d["b64_json"]), np.round(img * 255).astype(np.int16))
    png = server.client.post(
        GEN, json={"prompt": "green scarf", "seed": seed + 2, "response_format": "png"}, headers=h
    )
    assert png.headers["content-type"] == "image/png" and png.headers["x-prodimg-seed"] == str(seed + 2)
    assert_same_image(
        np.asarray(PIL.Image.open(io.BytesIO(png.content)).convert("RGB")).astype(np.int16),
        decode(out["data"][2]["b64_json"]),
    )


def test_body_over_64kb_is_413(shared):
    server, keys = shared
    h = auth(keys[1]["gen"])
    big = json.dumps({"prompt": "x" * (64 * 1024)}).encode()
    r = server.client.post(GEN, content=big, headers={**h, "Content-Type": "application/json"})
    assert r.status_code == 413 and error_code(r) == "body_too_large"

    def chunks():  # no Content-Length: the limit counts the streamed bytes
        for _ in range(20):
            yield b"x" * 4096

    r = server.client.post(GEN, content=chunks(), headers=h)
    assert r.status_code == 413
    assert r.json()["error"]["message"].startswith("request body exceeds 65536 bytes")
    # 64 KB itself is fine (it fails later, on the prompt length)
    ok = json.dumps({"prompt": "y" * (64 * 1024 - 20)}).encode()
    assert len(ok) <= 64 * 1024
    assert server.client.post(GEN, content=ok, headers=h).status_code == 422


def test_prompt_over_77_tokens_is_422(shared, pipe):
    server, keys = shared
    h = auth(keys[1]["gen"])
    count = lambda text: len(pipe.tokenizer(text, truncation=False)["input_ids"])
    fits, too_long = " ".join(["red"] * 75), " ".join(["red"] * 76)
    assert count(fits) == 77 and count(too_long) == 78
    assert server.client.post(GEN, json={"prompt": fits}, headers=h).status_code == 200
    r = server.client.post(GEN, json={"prompt": too_long}, headers=h)
    assert r.status_code == 422 and error_code(r) == "prompt_too_long" and "78 tokens" in r.text
    r = server.client.post(GEN, json={"prompts": ["ok", too_long]}, headers=h)
    assert r.status_code == 422 and r.json()["error"]["param"] == "prompts.1"
    r = server.client.post(GEN, json={"prompt": "ok", "negative_prompt": too_long}, headers=h)
    assert r.status_code == 422 and r.json()["error"]["param"] == "negative_prompt"


@pytest.mark.parametrize(
    "body, param",
    [
        ({"prompt": "a", "n": 0}, "n"),
        ({"prompt": "a", "n": 9}, "n"),
        ({"prompt": "a", "n": 1.5}, "n"),
        ({"prompt": "a", "n": "2"}, "n"),
        ({"prompts": ["a"] * 4, "n": 5}, "n"),  # 20 images > 16 per request
        ({"prompt": "a", "steps": 0}, "steps"),
        ({"prompt": "a", "steps": 5}, "steps"),
        ({"prompt": "a", "guidance_scale": -0.5}, "guidance_scale"),
        ({"prompt": "a", "guidance_scale": 20.5}, "guidance_scale"),
        ({"prompt": "a", "seed": -1}, "seed"),
        ({"prompt": "a", "seed": 2**40}, "seed"),
        ({"prompt": "a", "response_format": "url"}, "response_format"),
        ({"prompt": "a", "n": 2, "response_format": "png"}, "response_format"),
        ({"prompt": "a", "prompts": ["b"]}, "prompt"),
        ({}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompts": []}, "prompts"),
        ({"prompt": "a", "size": "1024x1024"}, "size"),
    ],
)
def test_out_of_range_parameters_are_422(shared, body, param):
    server, keys = shared
    r = server.client.post(GEN, json=body, headers=auth(keys[1]["gen"]))
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_request" and err["param"] == param and err["message"]


def test_malformed_json_is_422(shared):
    server, keys = shared
    r = server.client.post(
        GEN, content=b"{nope", headers={**auth(keys[1]["gen"]), "Content-Type": "application/json"}
    )
    assert r.status_code == 422 and error_code(r) == "invalid_request"


def test_rate_limit_is_429_with_retry_after(serve, pipe, keys):
    server = serve(pipe, rate_limit=0.05, rate_burst=2)
    body = {"prompt": "a", "response_format": "png"}
    codes = [server.client.post(GEN, json=body, headers=auth(keys[1]["gen"])).status_code for _ in range(2)]
    assert codes == [200, 200]
    r = server.client.post(GEN, json=body, headers=auth(keys[1]["gen"]))
    assert r.status_code == 429 and error_code(r) == "rate_limited"
    assert int(r.headers["retry-after"]) >= 1
    # the limit is per key
    assert server.client.post(GEN, json=body, headers=auth(keys[1]["all"])).status_code == 200


def test_full_queue_is_503_quickly_and_deadline_is_504(serve, pipe, keys):
    g = gated(pipe)
    server = serve(g, queue_size=1, max_batch_images=1, max_wait_ms=0, timeout_s=1.5)
    h = auth(keys[1]["gen"])
    g.gate.clear()
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(server.client.post, GEN, json={"prompt": "first", "seed": 1}, headers=h)
        while len(g.calls) < 2:  # warm-up + "first" entered the pipeline
            time.sleep(0.01)
        queued = pool.submit(server.client.post, GEN, json={"prompt": "second"}, headers=h)
        while server.app.state.batcher.depth < 1:
            time.sleep(0.01)
        t0 = time.monotonic()
        r = server.client.post(GEN, json={"prompt": "third"}, headers=h)
        assert r.status_code == 503 and error_code(r) == "queue_full" and r.headers["retry-after"] == "1"
        assert time.monotonic() - t0 < 0.5
        # the gate stays shut past the 1.5 s deadline: both callers get 504, on time
        first, second = running.result(), queued.result()
        assert first.status_code == 504 and error_code(first) == "deadline_exceeded"
        assert second.status_code == 504
    g.gate.set()
    r = server.client.post(GEN, json={"prompt": "after"}, headers=h)  # the worker recovers
    assert r.status_code == 200, r.text
    assert ["second"] not in g.calls  # an expired request never reaches the pipeline


# ---------------------------------------------------------------------- micro-batching
def queued_together(server, g, bodies, key):
    """Hold the worker on a blocker request, queue ``bodies`` concurrently, then let it go: the
    bodies are all waiting when the next batch forms. Returns their responses, in order."""
    g.gate.clear()
    with ThreadPoolExecutor(1 + len(bodies)) as pool:
        calls_before = len(g.calls)
        blocker = pool.submit(server.client.post, GEN, json={"prompt": "blocker"}, headers=auth(key))
        while len(g.calls) <= calls_before:
            time.sleep(0.01)
        futures = [pool.submit(server.client.post, GEN, json=b, headers=auth(key)) for b in bodies]
        while server.app.state.batcher.depth < len(bodies):
            time.sleep(0.01)
        g.gate.set()
        results = [f.result() for f in futures]
        assert blocker.result().status_code == 200
    return results


def test_concurrent_requests_are_batched_and_match_single_runs(serve, pipe, keys):
    g = gated(pipe)
    server = serve(g, max_batch_images=32, max_wait_ms=0)
    key = keys[1]["gen"]
    bodies = [
        {"prompt": "red striped dress", "seed": 10},
        {"prompt": "blue wool hat", "seed": 20, "n": 3},
        {"prompts": ["black boots", "white sneaker"], "seed": 30},
        {"prompt": "green silk scarf", "seed": 40, "n": 2},
        {"prompt": "pink bag", "seed": 50, "guidance_scale": 2.0},  # other settings: its own batch
        {"prompt": "brown coat", "seed": 60, "guidance_scale": 2.0, "negative_prompt": "blurry"},
        {"prompt": "gray shirt", "seed": 70, "steps": 2},
    ]
    results = queued_together(server, g, bodies, key)
    assert all(r.status_code == 200 for r in results), [r.text for r in results]
    # four requests with default settings (1 + 3 + 2 + 2 = 8 images) shared one pipeline call
    assert sorted(map(len, g.calls[2:]), reverse=True)[:1] == [8]
    assert len(g.calls) == 2 + 3  # warm-up, blocker, then batches: defaults, guidance 2.0, steps 2

    batched = {b["seed"]: [decode(d["b64_json"]) for d in r.json()["data"]] for b, r in zip(bodies, results)}
    for body, r in zip(bodies, results):
        assert r.json()["seed"] == body["seed"]
    # every caller got its own images: all distinct across callers
    flat = [img for imgs in batched.values() for img in imgs]
    for i in range(len(flat)):
        for j in range(i + 1, len(flat)):
            assert np.abs(flat[i] - flat[j]).max() > 8
    # ... and the same images as the same request served alone
    for body in bodies:
        alone = server.client.post(GEN, json=body, headers=auth(key))
        assert alone.status_code == 200
        assert len(g.calls[-1]) == len(batched[body["seed"]])  # it ran alone
        for a, b in zip(batched[body["seed"]], [decode(d["b64_json"]) for d in alone.json()["data"]]):
            assert_same_image(a, b)

    metrics = server.client.get("/metrics", headers=auth(keys[1]["mon"])).text
    assert 'prodimg_batch_requests_bucket{le="4.0"}' in metrics


def test_a_failing_request_does_not_break_its_batch(serve, pipe, keys):
    g = gated(pipe)
    server = serve(g, max_batch_images=32, max_wait_ms=0)
    key = keys[1]["gen"]
    bodies = [
        {"prompt": "red dress", "seed": 1},
        {"prompt": "EXPLODE now", "seed": 2},
        {"prompt": "blue hat", "seed": 3, "n": 2},
    ]
    results = queued_together(server, g, bodies, key)
    assert [r.status_code for r in results] == [200, 500, 200]
    assert error_code(results[1]) == "generation_failed"
    assert any(len(c) == 4 for c in g.calls)  # they were batched, the batch failed, each was retried alone
    for body, r in zip(bodies[::2], results[::2]):
        alone = server.client.post(GEN, json=body, headers=auth(key)).json()
        for a, b in zip(r.json()["data"], alone["data"]):
            assert_same_image(decode(a["b64_json"]), decode(b["b64_json"]))


# ---------------------------------------------------------------------- audit log and metrics
def _audit(tmp_path):
    return [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]


def test_audit_log_has_one_line_per_request(serve, pipe, keys, tmp_path):
    server = serve(pipe)
    server.client.post(
        GEN, json={"prompt": "secret red dress", "n": 2, "seed": 9}, headers=auth(keys[1]["gen"])
    )
    server.client.post(GEN, json={"prompt": "x"})
    server.client.get("/healthz")
    lines = _audit(tmp_path)
    assert [line["status"] for line in lines] == [200, 401, 200]
    ok = lines[0]
    assert (
        ok["key_id"] == "gen"
        and ok["route"] == GEN
        and ok["method"] == "POST"
        and ok["n"] == 2
        and ok["seed"] == 9
    )
    assert ok["prompt"] == ["secret red dress"] and ok["latency_ms"] > 0 and ok["time"].endswith("+00:00")
    assert lines[1]["key_id"] is None
    assert keys[1]["gen"] not in (tmp_path / "audit.jsonl").read_text()


def test_audit_log_redacts_prompts(serve, pipe, keys, tmp_path):
    import hashlib

    server = serve(pipe, redact_prompts=True)
    server.client.post(
        GEN, json={"prompt": "secret red dress", "negative_prompt": "hidden"}, headers=auth(keys[1]["gen"])
    )
    text = (tmp_path / "audit.jsonl").read_text()
    assert "secret" not in text and "hidden" not in text
    line = _audit(tmp_path)[0]
    assert line["prompt_sha256"] == ["sha256:" + hashlib.sha256(b"secret red dress").hexdigest()]
    assert "prompt" not in line


def test_metrics_health_and_readiness(serve, pipe, keys):
    server = serve(pipe)
    assert server.client.get("/healthz").json() == {"status": "ok"}
    assert server.client.get("/readyz", headers=auth(keys[1]["mon"])).json()["status"] == "ready"
    server.client.post(GEN, json={"prompt": "a", "n": 3}, headers=auth(keys[1]["gen"]))
    server.client.post(GEN, json={"prompt": "a", "n": 99}, headers=auth(keys[1]["gen"]))
    r = server.client.get("/metrics", headers=auth(keys[1]["mon"]))
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    for line in [
        'prodimg_http_requests_total{method="POST",route="/v1/images/generations",status="200"} 1.0',
        'prodimg_http_requests_total{method="POST",route="/v1/images/generations",status="422"} 1.0',
        'prodimg_http_requests_total{method="GET",route="/healthz",status="200"} 1.0',
        "prodimg_images_generated_total 3.0",
        "prodimg_queue_depth 0.0",
        'prodimg_batch_images_bucket{le="4.0"} 1.0',
        "prodimg_http_request_duration_seconds_bucket{",
        "prodimg_pipeline_seconds_count 1.0",
    ]:
        assert line in text, line


def test_index_page_is_served_with_a_strict_csp(shared):
    server, _ = shared
    r = server.client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "unsafe-inline" not in csp
    for element in (
        'id="prompt"',
        'id="n"',
        'id="seed"',
        'id="generate"',
        'id="api-key"',
        'id="results"',
        'id="error"',
    ):
        assert element in r.text
    assert "http://" not in r.text and "https://" not in r.text  # no external resources


def test_serve_command_defaults_to_loopback():
    args = build_parser().parse_args(["serve"])
    assert args.host == "127.0.0.1" and args.port == 8080 and callable(args.func)
    assert build_parser().parse_args(["keys", "add"]).scopes == "generate"


def test_serve_command_dtype_and_compile(pipeline_dir, tmp_path, eager_compile, monkeypatch):
    """--dtype and --compile load the pipeline through prodimg.backends.load_pipeline, and --compile runs the
    warm-up at batch 1 and --max-batch (short and long prompt) before the service starts."""
    from prodimg import serving

    served, calls = [], []
    original_call, original_app = ProductImagePipeline.__call__, create_app

    def call(self, prompt=None, *args, **kwargs):
        calls.append(len(prompt))
        return original_call(self, prompt, *args, **kwargs)

    def app(pipeline, *args, **kwargs):
        served.append(pipeline)
        return original_app(pipeline, *args, **kwargs)

    monkeypatch.setattr(ProductImagePipeline, "__call__", call)
    monkeypatch.setattr(serving, "create_app", app)
    monkeypatch.setattr(serving, "run_server", lambda app, host, port: None)
    argv = ["serve", "--pipeline", str(pipeline_dir), "--api-keys", str(tmp_path / "keys.json"),
            "--audit-log", "none"]
    assert main(argv + ["--dtype", "bfloat16", "--compile", "--max-batch", "3"]) == 0
    assert eager_compile == ["ProductGenerator"]
    assert calls == [1, 1, 3, 3]  # batch 1 and --max-batch, each with the short and the long prompt
    assert served[0].generator.dtype == torch.bfloat16 and served[0].generator._compiled_call_impl is not None
    calls.clear()
    assert main(argv) == 0
    assert calls == [] and served[1].generator.dtype == torch.float32  # no compile, no warm-up
    assert served[1].generator._compiled_call_impl is None
