"""What dhtctl shows: result lines on stdout, and on a terminal a live progress line on stderr.

The progress line is redrawn in place (carriage return, then "erase line") from the query
events of a lookup, or as a spinner with the elapsed time for calls that have no events.
It is erased before every result or event line is written, and when the command ends, so
the terminal keeps only the results.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TextIO

from ._models import QueryEvent, QueryEventType

__all__ = ["Screen", "Status", "describe_event"]

# Carriage return + "erase the whole line" (ECMA-48 EL 2).
CLEAR_LINE = "\r\x1b[2K"
TICK_SECONDS = 0.1
# Events redraw the line at most this often; the ticker redraws it in between.
MIN_REDRAW_SECONDS = 0.04


@dataclass(frozen=True)
class Glyphs:
    ellipsis: str
    dot: str
    spinner: str


UNICODE = Glyphs("…", "·", "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏")
ASCII = Glyphs("...", "-", "|/-\\")


def _plural(n: int, word: str, words: str | None = None) -> str:
    return f"{n} {word if n == 1 else (words or word + 's')}"


@dataclass
class Status:
    """The state of one running command, as the progress line shows it.

    ``kind`` is "walk" (counts query events), "found" (counts results) or "plain"
    (a spinner and the elapsed time only). ``final_word`` names FINAL_PEER events
    ("closest", "stored", "announced").
    """

    label: str
    kind: str = "plain"
    final_word: str | None = None
    queried: int = 0
    responded: int = 0
    errors: int = 0
    finals: int = 0
    found: int = 0
    started: float = field(default_factory=time.monotonic)

    def count(self, event: QueryEvent) -> None:
        if event.type is QueryEventType.SENDING_QUERY:
            self.queried += 1
        elif event.type is QueryEventType.PEER_RESPONSE:
            self.responded += 1
        elif event.type is QueryEventType.QUERY_ERROR:
            self.errors += 1
        elif event.type is QueryEventType.FINAL_PEER:
            self.finals += 1

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def render(self, glyphs: Glyphs, frame: int) -> str:
        spin = glyphs.spinner[frame % len(glyphs.spinner)]
        parts: list[str] = []
        if self.kind == "walk":
            parts = [
                f"{self.queried} queried",
                f"{self.responded} responded",
                _plural(self.errors, "error"),
            ]
            if self.final_word:
                parts.append(f"{self.finals} {self.final_word}")
        elif self.kind == "found":
            parts = [f"{self.found} found"]
        parts.append(f"{self.elapsed():.2f}s")
        return f"{spin} {self.label}{glyphs.ellipsis} " + f" {glyphs.dot} ".join(parts)


def describe_event(event: QueryEvent, final_word: str = "final peer") -> str:
    """A Kubo-style ``--verbose`` line for one query event."""
    kind = event.type
    if kind is QueryEventType.SENDING_QUERY:
        return f"* querying {event.id}"
    if kind is QueryEventType.PEER_RESPONSE:
        if not event.responses:
            return f"* {event.id} knows no closer peers"
        return f"* {event.id} says use " + " ".join(p.id for p in event.responses)
    if kind is QueryEventType.QUERY_ERROR:
        return f"* error from {event.id}: {event.extra}"
    if kind is QueryEventType.DIALING_PEER:
        return f"* dialing {event.id}"
    if kind is QueryEventType.FINAL_PEER:
        return f"* {final_word} {event.id}"
    return f"* {kind.name.lower()} {event.id}"


def _is_utf8(stream: TextIO) -> bool:
    encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
    return encoding == "utf8"


def _width(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 80


class Screen:
    """Writes results to ``out`` and, when ``live``, keeps a progress line on ``err``.

    ``log`` (the hidden ``--progress-log`` debug option) receives every frame drawn
    (``frame <text>``) and every erase (``clear``), one per line.
    """

    def __init__(
        self,
        out: TextIO,
        err: TextIO,
        *,
        live: bool,
        verbose: bool = False,
        log: TextIO | None = None,
    ) -> None:
        self.out = out
        self.err = err
        self.live = live
        self.verbose = verbose
        self.log = log
        self.glyphs = UNICODE if _is_utf8(err) else ASCII
        self.status: Status | None = None
        self._shown = False
        self._frame = 0
        self._last_draw = 0.0

    # -- the progress line -----------------------------------------------------------

    def draw(self) -> None:
        if not self.live or self.status is None:
            return
        text = self.status.render(self.glyphs, self._frame)
        self._frame += 1
        limit = max(10, _width(self.err) - 1)
        if len(text) > limit:
            text = text[: limit - 1] + self.glyphs.ellipsis[0]
        self.err.write(CLEAR_LINE + text)
        self.err.flush()
        self._shown = True
        self._last_draw = time.monotonic()
        if self.log is not None:
            self.log.write(f"frame {text}\n")
            self.log.flush()

    def clear(self) -> None:
        if not self._shown:
            return
        self.err.write(CLEAR_LINE)
        self.err.flush()
        self._shown = False
        if self.log is not None:
            self.log.write("clear\n")
            self.log.flush()

    @contextlib.asynccontextmanager
    async def progress(self, status: Status) -> AsyncIterator[Status]:
        """Shows ``status`` on the progress line until the block ends, however it ends."""
        self.status = status
        ticker: asyncio.Task[None] | None = None
        if self.live:
            self.draw()
            ticker = asyncio.create_task(self._tick())
        try:
            yield status
        finally:
            if ticker is not None:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
            self.status = None
            self.clear()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            self.draw()

    def _redraw_soon(self) -> None:
        if self.live and time.monotonic() - self._last_draw >= MIN_REDRAW_SECONDS:
            self.draw()

    # -- what the command reports ----------------------------------------------------

    def event(self, event: QueryEvent, final_word: str = "final peer", prefix: str = "") -> None:
        """Counts a query event; with ``--verbose`` also prints it on stderr."""
        if self.status is not None:
            self.status.count(event)
        if self.verbose:
            self.note(prefix + describe_event(event, final_word))
        else:
            self._redraw_soon()

    def found(self) -> None:
        if self.status is not None:
            self.status.found += 1
        self._redraw_soon()

    def note(self, line: str) -> None:
        """A line on stderr (``--verbose`` events), above the progress line."""
        shown = self._shown
        self.clear()
        self.err.write(line + "\n")
        self.err.flush()
        if shown:
            self.draw()

    def result(self, line: str) -> None:
        """One result line on stdout, written at once."""
        shown = self._shown
        self.clear()
        self.out.write(line + "\n")
        self.out.flush()
        if shown:
            self.draw()

    def raw(self, data: bytes) -> None:
        """Bytes on stdout as they are; on a terminal, ended by a newline if they lack one."""
        self.clear()
        self.out.flush()
        buffer = self.out.buffer
        buffer.write(data)
        if self.out.isatty() and data and not data.endswith(b"\n"):
            buffer.write(b"\n")
        buffer.flush()
