"""Running a long-lived link's loops together (the MQTT publisher, the Home Assistant names client)."""

from __future__ import annotations

import asyncio
from typing import Any, Coroutine


async def until_first_ends(*loops: Coroutine[Any, Any, Any]) -> None:
    """Run ``loops`` as tasks until one of them ends, cancel and await the others, then
    re-raise what ended it (the earliest in argument order among those that ended): a
    link's reader and writer go down together, and the caller sees why."""
    tasks = [asyncio.create_task(loop) for loop in loops]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    next(task for task in tasks if task in done).result()
