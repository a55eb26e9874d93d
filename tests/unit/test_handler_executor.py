"""The blocking-handler pool drops work whose kopf task was cancelled before it started, and
lets work already running finish (what keeps the operator's exit prompt under load)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from mentor_operator.handlers.startup import HandlerExecutor


def test_queued_work_of_a_cancelled_task_is_dropped_and_running_work_finishes():
    ran: list[str] = []
    release = threading.Event()

    def blocking(name: str) -> str:
        ran.append(name)
        release.wait(5)
        return name

    async def scenario() -> str:
        loop = asyncio.get_running_loop()
        with HandlerExecutor(max_workers=1) as pool:

            async def handler(name: str) -> str:
                # as kopf invokes a sync handler: it waits for the thread even when cancelled
                future = loop.run_in_executor(pool, blocking, name)
                while not future.done():
                    try:
                        await asyncio.shield(future)
                    except asyncio.CancelledError:
                        pass
                return future.result()

            running = asyncio.create_task(handler("running"))
            await asyncio.sleep(0.1)  # the pool's one thread is busy with it
            queued = asyncio.create_task(handler("queued"))
            await asyncio.sleep(0.1)
            queued.cancel()  # the operator is stopping
            release.set()
            with pytest.raises(asyncio.CancelledError):
                await queued
            return await running

    assert asyncio.run(scenario()) == "running"
    assert ran == ["running"]


def test_work_submitted_outside_the_event_loop_runs():
    with HandlerExecutor(max_workers=1) as pool:
        assert pool.submit(lambda: 42).result(5) == 42
