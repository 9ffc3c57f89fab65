"""The one module that knows both trio and asyncio.

The DHT (py-libp2p) runs on trio; grpc.aio runs on asyncio. trio runs in its
own thread (:func:`start_trio`), with its own epoll loop. (It used to run as a
guest on the asyncio loop: then every time trio waited for I/O, it handed the
wait to a worker thread and the result back through the asyncio loop, once per
batch of kad messages. A profile of a busy node put that at about a quarter of
its CPU. Now only the RPC traffic crosses threads: a job per call, an event
per streamed item.)

Batched items (:meth:`Bridge.batches`) go to asyncio when trio is about to
wait for I/O, all that are ready in one wake of the asyncio loop (see
:class:`_Handoff`). Waking the loop is a write to its self-pipe; the write lets
go of the GIL, the woken asyncio thread takes it, and trio waits its turn.
Measured with cProfile on the trio thread of a Provide loop (30 nodes on 2
cores), a socket write cost trio about 190 us on average, and a Provide woke
asyncio 27 times; it now wakes it about 7 times, and its batched stream is 4
gRPC messages instead of 12. Single items (:meth:`Bridge.stream`) and results
(:meth:`Bridge.call`) wake asyncio at once.

asyncio code calls into trio with :meth:`Bridge.call` (one result) or
:meth:`Bridge.stream` (items as they come, then a result). Both promise: if
the asyncio side is cancelled (client cancel, deadline, shutdown), the trio
work is cancelled too, and the call returns only after that work has ended,
so no task outlives its RPC. :meth:`Bridge.read` runs a short synchronous read
of trio-side state (gauges, Info) on the trio thread, so asyncio never reads
it while trio changes it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, Generic, TypeVar

import trio

from dhtd.errors import Unavailable

T = TypeVar("T")
R = TypeVar("R")

# After cancelling trio work for a cancelled RPC, how long the RPC waits for
# that work to end. trio cancellation is prompt; this only bounds a bug.
CANCEL_WAIT = 5.0

_END = object()

# Ours: the longest an item waits on the trio side while trio stays busy (it is
# handed over at once when trio is about to wait for I/O).
HANDOFF_DELAY_MAX = 0.001


class _Handoff(trio.abc.Instrument):
    """Hands the items of every job to asyncio in one wake of its loop, when trio
    is about to wait for I/O (it has nothing to run), or once items have waited
    HANDOFF_DELAY_MAX while trio stayed busy, and when trio ends. Trio thread only."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.jobs: list[_Job[Any]] = []
        self.since = 0.0  # when the oldest job in ``jobs`` was added (time.monotonic)

    def add(self, job: _Job[Any]) -> None:
        if not self.jobs:
            self.since = time.monotonic()
        self.jobs.append(job)

    def before_io_wait(self, timeout: float) -> None:
        if self.jobs and (timeout > 0 or time.monotonic() - self.since >= HANDOFF_DELAY_MAX):
            self.flush()

    def after_run(self) -> None:
        self.flush()

    def flush(self) -> None:
        if not self.jobs:
            return
        jobs, self.jobs = self.jobs, []
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
            self.loop.call_soon_threadsafe(_drain_all, jobs)


def _drain_all(jobs: list[_Job[Any]]) -> None:
    for job in jobs:
        job.drain()


class _Finish:
    __slots__ = ("outcome",)

    def __init__(self, outcome: tuple[bool, Any]) -> None:
        self.outcome = outcome


