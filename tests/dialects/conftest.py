"""Fixtures the dialects' tests share: the Node clients and their processes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_twisted

from ..sioclients import ClientProcess, ensure_node_modules


@pytest.fixture(scope="session")
def node_modules() -> None:
    ensure_node_modules()


@pytest_twisted.async_yield_fixture
async def clients(node_modules: None) -> AsyncIterator[list[ClientProcess]]:
    """Client processes started by the test; all killed at the end."""
    started: list[ClientProcess] = []
    yield started
    for process in started:
        await process.stop()
