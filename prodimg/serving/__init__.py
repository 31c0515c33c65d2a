"""The HTTP service and its web page: ``prodimg serve`` (see ``prodimg.serving.app`` for the routes).

Needs the ``serve`` extra (fastapi, uvicorn, prometheus_client). Names are imported lazily so that
``prodimg --help`` and ``prodimg keys`` do not load the web stack.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "create_app": "app",
    "GENERATIONS_PATH": "app",
    "PUBLIC_PATHS": "app",
    "ROUTE_SCOPES": "app",
    "ServiceConfig": "config",
    "KeyStore": "keys",
    "add_key": "keys",
    "revoke_key": "keys",
    "list_keys": "keys",
    "SCOPES": "keys",
    "BackgroundServer": "server",
    "run_server": "server",
}
__all__ = [
    "GENERATIONS_PATH",
    "PUBLIC_PATHS",
    "ROUTE_SCOPES",
    "SCOPES",
    "BackgroundServer",
    "KeyStore",
    "ServiceConfig",
    "add_key",
    "create_app",
    "list_keys",
    "revoke_key",
    "run_server",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
