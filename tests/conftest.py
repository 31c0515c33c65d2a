"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def eager_compile(monkeypatch):
    """``nn.Module.compile`` traced by dynamo but run by its eager backend: the wiring of ``--compile``
    without inductor's code generation (about a minute for the tiny generator on 2 cores; the real
    backend is exercised by a slow test and by benchmarks/sampling_speed.py --compile). Yields the class
    names of the modules compiled, in order."""
    calls = []
    original = torch.nn.Module.compile

    def compile(self, *args, **kwargs):
        calls.append(type(self).__name__)
        return original(self, *args, **{**kwargs, "backend": "eager"})

    monkeypatch.setattr(torch.nn.Module, "compile", compile)
    torch._dynamo.reset()
    yield calls
    torch._dynamo.reset()
