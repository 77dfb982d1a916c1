"""Shared fixtures: a real broker process per test (or per module) on a free loopback port."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from tests.brokerproc import TARGET, BrokerProc


@pytest.fixture
def broker_factory(tmp_path) -> Iterator[Callable[..., BrokerProc]]:
    """`broker_factory(config=None)` starts a broker with `config` merged over the test defaults."""
    made: list[BrokerProc] = []

    def start(
        config: dict | None = None, name: str | None = None, port: int | None = None
    ) -> BrokerProc:
        b = BrokerProc(tmp_path / (name or f"broker{len(made)}"), config, port=port)
        made.append(b)
        return b.start()

    yield start
    for b in made:
        b.stop()


@pytest.fixture
def broker(broker_factory) -> BrokerProc:
    """A broker with the default configuration."""
    return broker_factory()


def pytest_collection_modifyitems(config, items):
    """Under FLUXMQ_TEST_BROKER=mosquitto, skip tests marked `fluxmq_only` (FluxMQ-specific)."""
    if TARGET != "mosquitto":
        return
    skip = pytest.mark.skip(
        reason="FluxMQ-specific behaviour (Mosquitto differs or cannot be configured)"
    )
    for item in items:
        if "fluxmq_only" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "fluxmq_only: FluxMQ-specific; skipped when testing Mosquitto"
    )
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
