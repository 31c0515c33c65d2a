"""The HTTP service (FastAPI): text-to-image generation behind API keys, limits, batching, metrics, audit.

Routes (``ROUTE_SCOPES`` is the table; ``create_app`` refuses to build an app with a route that is in
neither it nor ``PUBLIC_PATHS``):

=====  ==========================  ==========  =================================================
GET    /                           public      the web page (a browser cannot send a Bearer
                                               header when it navigates; the page holds no data)
GET    /healthz                    public      liveness: the process answers
GET    /readyz                     monitor     readiness: worker running and queue not full
GET    /metrics                    monitor     Prometheus text format
POST   /v1/images/generations      generate    generate images
=====  ==========================  ==========  =================================================

Every error is JSON: ``{"error": {"status": 422, "code": "prompt_too_long", "message": "...",
"param": "prompt"}}``. Order of checks for a generation: body size (413), API key (401/403), rate
limit (429), request validation (422), queue (503), deadline (504).

A prompt longer than the text encoder's 77 tokens (start and end tokens included) is refused with
422 ``prompt_too_long``; the service never truncates a prompt.

Reproducibility: the response carries ``seed``; image ``k`` of the request (prompt ``k // n``) is
generated with ``torch.Generator().manual_seed(seed + k)``, the same as ``prodimg generate --seed``.
Sending the same request again with that ``seed`` gives the same images.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import logging
import math
import secrets
import time
import uuid
import weakref
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from .audit import AuditLog
from .batcher import DeadlineExceededError, GenerationJob, MicroBatcher, QueueFullError, ServiceStoppedError
from .config import ServiceConfig
from .keys import SCOPE_GENERATE, SCOPE_MONITOR, ApiKey, KeyStore
from .metrics import ServiceMetrics
from .page import INDEX_HTML, PAGE_HEADERS
from .ratelimit import RateLimiter

logger = logging.getLogger(__name__)

GENERATIONS_PATH = "/v1/images/generations"
PUBLIC_PATHS = frozenset({"/", "/healthz"})
ROUTE_SCOPES = {
    ("GET", "/readyz"): SCOPE_MONITOR,
    ("GET", "/metrics"): SCOPE_MONITOR,
    ("POST", GENERATIONS_PATH): SCOPE_GENERATE,
}
MAX_SEED = 2**32 - 1
STATE_KEY = "prodimg"  # our per-request dict inside scope["state"] (what Request.state reads and writes)


# ---------------------------------------------------------------------- errors
class ServiceError(Exception):
    def __init__(
        self, status: int, code: str, message: str, param: str | None = None, headers: dict | None = None
    ):
        super().__init__(message)
        self.status, self.code, self.message, self.param, self.headers = (
            status,
            code,
            message,
            param,
            headers or {},
        )


def error_response(
    status: int, code: str, message: str, param: str | None = None, headers: dict | None = None
) -> JSONResponse:
    error: dict[str, Any] = {"status": status, "code": code, "message": message}
    if param is not None:
        error["param"] = param
    return JSONResponse({"error": error}, status_code=status, headers=headers)


HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}


# ---------------------------------------------------------------------- request body
class GenerationRequest(BaseModel):
    """Body of ``POST /v1/images/generations``. Unknown fields are refused (422), so typos surface."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str | None = None
    prompts: list[str] | None = None
    negative_prompt: str | None = None
    n: int = 1
    seed: int | None = None
    steps: int | None = None
    guidance_scale: float = 1.0
    response_format: Literal["png", "b64_json"] = "b64_json"


def _pydantic_error(err: ValidationError) -> ServiceError:
    first = err.errors(include_url=False)[0]
    param = ".".join(str(p) for p in first.get("loc", ())) or None
    message = f"{param}: {first['msg']}" if param else first["msg"]
    return ServiceError(422, "invalid_request", message, param=param)


