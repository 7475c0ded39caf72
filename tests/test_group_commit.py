"""The batch processor: group commit by size and age, pushback when full, drain on shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta

import pytest

from labtel.collector.component import ExportRejected, ExportUnavailable, Payload, Verdict
from labtel.collector.config import BatchProcessorConfig
from labtel.collector.otlp.signals import LOGS
from labtel.collector.processors.batch import GroupCommit


class Recorder:
    """A BatchConsumer that records the batches it gets and can be held back."""

    def __init__(self, delay: float = 0.0, reject: str | None = None) -> None:
        self.batches: list[list[bytes]] = []
        self.delay = delay
        self.reject = reject
        self.fail: Exception | None = None

    async def consume_batch(self, batch: Sequence[Payload]) -> list[Verdict]:
        await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        self.batches.append([p.data for p in batch])
        return [self.reject if p.data == b"bad" else None for p in batch]


def payload(data: bytes, records: int = 10) -> Payload:
    return Payload(LOGS, data, records)


def config(**kwargs: object) -> BatchProcessorConfig:
    return BatchProcessorConfig.model_validate({"timeout": "50ms", "send_batch_size": 100, **kwargs})


async def test_concurrent_calls_share_one_insert() -> None:
    sink = Recorder()
    group = GroupCommit(config(send_batch_size=30), sink, max_in_flight=1)
    await asyncio.gather(*(group.consume(payload(bytes([i]))) for i in range(3)))
    assert sink.batches == [[b"\x00", b"\x01", b"\x02"]]


async def test_a_lone_call_is_flushed_by_age() -> None:
    sink = Recorder()
    group = GroupCommit(config(timeout="80ms"), sink)
    started = asyncio.get_running_loop().time()
    await group.consume(payload(b"alone"))
    assert asyncio.get_running_loop().time() - started >= 0.075
    assert sink.batches == [[b"alone"]]


async def test_batches_respect_the_maximum_size() -> None:
    sink = Recorder(delay=0.05)
    group = GroupCommit(config(send_batch_size=20, send_batch_max_size=20), sink, max_in_flight=1)
    await asyncio.gather(*(group.consume(payload(bytes([i]))) for i in range(6)))
    assert [len(batch) for batch in sink.batches] == [2, 2, 2]


async def test_each_call_gets_its_own_verdict() -> None:
    group = GroupCommit(config(), Recorder(reject="invalid trace id"))
    results = await asyncio.gather(
        group.consume(payload(b"good")), group.consume(payload(b"bad")), return_exceptions=True
    )
    assert results[0] is None
    assert isinstance(results[1], ExportRejected)
    assert results[1].message == "invalid trace id"


async def test_a_full_queue_pushes_back_instead_of_growing() -> None:
    sink = Recorder(delay=0.3)
    group = GroupCommit(config(send_batch_size=10), sink, max_in_flight=1, queue_size=25)
    first = asyncio.ensure_future(group.consume(payload(b"a", 10)))
    second = asyncio.ensure_future(group.consume(payload(b"b", 10)))
    await asyncio.sleep(0.01)
    with pytest.raises(ExportUnavailable, match="queue is full"):
        await group.consume(payload(b"c", 10))
    await asyncio.gather(first, second)
    await group.consume(payload(b"d", 10))  # room again once stored


async def test_storage_failure_reaches_every_caller() -> None:
    sink = Recorder()
    sink.fail = ExportUnavailable("storage is away", retry_after_s=3)
    group = GroupCommit(config(), sink)
    results = await asyncio.gather(group.consume(payload(b"x")), group.consume(payload(b"y")), return_exceptions=True)
    assert [type(r) for r in results] == [ExportUnavailable, ExportUnavailable]
    assert all(getattr(r, "retry_after_s", None) == 3 for r in results)


async def test_shutdown_stores_what_is_waiting() -> None:
    sink = Recorder()
    group = GroupCommit(config(timeout=timedelta(seconds=30)), sink)
    waiting = [asyncio.ensure_future(group.consume(payload(bytes([i])))) for i in range(3)]
    await asyncio.sleep(0.01)
    await group.shutdown()
    await asyncio.gather(*waiting)
    assert sorted(data for batch in sink.batches for data in batch) == [b"\x00", b"\x01", b"\x02"]
    with pytest.raises(ExportUnavailable, match="shutting down"):
        await group.consume(payload(b"late"))