class _Job(Generic[T]):
    """One piece of trio work started from asyncio, with its cancel scope.

    Items and the outcome cross to asyncio through a deque, handed over by the
    bridge's :class:`_Handoff` (a walk emits its events in bursts)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, handoff: _Handoff,
                 eager: bool = False) -> None:
        self.loop = loop
        self.handoff = handoff
        self.eager = eager  # each item wakes asyncio at once (see Bridge.stream)
        self.scope: trio.CancelScope | None = None
        self.cancel_requested = False
        self.done = loop.create_future()
        self.items: asyncio.Queue[Any] = asyncio.Queue()
        self._pending: collections.deque[Any] = collections.deque()
        self._scheduled = False

    def put(self, item: Any) -> None:
        """Called from trio."""
        self._pending.append(item)
        self._wake()

    def finish(self, outcome: tuple[bool, Any]) -> None:
        """Called from trio, once, after the last put."""
        self._pending.append(_Finish(outcome))
        self._wake()

    def _wake(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            if not self.eager:
                self.handoff.add(self)
                return
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                self.loop.call_soon_threadsafe(self.drain)

    def drain(self) -> None:
        """Called from asyncio: moves what trio put to the items queue."""
        # Cleared before popping: an item appended after this line is either popped
        # below or sees the flag clear and wakes the loop again.
        self._scheduled = False
        while self._pending:
            item = self._pending.popleft()
            if isinstance(item, _Finish):
                self.items.put_nowait(_END)
                if not self.done.done():
                    self.done.set_result(item.outcome)
            else:
                self.items.put_nowait(item)


class Bridge:
    """Starts trio work from asyncio on the node's trio nursery."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._handoff = _Handoff(loop)

    def attach(self, nursery: trio.Nursery) -> None:
        """Called from trio: work started from asyncio will run in ``nursery``."""
        token = trio.lowlevel.current_trio_token()
        if token is not self._token:  # once per trio run
            trio.lowlevel.add_instrument(self._handoff)
        self._token = token
        self._nursery = nursery

    def detach(self) -> None:
        """Called from trio: no more work is started; what was put goes out now."""
        self._nursery = None
        self._handoff.flush()

    def call_soon_trio(self, fn: Callable[[], object]) -> None:
        """Called from asyncio: runs ``fn()`` on trio soon (a no-op once trio has ended)."""
        if self._token is None:
            return
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(fn)

    def read(self, fn: Callable[[], T]) -> T:
        """Called from asyncio (or any thread but trio's): runs the synchronous
        ``fn()`` on the trio thread and returns its result, blocking until then
        (trio runs it at its next scheduling point). Before trio runs or after it
        ended, nothing else touches trio's state, so ``fn()`` runs right here."""
        token = self._token
        if token is not None:
            with contextlib.suppress(trio.RunFinishedError):
                return trio.from_thread.run_sync(fn, trio_token=token)
        return fn()

    def to_asyncio(self, fn: Callable[..., object], *args: object) -> None:
        """Called from trio: runs ``fn(*args)`` on the asyncio loop soon."""
        self.loop.call_soon_threadsafe(fn, *args)

    def _start(self, job: _Job[Any], work: Callable[[], Awaitable[Any]]) -> None:
        token, nursery = self._token, self._nursery
        if token is None or nursery is None:
            raise Unavailable("the DHT node is not running (starting up or shutting down)")

        async def run() -> None:
            outcome: tuple[bool, Any] = (False, Unavailable("the DHT node is shutting down"))
            try:
                with trio.CancelScope() as scope:
                    job.scope = scope
                    if job.cancel_requested:
                        scope.cancel()
                    try:
                        outcome = (True, await work())
                    except Exception as exc:
                        outcome = (False, exc)
            finally:
                job.finish(outcome)

        def spawn() -> None:
            if self._nursery is not None:
                try:
                    self._nursery.start_soon(run)
                    return
                except RuntimeError:
                    # The nursery has closed (the node is going down). Raising
                    # here, in a run_sync_soon callback, would crash trio.
                    pass
            job.finish((False, Unavailable("the DHT node is shutting down")))

        try:
            token.run_sync_soon(spawn)
        except trio.RunFinishedError:
            raise Unavailable("the DHT node has stopped") from None

    async def _cancel(self, job: _Job[Any]) -> None:
        def cancel() -> None:
            job.cancel_requested = True
            if job.scope is not None:
                job.scope.cancel()

        if self._token is not None and not job.done.done():
            try:
                self._token.run_sync_soon(cancel)
            except trio.RunFinishedError:
                return
            with _suppress_cancel():
                await asyncio.wait_for(asyncio.shield(job.done), CANCEL_WAIT)

    async def call(self, work: Callable[[], Awaitable[T]]) -> T:
        """Runs ``work()`` on trio and returns its result (or raises its exception).
        The result wakes asyncio the moment the work ends (as :meth:`stream`)."""
        job: _Job[T] = _Job(self.loop, self._handoff, eager=True)
        self._start(job, work)
        try:
            ok, value = await asyncio.shield(job.done)
        except asyncio.CancelledError:
            await self._cancel(job)
            raise
        if ok:
            return value  # type: ignore[no-any-return]
        raise value

    async def stream(self, work: Callable[[Callable[[T], None]], Awaitable[R]]) -> AsyncIterator[T]:
        """Runs ``work(put)`` on trio; yields each item it puts, in order, as it comes.

        Each item wakes asyncio the moment it is put: a stream of one message per
        item (FindProvs' providers, events without batch_events) keeps asyncio
        writing while trio works, and a result goes out the moment it is found.

        After the last item, raises the work's exception if it failed. Closing
        the iterator early (or cancelling the consumer) cancels the work."""
        # aclosing: closing this iterator closes the inner one at once (and with it
        # the trio work), not whenever the garbage collector gets to it.
        async with contextlib.aclosing(self.batches(work, 1, eager=True)) as batches:
            async for batch in batches:
                yield batch[0]

    async def batches(
        self, work: Callable[[Callable[[T], None]], Awaitable[R]], limit: int,
        eager: bool = False,
    ) -> AsyncGenerator[list[T], None]:
        """As :meth:`stream`, but yields the items ready at once together: a list of
        at least one and at most ``limit``, in order. Unless ``eager``, items go to
        asyncio when trio is about to wait for I/O, or HANDOFF_DELAY_MAX after they
        were put while trio stays busy (see _Handoff)."""
        job: _Job[T] = _Job(self.loop, self._handoff, eager)
        self._start(job, lambda: work(job.put))
        try:
            ended = False
            while not ended:
                item = await job.items.get()
                if item is _END:
                    break
                batch = [item]
                while len(batch) < limit:
                    try:
                        item = job.items.get_nowait()
                    except asyncio.QueueEmpty:
                        break
                    if item is _END:
                        ended = True
                        break
                    batch.append(item)
                yield batch
            ok, value = job.done.result()
            if not ok:
                raise value
        finally:
            if not job.done.done():
                await self._cancel(job)


class _suppress_cancel:
    """Waits out a cancel without letting TimeoutError or CancelledError escape it."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: object, tb: object) -> bool:
        return kind is not None and issubclass(kind, (TimeoutError, asyncio.CancelledError))  # type: ignore[arg-type]


def start_trio(
    loop: asyncio.AbstractEventLoop, main: Callable[[], Awaitable[None]]
) -> asyncio.Future[None]:
    """Runs trio ``main`` in its own thread; the future (on ``loop``) resolves when
    trio ends, with trio's exception if it failed. The thread is a daemon: a bug
    that leaves trio running cannot keep the process alive after asyncio ends."""
    done: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if done.done():
            return
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    def run() -> None:
        error: BaseException | None = None
        try:
            trio.run(main)
        except BaseException as exc:  # handed to asyncio, which decides
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=run, name="dhtd-trio", daemon=True).start()
    return done