# ---------------------------------------------------------------------- middleware
class ServiceMiddleware:
    """Outermost layer: body-size limit (413), request id, metrics by route template, audit line."""

    def __init__(self, app, config: ServiceConfig, metrics: ServiceMetrics, audit: AuditLog, routes=None):
        self.app, self.config, self.metrics, self.audit = app, config, metrics, audit
        self.routes = (
            routes  # a callable returning the app's routes, to label requests refused before routing
        )

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.monotonic()
        request_id = uuid.uuid4().hex[:16]
        info: dict[str, Any] = {"start": start, "request_id": request_id}
        scope.setdefault("state", {})[STATE_KEY] = info
        state = {"status": 500, "observed": False}

        def observe() -> None:
            if not state["observed"]:
                state["observed"] = True
                self._observe(scope, info, state["status"], time.monotonic() - start)

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                message["headers"] = list(message.get("headers") or []) + [
                    (b"x-request-id", request_id.encode())
                ]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                observe()  # before the last byte leaves, so a client that got its answer finds the audit line
            await send(message)

        try:
            body_receive = await self._limit_body(scope, receive)
            if body_receive is None:
                limit = self.config.max_body_bytes
                response = error_response(
                    413, "body_too_large", f"request body exceeds {limit} bytes ({limit // 1024} KB)"
                )
                await response(scope, receive, send_wrapper)
            else:
                await self.app(scope, body_receive, send_wrapper)
        finally:
            observe()

    async def _limit_body(self, scope, receive):
        """Read the whole body (at most ``max_body_bytes``) up front; None when it is too large."""
        limit = self.config.max_body_bytes
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                if int(length) > limit:
                    return None
            except ValueError:
                return None
        if scope["method"] in ("GET", "HEAD", "OPTIONS") and length is None:
            return receive
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break  # client went away; let the app see an empty body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay

    def _observe(self, scope, info: dict, status: int, latency: float) -> None:
        route = scope.get("route")
        if route is None and self.routes is not None:
            route = next((r for r in self.routes() if r.matches(scope)[0] != Match.NONE), None)
        route_path = getattr(route, "path", None) or "unmatched"
        method = scope["method"]
        self.metrics.requests.labels(route_path, method, str(status)).inc()
        self.metrics.latency.labels(route_path, method).observe(latency)
        try:
            client = scope.get("client")
            self.audit.record(
                key_id=info.get("key_id"),
                method=method,
                route=route_path,
                status=status,
                latency_s=latency,
                request_id=info["request_id"],
                n=info.get("n"),
                prompts=info.get("prompts"),
                negative_prompt=info.get("negative_prompt"),
                seed=info.get("seed"),
                client=client[0] if client else None,
            )
        except Exception:  # the audit log must never turn an answer into a 500
            logger.exception("could not write the audit line")


def _info(request: Request) -> dict:
    return request.scope.setdefault("state", {}).setdefault(
        STATE_KEY, {"start": time.monotonic(), "request_id": "-"}
    )


# ---------------------------------------------------------------------- the app
_TOKENIZER_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _counting_tokenizer(pipeline):
    """A private copy of the pipeline's tokenizer for counting tokens on the event loop: a Rust
    tokenizer must not be called from two threads at once, and the worker thread uses the original."""
    try:
        return _TOKENIZER_COPIES[pipeline]
    except (KeyError, TypeError):
        pass
    tokenizer = copy.deepcopy(pipeline.tokenizer)
    try:
        _TOKENIZER_COPIES[pipeline] = tokenizer
    except TypeError:
        pass
    return tokenizer


