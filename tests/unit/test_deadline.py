"""Deadlines: they cancel their own task at the time in force, and only then; many share one
loop timer without keeping finished ones around."""

from __future__ import annotations

import asyncio

import pytest

from tokenrelay.relay.deadline import Deadline, _alarms_of


async def cancelled_after(deadline_in: float, moves: list[tuple[float, float]]) -> float:
    """Seconds until the deadline cancelled the task; ``moves`` are (after, new deadline in)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = Deadline(start + deadline_in)
    try:
        for after, new in moves:
            await asyncio.sleep(max(0.0, start + after - loop.time()))
            deadline.move(start + new)
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        assert deadline.expired()
        return loop.time() - start
    finally:
        deadline.disarm()
    raise AssertionError("the deadline never fired")


async def test_a_deadline_cancels_its_task_when_it_passes() -> None:
    took = await cancelled_after(0.1, [])
    assert 0.09 <= took < 1.0


async def test_a_deadline_moved_later_waits_for_the_later_time() -> None:
    took = await cancelled_after(0.1, [(0.05, 0.3)])
    assert 0.29 <= took < 1.0


async def test_a_deadline_moved_earlier_fires_at_the_earlier_time() -> None:
    took = await cancelled_after(5.0, [(0.05, 0.15)])
    assert 0.14 <= took < 1.0


async def test_deadlines_of_many_tasks_fire_in_order_and_disarmed_ones_never() -> None:
    fired: list[int] = []

    async def guarded(index: int, disarm: bool) -> None:
        deadline = Deadline(asyncio.get_running_loop().time() + 0.05 + index * 0.01)
        if disarm:
            deadline.disarm()
        try:
            await asyncio.sleep(0.5)
        except asyncio.CancelledError:
            assert deadline.expired()
            fired.append(index)
        finally:
            deadline.disarm()

    await asyncio.gather(*(guarded(i, disarm=i % 3 == 0) for i in range(20)))
    assert fired == [i for i in range(20) if i % 3 != 0]


async def test_someone_elses_cancel_is_not_the_deadlines() -> None:
    async def guarded() -> None:
        deadline = Deadline(asyncio.get_running_loop().time() + 5)
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            assert not deadline.expired()
            raise
        finally:
            deadline.disarm()

    task = asyncio.create_task(guarded())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_finished_deadlines_do_not_pile_up() -> None:
    # A busy gateway starts and ends thousands of streams long before their limits come due.
    alarms = _alarms_of(asyncio.get_running_loop())
    far = asyncio.get_running_loop().time() + 600
    for _ in range(5000):
        Deadline(far).disarm()
    assert len(alarms._heap) <= 600
