"""`engines.base.cpu_turn`: a batch's CPU-bound steps take turns, one per event-loop turn, so whatever else the
loop serves (a poll's socket callbacks) waits for one step, not for every lane (issue 15, item 6). Counted in
steps, not timed: the result does not depend on how busy the machine is."""

from __future__ import annotations

import asyncio

from coldbatch.engines.base import BACKGROUND, cpu_turn

LANES = 8


async def _most_steps_between_probe_turns(background: bool) -> int:
    """Run LANES lanes that each do CPU steps under cpu_turn, and a probe that wakes every loop turn (as a
    socket callback would); return the most steps that ran between two of the probe's turns."""
    steps, running = 0, True

    async def lane() -> None:
        nonlocal steps
        BACKGROUND.set(background)
        while running:
            async with cpu_turn():
                steps += 1
                sum(range(2_000))  # a little CPU work
            await asyncio.sleep(0)

    lanes = [asyncio.create_task(lane()) for _ in range(LANES)]
    await asyncio.sleep(0)
    worst, last = 0, steps
    for _ in range(200):
        await asyncio.sleep(0)
        worst, last = max(worst, steps - last), steps
    running = False
    await asyncio.gather(*lanes)
    return worst


def test_batch_lanes_take_turns_one_step_per_loop_turn() -> None:
    assert asyncio.run(_most_steps_between_probe_turns(background=True)) <= 2


def test_outside_a_batch_lane_nothing_waits() -> None:
    """Hot requests (not in a lane) never queue behind batch steps: every lane runs in the same turn."""
    assert asyncio.run(_most_steps_between_probe_turns(background=False)) >= LANES - 1