def create_app(pipeline, config: ServiceConfig | None = None, keys: KeyStore | str | None = None) -> FastAPI:
    """Build the service around a loaded ``ProductImagePipeline`` (the app never loads models itself).

    ``keys``: a ``KeyStore`` or the path of a keys file (``prodimg keys add``); without keys every
    authenticated route answers 401.
    """
    config = config or ServiceConfig()
    keystore = keys if isinstance(keys, KeyStore) else KeyStore(keys)
    metrics = ServiceMetrics()
    audit = AuditLog(config.audit_log, redact_prompts=config.redact_prompts)
    limiter = RateLimiter(config.rate_limit, config.rate_burst)
    batcher = MicroBatcher(pipeline, config.max_batch_images, config.max_wait_ms, config.queue_size, metrics)
    tokenizer = _counting_tokenizer(pipeline)
    max_tokens = int(pipeline.max_text_length)
    max_steps = int(pipeline.scheduler.config.num_train_timesteps)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start(warmup=config.warmup)
        try:
            yield
        finally:
            await batcher.stop()
            audit.close()

    app = FastAPI(
        title="prodimg",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    app.state.config, app.state.keys, app.state.metrics = config, keystore, metrics
    app.state.batcher, app.state.audit, app.state.limiter = batcher, audit, limiter
    app.state.route_scopes = dict(ROUTE_SCOPES)
    app.add_middleware(
        ServiceMiddleware, config=config, metrics=metrics, audit=audit, routes=lambda: app.routes
    )

    # ---------------------------------------------------------------- errors as JSON
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, err: ServiceError):
        return error_response(err.status, err.code, err.message, err.param, err.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException):
        return error_response(
            err.status_code,
            HTTP_CODES.get(err.status_code, "http_error"),
            str(err.detail),
            headers=err.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {"msg": "invalid request", "loc": ()}
        return error_response(422, "invalid_request", str(first.get("msg")))

    # ---------------------------------------------------------------- auth
    def require_scope(scope_name: str):
        async def check_key(request: Request) -> ApiKey:
            bearer = {"WWW-Authenticate": 'Bearer realm="prodimg"'}
            header = request.headers.get("authorization")
            if not header:
                raise ServiceError(
                    401, "missing_api_key", "send an API key as 'Authorization: Bearer <key>'", headers=bearer
                )
            scheme, _, token = header.partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                raise ServiceError(
                    401,
                    "invalid_authorization",
                    "the Authorization header must be 'Bearer <key>'",
                    headers=bearer,
                )
            key = keystore.lookup(token)
            if key is None:
                raise ServiceError(401, "invalid_api_key", "unknown or revoked API key", headers=bearer)
            _info(request)["key_id"] = key.id
            if scope_name not in key.scopes:
                raise ServiceError(
                    403,
                    "insufficient_scope",
                    f"this API key lacks the '{scope_name}' scope needed here",
                    headers={
                        "WWW-Authenticate": f'Bearer realm="prodimg", error="insufficient_scope", scope="{scope_name}"'
                    },
                )
            return key

        return check_key

    def scoped(method: str, path: str):
        """The auth dependency of a route, with the scope that ``ROUTE_SCOPES`` names for it."""
        return Depends(require_scope(ROUTE_SCOPES[(method, path)]))

    # ---------------------------------------------------------------- public routes
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(INDEX_HTML, headers=PAGE_HEADERS)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    # ---------------------------------------------------------------- monitor routes
    @app.get("/readyz")
    async def readyz(key: ApiKey = scoped("GET", "/readyz")):  # noqa: B008
        if not batcher.running:
            raise ServiceError(503, "not_ready", "the generation worker is not running")
        if batcher.depth >= config.queue_size:
            raise ServiceError(
                503,
                "queue_full",
                f"the queue is full ({batcher.depth} requests)",
                headers={"Retry-After": "1"},
            )
        if keystore.error:
            raise ServiceError(503, "keys_unusable", f"the API keys file is unusable: {keystore.error}")
        return {"status": "ready", "queue_depth": batcher.depth, "queue_size": config.queue_size}

    @app.get("/metrics")
    async def prometheus_metrics(key: ApiKey = scoped("GET", "/metrics")) -> Response:  # noqa: B008
        return Response(metrics.render(), media_type=metrics.content_type)

    # ---------------------------------------------------------------- generation
    def count_tokens(text: str) -> int:
        return len(tokenizer(text, truncation=False, verbose=False)["input_ids"])

    def check_text(text: str, param: str) -> None:
        if len(text) > config.max_prompt_chars:
            raise ServiceError(
                422,
                "prompt_too_long",
                f"{param} has {len(text)} characters; at most {config.max_prompt_chars}",
                param,
            )
        tokens = count_tokens(text)
        if tokens > max_tokens:
            raise ServiceError(
                422,
                "prompt_too_long",
                f"{param} has {tokens} tokens; the text encoder reads at most {max_tokens} (start and end tokens "
                "included). Shorten it: prompts are never truncated.",
                param,
            )

    def validate(req: GenerationRequest) -> tuple[list[str], int]:
        if (req.prompt is None) == (req.prompts is None):
            raise ServiceError(
                422,
                "invalid_request",
                "send exactly one of 'prompt' (a string) or 'prompts' (a list)",
                "prompt",
            )
        prompts = [req.prompt] if req.prompt is not None else list(req.prompts)
        if not 1 <= len(prompts) <= config.max_prompts:
            raise ServiceError(
                422,
                "invalid_request",
                f"'prompts' must hold 1 to {config.max_prompts} prompts, got {len(prompts)}",
                "prompts",
            )
        for i, text in enumerate(prompts):
            param = "prompt" if req.prompt is not None else f"prompts.{i}"
            if not text.strip():
                raise ServiceError(422, "invalid_request", f"{param} is empty", param)
            check_text(text, param)
        if req.negative_prompt is not None:
            check_text(req.negative_prompt, "negative_prompt")
        if not 1 <= req.n <= config.max_n:
            raise ServiceError(
                422, "invalid_request", f"n must be between 1 and {config.max_n}, got {req.n}", "n"
            )
        total = len(prompts) * req.n
        if total > config.max_images_per_request:
            raise ServiceError(
                422,
                "invalid_request",
                f"{len(prompts)} prompts x n={req.n} = {total} images; at most {config.max_images_per_request} per request",
                "n",
            )
        if req.steps is not None and not 1 <= req.steps <= max_steps:
            raise ServiceError(
                422, "invalid_request", f"steps must be between 1 and {max_steps}, got {req.steps}", "steps"
            )
        g = req.guidance_scale
        if not math.isfinite(g) or not 0.0 <= g <= config.max_guidance_scale:
            raise ServiceError(
                422,
                "invalid_request",
                f"guidance_scale must be between 0 and {config.max_guidance_scale}, got {g}",
                "guidance_scale",
            )
        if req.seed is not None and not 0 <= req.seed <= MAX_SEED:
            raise ServiceError(
                422, "invalid_request", f"seed must be between 0 and {MAX_SEED}, got {req.seed}", "seed"
            )
        if req.response_format == "png" and total != 1:
            raise ServiceError(
                422,
                "invalid_request",
                f"response_format 'png' returns exactly one image; this request makes {total} "
                "(use 'b64_json')",
                "response_format",
            )
        return prompts, total

    @app.post(GENERATIONS_PATH)
    async def generate_images(
        request: Request,
        key: ApiKey = scoped("POST", GENERATIONS_PATH),  # noqa: B008
    ) -> Response:
        info = _info(request)
        wait = limiter.acquire(key.id)
        if wait > 0:
            metrics.rejected.labels("rate_limited").inc()
            raise ServiceError(
                429,
                "rate_limited",
                f"rate limit of {limiter.rate:g} requests/s for this key exceeded; retry in {wait:.2f} s",
                headers={"Retry-After": limiter.retry_after_header(wait)},
            )
        body = await request.body()
        try:
            req = GenerationRequest.model_validate_json(body)
        except ValidationError as err:
            raise _pydantic_error(err) from None
        raw_prompts = [req.prompt] if req.prompt is not None else req.prompts
        info.update(
            prompts=raw_prompts, negative_prompt=req.negative_prompt, n=len(raw_prompts or []) * req.n
        )
        prompts, total = validate(req)
        seed = req.seed if req.seed is not None else secrets.randbelow(MAX_SEED + 1)
        info.update(n=total, seed=seed)

        deadline = info["start"] + config.timeout_s
        steps = req.steps if req.steps is not None else max_steps
        job = GenerationJob(
            prompts=prompts,
            n=req.n,
            seed=seed,
            steps=steps,  # explicit, so that "steps omitted" and "steps = T" share batches
            guidance_scale=float(req.guidance_scale),
            negative_prompt=req.negative_prompt,
            deadline=deadline,
        )
        try:
            future = batcher.submit(job)
        except QueueFullError as err:
            metrics.rejected.labels("queue_full").inc()
            raise ServiceError(
                503, "queue_full", f"the service is busy ({err}); retry shortly", headers={"Retry-After": "1"}
            ) from None
        except ServiceStoppedError as err:
            raise ServiceError(503, "unavailable", str(err)) from None
        try:
            pngs = await asyncio.wait_for(asyncio.shield(future), max(0.0, deadline - time.monotonic()))
        except (asyncio.TimeoutError, DeadlineExceededError):
            job.abandoned = True
            metrics.rejected.labels("deadline").inc()
            raise ServiceError(
                504, "deadline_exceeded", f"the images were not ready within {config.timeout_s:g} s"
            ) from None
        except ServiceStoppedError as err:
            raise ServiceError(503, "unavailable", str(err)) from None
        except asyncio.CancelledError:
            job.abandoned = True  # the client went away
            raise
        except Exception as err:  # noqa: BLE001 - any pipeline failure becomes this request's 500
            metrics.rejected.labels("failed").inc()
            logger.error("generation failed for request %s: %r", info.get("request_id"), err)
            raise ServiceError(500, "generation_failed", "the pipeline failed on this request") from None
        metrics.images.inc(len(pngs))

        if req.response_format == "png":
            return Response(
                pngs[0],
                media_type="image/png",
                headers={
                    "X-Prodimg-Seed": str(seed),
                    "X-Prodimg-Steps": str(steps),
                    "Cache-Control": "no-store",
                },
            )
        data = [
            {
                "index": k,
                "prompt_index": k // req.n,
                "seed": seed + k,
                "b64_json": base64.b64encode(png).decode("ascii"),
            }
            for k, png in enumerate(pngs)
        ]
        return JSONResponse(
            {
                "created": int(time.time()),
                "id": info["request_id"],
                "seed": seed,
                "steps": steps,
                "guidance_scale": req.guidance_scale,
                "truncated": False,
                "data": data,
            },
            headers={"Cache-Control": "no-store"},
        )

    _check_route_table(app)
    return app


def _check_route_table(app: FastAPI) -> None:
    """Every route is public by name or carries a scope: a new route cannot skip authentication."""
    for route in app.routes:
        if not isinstance(route, APIRoute) or route.path in PUBLIC_PATHS:
            continue
        for method in route.methods:
            if (method, route.path) not in ROUTE_SCOPES:
                raise RuntimeError(
                    f"route {method} {route.path} has no scope in ROUTE_SCOPES and is not public"
                )
    if any(
        not isinstance(r, APIRoute)
        for r in app.routes
        if getattr(r, "path", None) not in (None,) and r.path not in PUBLIC_PATHS
    ):
        raise RuntimeError("only APIRoute routes are allowed (each one is checked for a scope)")


__all__ = [
    "GENERATIONS_PATH",
    "PUBLIC_PATHS",
    "ROUTE_SCOPES",
    "GenerationRequest",
    "ServiceError",
    "create_app",
]
