from __future__ import annotations

import asyncio

from coldbatch.server.scheduler import COLD, HOT, Slots


def test_a_freed_slot_goes_to_the_waiting_hot_request_before_older_cold_ones() -> None:
    async def main() -> list[str]:
        slots = Slots(1)
        order: list[str] = []
        await slots.acquire(COLD)  # batch work holds the only slot

        async def want(name: str, prio: int) -> None:
            async with slots.slot(prio):
                order.append(name)

        tasks = [asyncio.create_task(want("cold-1", COLD)), asyncio.create_task(want("cold-2", COLD))]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(want("hot", HOT)))  # arrives last
        await asyncio.sleep(0)
        assert slots.hot_waiting == 1
        slots.release()
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(main()) == ["hot", "cold-1", "cold-2"]


def test_a_cancelled_waiter_does_not_leak_its_slot() -> None:
    async def main() -> int:
        slots = Slots(1)
        await slots.acquire(COLD)
        waiter = asyncio.create_task(slots.acquire(HOT))
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        slots.release()
        await asyncio.wait_for(slots.acquire(COLD), 1)  # the slot is free again
        return slots.in_use

    assert asyncio.run(main()) == 1
