"""Unit tests for dhtd.bridge: asyncio calling into trio running in its own thread.

Each test runs ``asyncio.run`` with trio started in its thread by
:func:`dhtd.bridge.start_trio`, a trio main that attaches a nursery to the
Bridge, and shuts trio down at the end. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trio

from dhtd.bridge import HANDOFF_DELAY_MAX, Bridge, start_trio
from dhtd.errors import Unavailable

BOUND = 5.0  # seconds any single wait may take before the test fails


class Guest:
    """The trio side: a nursery attached to the bridge, until stop() is called."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, close_nursery_early: bool = False):
        self.bridge = Bridge(loop)
        self.ready: asyncio.Future[None] = loop.create_future()
        self.scope: trio.CancelScope | None = None
        self.close_nursery_early = close_nursery_early

    def _set_ready(self) -> None:
        if not self.ready.done():
            self.ready.set_result(None)

    async def main(self) -> None:
        with trio.CancelScope() as scope:
            self.scope = scope
            async with trio.open_nursery() as nursery:
                self.bridge.attach(nursery)
                if not self.close_nursery_early:
                    self.bridge.to_asyncio(self._set_ready)
                    await trio.sleep_forever()
            # The nursery has closed but the bridge was never detached.
            self.bridge.to_asyncio(self._set_ready)
            await trio.sleep_forever()
        self.bridge.detach()

    def stop(self) -> None:
        """Called on trio: ends main()."""
        assert self.scope is not None
        self.scope.cancel()


