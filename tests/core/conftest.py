"""Fixtures the core tests share."""

from __future__ import annotations

import pytest

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
