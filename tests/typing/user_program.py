"""A small user program, type-checked by tests/test_typing.py with ``mypy --strict`` (never run)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future
from typing import Any, assert_type

import lifepool


class Model:
    def __init__(self, size: str = "small") -> None:
        self.size = size

    def __enter__(self) -> None:
        self.weights = [1.0, 2.0]

    def predict(self, x: int, *, scale: float = 1.0) -> float:
        return self.weights[0] * x * scale

    async def fetch(self, key: str) -> bytes:
        return key.encode()


def main() -> None:
    with lifepool.LifecyclePool(Model, containers=2) as pool:
        assert_type(pool, lifepool.LifecyclePool[Model])
        predict = pool.method(Model.predict)
        assert_type(predict.call(3), float)
        assert_type(predict.remote(3, scale=2.0), float)
        assert_type(predict.spawn(3), Future[float])
        assert_type(predict.map([1, 2, 3]), Iterator[float])
        assert_type(pool.method(Model.fetch).call("k"), bytes)  # an async method: what it awaits to
        assert_type(pool.predict, lifepool.RemoteMethod[..., Any])  # by attribute: not followed
        assert_type(pool.submit(len, "abc"), Future[int])
        assert_type(pool.map(str, [-1, 2]), Iterator[str])
        status = pool.status()
        assert_type(status, lifepool.PoolStatus)
        assert_type(status.state, lifepool.PoolState)
        for container in status.containers:
            assert_type(container.state, lifepool.ContainerState)
            assert_type(container.enter_seconds, float | None)
    assert_type(lifepool.LifecyclePool(Model(size="large"), min_containers=0), lifepool.LifecyclePool[Model])


async def amain(pool: lifepool.LifecyclePool[Model]) -> None:
    predict = pool.method(Model.predict)
    assert_type(await predict.call.aio(1), float)
    assert_type(predict.map.aio([1, 2]), AsyncIterator[float])
    assert_type(await pool.method(Model.fetch).remote.aio("k"), bytes)


def mistakes(pool: lifepool.LifecyclePool[Model]) -> None:
    pool.method(Model.predict).call("three")  # E: wrong argument type
    pool.method(Model.predict).spawn(1, scale="big")  # E: wrong keyword type
    pool.method(Model.predict).call()  # E: missing argument
    lifepool.LifecyclePool(Model, containers="4")  # E: wrong option type