async def bounded(awaitable: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(awaitable, BOUND)


def run_guest(
    body: Callable[[Bridge, Guest], Awaitable[None]], *, close_nursery_early: bool = False
) -> None:
    """Runs ``body`` on asyncio with a live trio thread; shuts trio down cleanly."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        guest = Guest(loop, close_nursery_early=close_nursery_early)
        done = start_trio(loop, guest.main)
        finished, _ = await bounded(
            asyncio.wait({guest.ready, done}, return_when=asyncio.FIRST_COMPLETED)
        )
        assert guest.ready in finished, "trio ended before it was ready"
        try:
            await body(guest.bridge, guest)
        finally:
            guest.bridge.call_soon_trio(guest.stop)
            await bounded(done)  # raises if trio crashed
        assert done.result() is None

    asyncio.run(main())


# --- call -----------------------------------------------------------------------------------


def test_call_returns_the_value_of_trio_work() -> None:
    async def body(bridge: Bridge, guest: Guest) -> None:
        async def work() -> tuple[str, int]:
            await trio.sleep(0.001)
            return trio.lowlevel.current_task().name, 42

        name, value = await bounded(bridge.call(work))
        assert value == 42
        assert name  # it ran as a trio task
        # Several calls at once.
        results = await bounded(asyncio.gather(*(bridge.call(lambda i=i: echo(i))
                                                 for i in range(20))))
        assert results == list(range(20))

    async def echo(i: int) -> int:
        await trio.sleep(0.001 * (20 - i))
        return i

    run_guest(body)


def test_call_reraises_the_exception_of_trio_work() -> None:
    error = KeyError("missing")

    async def body(bridge: Bridge, guest: Guest) -> None:
        async def work() -> None:
            await trio.lowlevel.checkpoint()
            raise error

        with pytest.raises(KeyError) as info:
            await bounded(bridge.call(work))
        assert info.value is error

        async def unavailable() -> None:
            raise Unavailable("no peers")

        with pytest.raises(Unavailable, match="no peers"):
            await bounded(bridge.call(unavailable))

    run_guest(body)


def test_cancelling_call_cancels_the_trio_work_and_waits_for_it() -> None:
    log: list[str] = []

    async def body(bridge: Bridge, guest: Guest) -> None:
        started = asyncio.Event()

        async def work() -> None:
            bridge.to_asyncio(started.set)
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                log.append("cancelled")
                raise
            finally:
                # Cleanup that takes a while: call must wait for it.
                with trio.CancelScope(shield=True):
                    await trio.sleep(0.05)
                log.append("finally done")

        task = asyncio.create_task(bridge.call(work))
        await bounded(started.wait())
        assert log == []
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await bounded(task)
        assert log == ["cancelled", "finally done"]

    run_guest(body)


class HeldToken:
    """Stands in for the bridge's trio token and holds callbacks until released."""

    def __init__(self, real: trio.lowlevel.TrioToken) -> None:
        self.real = real
        self.held: list[Callable[[], object]] = []

    def run_sync_soon(self, fn: Callable[[], object]) -> None:
        self.held.append(fn)

    def release(self) -> None:
        for fn in self.held:
            self.real.run_sync_soon(fn)


def test_cancelling_call_before_the_work_starts() -> None:
    ran: list[str] = []

    async def body(bridge: Bridge, guest: Guest) -> None:
        async def work() -> None:
            ran.append("started")
            try:
                await trio.sleep_forever()
            finally:
                ran.append("ended")

        # Hold the start request, so that the cancel reaches trio before the
        # work has begun: both then run in one batch, start first.
        real = bridge._token
        assert real is not None
        held = HeldToken(real)
        bridge._token = held  # type: ignore[assignment]
        task = asyncio.create_task(bridge.call(work))
        await asyncio.sleep(0)
        assert len(held.held) == 1  # the start
        task.cancel()
        await asyncio.sleep(0)
        assert len(held.held) == 2  # the cancel
        bridge._token = real
        held.release()
        with pytest.raises(asyncio.CancelledError):
            await bounded(task)
        # The work began already cancelled: it ended at its first checkpoint.
        assert ran == ["started", "ended"]

    run_guest(body)


def test_call_in_flight_when_trio_shuts_down_raises_unavailable() -> None:
    ended: list[bool] = []

    async def body(bridge: Bridge, guest: Guest) -> None:
        started = asyncio.Event()

        async def work() -> None:
            bridge.to_asyncio(started.set)
            try:
                await trio.sleep_forever()
            finally:
                ended.append(True)

        task = asyncio.create_task(bridge.call(work))
        await bounded(started.wait())
        bridge.call_soon_trio(guest.stop)
        with pytest.raises(Unavailable, match="shutting down"):
            await bounded(task)
        assert ended == [True]
        # The bridge is detached now: new calls fail at once.
        with pytest.raises(Unavailable):
            await bounded(bridge.call(trio.lowlevel.checkpoint))

    run_guest(body)


# --- not attached ------------------------------------------------------------------------------


def test_call_before_attach_raises_unavailable() -> None:
    async def main() -> None:
        bridge = Bridge(asyncio.get_running_loop())
        with pytest.raises(Unavailable, match="not running"):
            await bounded(bridge.call(trio.lowlevel.checkpoint))

        async def work(put: Callable[[int], None]) -> None:
            put(1)

        with pytest.raises(Unavailable):
            async for _ in bridge.stream(work):
                pytest.fail("no item expected")

    asyncio.run(main())


def test_call_after_trio_has_ended_raises_unavailable() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        guest = Guest(loop)
        done = start_trio(loop, guest.main)
        await bounded(guest.ready)
        guest.bridge.call_soon_trio(guest.stop)
        await bounded(done)
        with pytest.raises(Unavailable):
            await bounded(guest.bridge.call(trio.lowlevel.checkpoint))
        guest.bridge.call_soon_trio(lambda: None)  # a no-op once trio has ended

    asyncio.run(main())


def test_call_into_a_closed_nursery_raises_unavailable_and_trio_survives() -> None:
    async def body(bridge: Bridge, guest: Guest) -> None:
        with pytest.raises(Unavailable):
            await bounded(bridge.call(trio.lowlevel.checkpoint))

        async def work(put: Callable[[int], None]) -> None:
            put(1)

        with pytest.raises(Unavailable):
            async for _ in bridge.stream(work):
                pass

    run_guest(body, close_nursery_early=True)


# --- stream --------------------------------------------------------------------------------------


def test_stream_yields_items_in_order() -> None:
    async def body(bridge: Bridge, guest: Guest) -> None:
        async def work(put: Callable[[int], None]) -> str:
            for i in range(50):
                put(i)
                if i % 7 == 0:
                    await trio.sleep(0.001)
            return "done"

        items = []

        async def consume() -> None:
            async for item in bridge.stream(work):
                items.append(item)

        await bounded(consume())
        assert items == list(range(50))

    run_guest(body)


def test_stream_with_no_items() -> None:
    async def body(bridge: Bridge, guest: Guest) -> None:
        async def work(put: Callable[[int], None]) -> None:
            await trio.lowlevel.checkpoint()

        async def consume() -> list[int]:
            return [item async for item in bridge.stream(work)]

        assert await bounded(consume()) == []

    run_guest(body)


def test_stream_raises_the_work_exception_after_the_items() -> None:
    async def body(bridge: Bridge, guest: Guest) -> None:
        async def work(put: Callable[[str], None]) -> None:
            put("a")
            await trio.sleep(0.001)
            put("b")
            raise LookupError("walk failed")

        seen: list[str] = []

        async def consume() -> None:
            async for item in bridge.stream(work):
                seen.append(item)

        with pytest.raises(LookupError, match="walk failed"):
            await bounded(consume())
        assert seen == ["a", "b"]

    run_guest(body)


def _endless_work(
    bridge: Bridge, log: list[str], ended: asyncio.Event | None = None
) -> Callable[[Callable[[int], None]], Awaitable[None]]:
    """Puts 0, 1, 2, then waits forever; logs its cancellation and cleanup."""

    async def work(put: Callable[[int], None]) -> None:
        try:
            for i in range(3):
                put(i)
            await trio.sleep_forever()
        except trio.Cancelled:
            log.append("cancelled")
            raise
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(0.02)
            log.append("finally done")
            if ended is not None:
                bridge.to_asyncio(ended.set)

    return work


def test_closing_a_stream_early_cancels_the_work() -> None:
    log: list[str] = []

    async def body(bridge: Bridge, guest: Guest) -> None:
        stream = bridge.stream(_endless_work(bridge, log))
        assert isinstance(stream, AsyncIterator)
        assert await bounded(anext(stream)) == 0
        assert log == []
        await bounded(stream.aclose())  # type: ignore[attr-defined]
        # aclose returns only after the trio work has ended.
        assert log == ["cancelled", "finally done"]

    run_guest(body)


def test_breaking_out_of_a_stream_cancels_the_work() -> None:
    log: list[str] = []

    async def body(bridge: Bridge, guest: Guest) -> None:
        ended = asyncio.Event()

        async def consume() -> int:
            async for item in bridge.stream(_endless_work(bridge, log, ended)):
                return item  # leaves the loop; asyncio finalizes the generator
            raise AssertionError("no item")

        assert await bounded(consume()) == 0
        await bounded(ended.wait())
        assert log == ["cancelled", "finally done"]

    run_guest(body)


def test_cancelling_a_stream_consumer_cancels_the_work() -> None:
    log: list[str] = []

    async def body(bridge: Bridge, guest: Guest) -> None:
        got: list[int] = []
        three = asyncio.Event()

        async def consume() -> None:
            async for item in bridge.stream(_endless_work(bridge, log)):
                got.append(item)
                if len(got) == 3:
                    three.set()

        task = asyncio.create_task(consume())
        await bounded(three.wait())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await bounded(task)
        assert log == ["cancelled", "finally done"]

    run_guest(body)


# --- the other direction ---------------------------------------------------------------------


def test_to_asyncio_and_call_soon_trio() -> None:
    async def body(bridge: Bridge, guest: Guest) -> None:
        loop = asyncio.get_running_loop()
        on_trio: asyncio.Future[bool] = loop.create_future()

        def from_trio() -> None:
            in_trio = trio.lowlevel.current_trio_token() is not None
            bridge.to_asyncio(on_trio.set_result, in_trio)

        bridge.call_soon_trio(from_trio)
        assert await bounded(on_trio) is True

    run_guest(body)


def test_trio_runs_in_its_own_thread_and_read_runs_there() -> None:
    async def body(bridge: Bridge, guest: Guest) -> None:
        asyncio_thread = threading.get_ident()
        trio_thread = await bounded(bridge.call(current_thread))
        assert trio_thread != asyncio_thread
        # read() runs a synchronous function on trio's thread and returns its value.
        assert bridge.read(threading.get_ident) == trio_thread

    run_guest(body)


def test_read_runs_in_place_before_trio_starts_and_after_it_ends() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        bridge = Bridge(loop)
        here = threading.get_ident()
        assert bridge.read(threading.get_ident) == here  # trio never ran
        guest = Guest(loop)
        guest.bridge = bridge
        done = start_trio(loop, guest.main)
        await bounded(guest.ready)
        assert bridge.read(threading.get_ident) != here
        bridge.call_soon_trio(guest.stop)
        await bounded(done)
        assert bridge.read(threading.get_ident) == here  # trio has ended

    asyncio.run(main())


def test_a_trio_crash_reaches_asyncio() -> None:
    async def main() -> None:
        async def crash() -> None:
            raise ValueError("trio broke")

        with pytest.raises(ValueError, match="trio broke"):
            await bounded(start_trio(asyncio.get_running_loop(), crash))

    asyncio.run(main())


async def current_thread() -> int:
    return threading.get_ident()


def test_a_burst_of_items_wakes_asyncio_per_batch_not_per_item() -> None:
    async def body(bridge: Bridge, guest: Guest) -> None:
        loop = asyncio.get_running_loop()
        wakes = 0
        original = loop.call_soon_threadsafe

        def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal wakes
            wakes += 1
            return original(*args, **kwargs)

        loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
        try:
            async def burst(put: Callable[[int], None]) -> None:
                for i in range(1000):
                    put(i)  # no checkpoint between: one burst

            got = [item async for item in bridge.stream(burst)]
        finally:
            loop.call_soon_threadsafe = original  # type: ignore[method-assign]
        assert got == list(range(1000))
        # Woken per batch, not per item (asyncio may drain while trio still puts: it
        # runs in its own thread, so a batch is whatever piled up meanwhile).
        assert wakes <= len(got) // 10

    run_guest(body)


def test_batches_yields_what_is_ready_in_order_at_most_limit_at_a_time() -> None:
    async def body(bridge: Bridge, guest: Guest) -> None:
        async def burst(put: Callable[[int], None]) -> None:
            for i in range(50):
                put(i)  # one burst: all ready before asyncio looks
            await trio.sleep(0.05)
            put(50)  # later, alone

        got = [batch async for batch in bridge.batches(burst, 8)]
        assert [i for batch in got for i in batch] == list(range(51))
        assert all(1 <= len(batch) <= 8 for batch in got)
        assert len(got) < 51  # ready items went together
        assert got[-1] == [50]

    run_guest(body)


def count_wakes(loop: asyncio.AbstractEventLoop) -> tuple[list[int], Callable[[], None]]:
    """Counts calls of loop.call_soon_threadsafe (wakes of the asyncio loop from
    another thread) until the returned undo is called."""
    wakes = [0]
    original = loop.call_soon_threadsafe

    def counted(*args: Any, **kwargs: Any) -> Any:
        wakes[0] += 1
        return original(*args, **kwargs)

    loop.call_soon_threadsafe = counted  # type: ignore[method-assign]

    def undo() -> None:
        loop.call_soon_threadsafe = original  # type: ignore[method-assign]

    return wakes, undo


def test_batched_items_and_the_end_go_to_asyncio_in_one_wake_when_trio_waits() -> None:
    """batches() hands over when trio is about to wait for I/O: items put while
    trio works, and the end of the work, wake asyncio once, not once per item
    (each wake hands the GIL to asyncio in the middle of trio's work)."""
    async def body(bridge: Bridge, guest: Guest) -> None:
        wakes, undo = count_wakes(asyncio.get_running_loop())
        try:
            async def work(put: Callable[[int], None]) -> None:
                for i in range(300):
                    put(i)

            got = [batch async for batch in bridge.batches(work, 1000)]
        finally:
            undo()
        assert got == [list(range(300))]
        assert wakes[0] == 1

    run_guest(body)


def test_batched_items_of_busy_trio_go_out_every_handoff_delay_max() -> None:
    """While trio stays runnable (a checkpoint after every item), items go out
    once they have waited HANDOFF_DELAY_MAX: one wake per such stretch, not one
    per item."""
    async def body(bridge: Bridge, guest: Guest) -> None:
        wakes, undo = count_wakes(asyncio.get_running_loop())
        busy: list[float] = []
        try:
            async def work(put: Callable[[int], None]) -> None:
                start = time.monotonic()
                for i in range(300):
                    put(i)
                    await trio.lowlevel.checkpoint()  # runnable again: trio does not wait
                busy.append(time.monotonic() - start)

            got = [batch async for batch in bridge.batches(work, 1000)]
        finally:
            undo()
        assert [i for batch in got for i in batch] == list(range(300))
        assert wakes[0] <= 2 + busy[0] / HANDOFF_DELAY_MAX
        assert wakes[0] < 30


def test_batched_items_wait_at_most_handoff_delay_max_while_trio_stays_busy() -> None:
    """While trio never waits for I/O, an item still reaches asyncio (after
    HANDOFF_DELAY_MAX): here the trio work spins until asyncio has the item."""
    async def body(bridge: Bridge, guest: Guest) -> None:
        seen = threading.Event()

        spun: list[float] = []

        async def work(put: Callable[[str], None]) -> None:
            put("first")
            start = time.monotonic()
            while not seen.is_set() and time.monotonic() - start < BOUND / 2:
                await trio.lowlevel.checkpoint()  # busy: always runnable
            spun.append(time.monotonic() - start)

        batches = bridge.batches(work, 10)
        first = await bounded(anext(batches))
        seen.set()
        assert first == ["first"]
        assert [batch async for batch in batches] == []
        # Handed over while trio spun (within the GIL's switch interval of 5 ms
        # and scheduling), long before the spin's own bound.
        assert spun[0] < BOUND / 10

    run_guest(body)


def test_eager_streams_wake_asyncio_the_moment_an_item_is_put() -> None:
    """stream() (one message per item: FindProvs' providers) wakes asyncio inside
    put(), not when trio next waits; batches() waits for that."""
    async def body(bridge: Bridge, guest: Guest) -> None:
        wakes, undo = count_wakes(asyncio.get_running_loop())
        at_put: dict[str, int] = {}
        try:
            def work(name: str) -> Callable[[Callable[[str], None]], Awaitable[None]]:
                async def run(put: Callable[[str], None]) -> None:
                    before = wakes[0]
                    put(name)
                    at_put[name] = wakes[0] - before  # (only trio wakes asyncio meanwhile)
                return run

            assert [item async for item in bridge.stream(work("eager"))] == ["eager"]
            assert [b async for b in bridge.batches(work("handoff"), 10)] == [["handoff"]]
        finally:
            undo()
        assert at_put == {"eager": 1, "handoff": 0}

    run_guest(body)


def test_the_last_work_of_a_trio_run_reaches_asyncio() -> None:
    """Batched work that ends trio as it finishes: its items still reach asyncio (the
    handoff goes out when the bridge is detached and when trio ends, not only
    when trio next waits for I/O)."""
    async def body(bridge: Bridge, guest: Guest) -> None:
        async def work(put: Callable[[str], None]) -> None:
            guest.stop()  # trio ends right after this work
            put("last")

        assert [b async for b in bridge.batches(work, 10)] == [["last"]]

    run_guest(body)
