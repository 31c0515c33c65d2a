"""Audit log: one JSON line per HTTP request (time, key id, route, status, latency, images, prompt)."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import sys
import threading
from typing import Any, TextIO


def prompt_hash(prompt: str) -> str:
    return "sha256:" + hashlib.sha256(prompt.encode("utf-8")).hexdigest()


class AuditLog:
    """Appends JSON lines to a file (created 0600: prompts can be confidential), or to stderr for ``"-"``.

    With ``redact_prompts`` the prompts are replaced by their SHA-256 (``prompt_sha256``), which still
    lets an operator check whether a given text was sent without storing it.
    """

    def __init__(self, path: str | None, redact_prompts: bool = False):
        self.redact_prompts = redact_prompts
        self._lock = threading.Lock()
        self._stream: TextIO | None
        self._owned = False
        if path is None:
            self._stream = None
        elif path == "-":
            self._stream = sys.stderr
        else:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._stream = os.fdopen(fd, "a", encoding="utf-8", buffering=1)
            self._owned = True

    def record(
        self,
        *,
        key_id: str | None,
        method: str,
        route: str,
        status: int,
        latency_s: float,
        request_id: str,
        n: int | None = None,
        prompts: list[str] | None = None,
        negative_prompt: str | None = None,
        seed: int | None = None,
        client: str | None = None,
    ) -> dict[str, Any] | None:
        if self._stream is None:
            return None
        line: dict[str, Any] = {
            "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"),
            "request_id": request_id,
            "key_id": key_id,
            "client": client,
            "method": method,
            "route": route,
            "status": status,
            "latency_ms": round(latency_s * 1000.0, 3),
            "n": n,
        }
        if seed is not None:
            line["seed"] = seed
        if prompts is not None:
            if self.redact_prompts:
                line["prompt_sha256"] = [prompt_hash(p) for p in prompts]
                if negative_prompt is not None:
                    line["negative_prompt_sha256"] = prompt_hash(negative_prompt)
            else:
                line["prompt"] = prompts
                if negative_prompt is not None:
                    line["negative_prompt"] = negative_prompt
        text = json.dumps(line, ensure_ascii=False) + "\n"
        with self._lock:
            self._stream.write(text)
            self._stream.flush()
        return line

    def close(self) -> None:
        if self._owned and self._stream is not None:
            self._stream.close()
            self._stream = None
