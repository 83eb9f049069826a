"""Fixtures for the examples' tests: a real Redis, and the services' databases."""

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from examples.outbox import billing, orders
from examples.redis_server import MISSING, RedisServer


@pytest.fixture
def redis_installed() -> None:
    """Fails the test, saying how to install it, if redis-server is not on PATH."""
    if shutil.which("redis-server") is None:
        pytest.fail(MISSING, pytrace=False)


@pytest.fixture
def redis_server(redis_installed: None, tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, stopped when the test ends."""
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def databases(tmp_path: Path) -> tuple[str, str]:
    """The order service's and the billing service's SQLite databases, made empty."""
    paths = str(tmp_path / "orders.db"), str(tmp_path / "billing.db")
    orders.connect(paths[0]).close()
    billing.connect(paths[1]).close()
    return paths
