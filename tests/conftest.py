"""Fixtures every test directory shares.

``gateway.store.db`` is imported first: it makes sqlite-utils use sqlcipher3 (ARCHITECTURE.md:
its error handling catches the driver's own OperationalError), which only works if that happens
before anything imports sqlite_utils, and a test module may import sqlite_utils itself."""

from __future__ import annotations

import pytest

import gateway.store.db  # noqa: F401  (first: see the module docstring)
from gateway.plugin import Registry
from gateway.testing.fake_channel import FakeChannel
from gateway.testing.fake_llm import FakeProvider


@pytest.fixture
def fake_registry() -> Registry:
    """A registry where ``plugin = "fake"`` means FakeChannel for a channel, FakeProvider for a
    provider, and nothing else is known."""
    registry = Registry()
    registry.add("channel", "fake", FakeChannel)
    registry.add("llm", "fake", FakeProvider)
    return registry
