"""Structured logs: every line the process writes is one record of dhtd's logging.

Once :func:`configure` has run, these hold until the process exits:

- dhtd's one handler is the only writer of stderr (fd 2); nothing is written on
  stdout (fd 1). In ``json`` format every line is exactly one JSON object
  (newlines inside a message or traceback are escaped). In ``text`` format each
  record starts a line ``level logger: message key=value...`` and its further
  lines (tracebacks, multi-line messages) start with ``"  | "``.
- Output that bypasses logging becomes records of the ``dhtd.stray`` logger,
  with ``stream`` set to ``stdout`` or ``stderr``:

  - a Python write to ``sys.stdout``/``sys.stderr`` is held until a write
    ends a line; everything held then is one record, so one ``print`` of an
    8-line block is one record;
  - whatever one call of the :mod:`traceback` module prints is one record;
  - C code writing to fd 1 or 2 gives one record per line.

- Warnings (``py.warnings``), uncaught exceptions (main thread, other threads,
  "Exception ignored in"), and asyncio's loop exception handler (logger
  ``asyncio``: "Task exception was never retrieved", "Exception in default
  exception handler") are records too.
- Library records (any logger outside ``dhtd``, plus ``dhtd.stray``) are
  counted by (source, kind, level), all three from fixed sets (:data:`SOURCES`,
  :data:`KINDS`, :data:`LEVELS`), so never a peer ID, address or key. Unless
  the level is ``debug``, at most :data:`BURST` records of each (source, kind)
  pass per :data:`INTERVAL`; the rest are reported in one ``dhtd.logs``
  "suppressed ..." record per interval. :func:`library_message_counts` feeds
  ``dhtd_library_log_messages_total`` (dhtd.metrics).

Why at the edge: py-libp2p's import sets its ``libp2p`` logger to propagate
nowhere, so its records fell to :data:`logging.lastResort` and were written raw;
some of its modules and trio ``print``; C code (gRPC) writes to fd 2.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import io
import json
import logging
import os
import re
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

# Logger of output that bypassed logging (prints, raw fd writes, unraisables).
STRAY_LOGGER = "dhtd.stray"
# Logger of the rate limiter's "suppressed ..." summaries.
SUMMARY_LOGGER = "dhtd.logs"

# How many records of one (source, kind) pass per interval before the rest are
# summarised: the first few show what is happening and with which peers; the
# hundredth says nothing new (a 150-node start used to print 6,000-10,000 lines).
BURST = 3
# Seconds per rate-limit interval, and so at most one summary record per this
# long: noise comes in bursts of seconds, and a minute keeps the log small
# while a summary still arrives soon enough to read next to its cause.
INTERVAL = 60.0
# Prefix of the continuation lines of one record in text format, so that a
# reader (or grep -v) can tell them from the start of the next record.
CONTINUATION = "  | "
# Characters of stray output held while waiting for the end of a line; a
# writer that never ends its line is emitted in pieces this big, not kept.
MAX_PENDING = 64 * 1024
# Characters of a message's first line that classification looks at: the kind
# is in the first words, and regexes stay cheap on 100 KiB messages.
KIND_SCAN = 300
# Seconds the exit handler waits for the fd readers to log what is left in
# their pipes; bounded so that a stuck reader cannot hold up the exit.
DRAIN_TIMEOUT = 2.0

# Library loggers whose level follows --log-level (at least warning unless debug).
LIBRARY_LOGGERS = ("libp2p", "multiaddr", "grpc", "asyncio", "trio")

# (logger-name prefix, source label); first match wins.
_SOURCE_PREFIXES = (
    ("libp2p", "libp2p"), ("multiaddr", "multiaddr"), ("grpc", "grpc"),
    ("asyncio", "asyncio"), ("trio", "trio"), ("py.warnings", "warnings"),
)
STREAMS = ("stdout", "stderr")
# Every value the ``source`` label can take.
SOURCES = (*(label for _, label in _SOURCE_PREFIXES), *STREAMS, "other")

# (kind, pattern on the first line of the message); first match wins. Ordered
# from specific to general: "Failed to open stream ... /ipfs/id/" is a stream
# failure, a multistream timeout is a negotiation failure.
_KIND_PATTERNS = (
    ("stream_open_failed", re.compile(r"^Failed to open stream")),
    ("traceback", re.compile(
        r"^\s*(\+ )?(Traceback \(most recent call last\)|Exception Group Traceback"
        r"|Exception in thread|Exception ignored in)")),
    ("identify_failed", re.compile(r"identify|/ipfs/id/", re.I)),
    ("dial_failed", re.compile(
        r"TCP stream|all attempts to connect|failed to dial|unable to connect|connection refused"
        r"|upgrade (security|mux)|replacement connection", re.I)),
    ("negotiation_failed", re.compile(r"multiselect|multistream|negotiat", re.I)),
    ("dht_message_failed", re.compile(
        r"DHT|ADD_PROVIDER|PUT_VALUE|GET_VALUE|GET_PROVIDERS|FIND_NODE|provider|value|record",
        re.I)),
    ("timeout", re.compile(r"timed? ?out", re.I)),
    ("connection_closed", re.compile(r"clos(e|ed|ing)\b|reset|EOF|broken pipe", re.I)),
)
# A traceback written into a message's text (not passed as exc_info).
_EMBEDDED_TRACEBACK = re.compile(
    r"^\s*(\+ )?(Traceback \(most recent call last\)|Exception Group Traceback)", re.M)
# Kinds that report what a remote peer did or failed to do (it is gone, slow, or
# closed on us). py-libp2p logs some at error; they are the network's weather, not
# a fault of this node, so they are written and counted at warning.
PEER_KINDS = frozenset({"stream_open_failed", "identify_failed", "dial_failed",
                        "negotiation_failed", "timeout", "connection_closed"})
# Every value the ``kind`` label can take.
KINDS = (*(kind for kind, _ in _KIND_PATTERNS), "other")
# Every value the ``level`` label can take.
LEVELS = ("debug", "info", "warning", "error", "critical")

Key = tuple[str, str, str]


def _level_label(levelno: int) -> str:
    for threshold, label in ((logging.CRITICAL, "critical"), (logging.ERROR, "error"),
                             (logging.WARNING, "warning"), (logging.INFO, "info")):
        if levelno >= threshold:
            return label
    return "debug"


def is_library(name: str) -> bool:
    """True for records the noise filter counts: any logger outside dhtd's own,
    and dhtd.stray (output that bypassed logging)."""
    return name == STRAY_LOGGER or not (name == "dhtd" or name.startswith("dhtd."))


def classify(record: logging.LogRecord) -> Key:
    """(source, kind, level) of a library record; each is one of SOURCES, KINDS, LEVELS."""
    if record.name == STRAY_LOGGER:
        stream = getattr(record, "stream", "")
        source = stream if stream in STREAMS else "other"
    else:
        source = next((label for prefix, label in _SOURCE_PREFIXES
                       if record.name == prefix or record.name.startswith(prefix + ".")),
                      "other")
    try:
        text = record.getMessage()
    except Exception:  # a bad format string still gets counted
        text = str(record.msg)
    first = text.lstrip("\n")[:KIND_SCAN].split("\n", 1)[0]
    kind = next((k for k, pattern in _KIND_PATTERNS if pattern.search(first)), "other")
    return source, kind, _level_label(record.levelno)


def _drop_embedded_traceback(record: logging.LogRecord) -> None:
    """Cuts a traceback that a library wrote into a warning's own text down to the
    warning's first line. py-libp2p's swarm does this each time a peer closes a
    connection it is still setting up ("[ADDCONN_FAIL] add_conn failed for peer
    …: SwarmException('Connection closed while starting')" plus 30 lines): the
    peer's doing, said in the first line; the rest is py-libp2p's call stack.
    Errors keep theirs, and --log-level debug keeps every line."""
    try:
        text = record.getMessage()
    except Exception:  # a bad format string: left to the formatter
        return
    first, newline, rest = text.partition("\n")
    if newline and _EMBEDDED_TRACEBACK.search(rest):
        record.msg, record.args = first, ()


class NoiseFilter(logging.Filter):
    """Counts library records and lets at most ``burst`` of each (source, kind)
    through per ``interval`` seconds (all of them when ``passthrough``).

    dhtd's own records always pass and are not counted. Library records below
    ``floor`` (stray output aside) are dropped uncounted: py-libp2p sets some
    of its loggers' levels itself (its auto-connector logs at info every
    cycle), so logger levels alone do not keep its chatter out. What was held
    back is reported by one summary record (logger ``dhtd.logs``, at warning,
    or at ``floor`` if higher, so it shows wherever what it counts would have;
    with ``suppressed`` and per-kind ``kinds`` counts) handed to ``emit`` when
    the interval is over: at the first library record after it,
    or at :meth:`roll`.
    """

    def __init__(self, *, burst: int = BURST, interval: float = INTERVAL,
                 passthrough: bool = False, floor: int = logging.WARNING,
                 clock: Callable[[], float] = time.monotonic,
                 emit: Callable[[logging.LogRecord], None] | None = None) -> None:
        super().__init__()
        self.burst = burst
        self.interval = interval
        self.passthrough = passthrough
        self.floor = floor
        self._clock = clock
        self._emit = emit or (lambda record: logging.getLogger(SUMMARY_LOGGER).handle(record))
        self._lock = threading.Lock()
        self._counts: Counter[Key] = Counter()
        self._passed: Counter[tuple[str, str]] = Counter()
        self._held: Counter[tuple[str, str]] = Counter()
        self._start = clock()

    def filter(self, record: logging.LogRecord) -> bool:
        if not is_library(record.name):
            return True
        if record.levelno < self.floor and record.name != STRAY_LOGGER:
            return False
        source, kind, level = classify(record)
        if kind in PEER_KINDS and logging.ERROR <= record.levelno < logging.CRITICAL:
            record.levelno, record.levelname, level = logging.WARNING, "WARNING", "warning"
        now = self._clock()
        with self._lock:
            self._counts[source, kind, level] += 1
            summary = self._roll(now) if now - self._start >= self.interval else None
            allow = self.passthrough or self._passed[source, kind] < self.burst
            if allow:
                self._passed[source, kind] += 1
            else:
                self._held[source, kind] += 1
        if summary is not None:
            self._emit(summary)
        if allow and not self.passthrough and record.levelno < logging.ERROR:
            _drop_embedded_traceback(record)
        return allow

    def roll(self, *, force: bool = False) -> None:
        """Ends the interval if it is over (or at once if ``force``), emitting
        the summary of what it held back, if anything."""
        now = self._clock()
        with self._lock:
            if not force and now - self._start < self.interval:
                return
            summary = self._roll(now)
        if summary is not None:
            self._emit(summary)

    def counts(self) -> dict[Key, int]:
        """Every library record seen, printed or held back, by (source, kind, level)."""
        with self._lock:
            return dict(self._counts)

    def _roll(self, now: float) -> logging.LogRecord | None:
        held, start = self._held, self._start
        self._passed, self._held, self._start = Counter(), Counter(), now
        if not held:
            return None
        level = max(logging.WARNING, self.floor)
        total = sum(held.values())
        seconds = max(1, round(now - start))
        return logging.makeLogRecord({
            "name": SUMMARY_LOGGER, "levelno": level, "levelname": logging.getLevelName(level),
            "msg": f"suppressed {total} similar library log messages in the last {seconds} s",
            "suppressed": total, "interval_s": seconds,
            "kinds": {f"{s}/{k}": n for (s, k), n in sorted(held.items())},
        })


# -- formatting ---------------------------------------------------------------

def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage().rstrip("\n")
    except Exception:  # a library's bad format string must not lose the record
        return f"{record.msg!r} % {record.args!r}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: ts, level, logger, msg, the
    record's extra fields, and ``error``/``stack`` with the traceback text."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _message(record),
        }
        for key, value in _extras(record).items():
            plain = isinstance(value, (int, float, bool, str, dict, list)) or value is None
            out[key] = value if plain else str(value)
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, separators=(",", ":"), default=str)


def _text_value(value: object) -> str:
    text = json.dumps(value, default=str) if isinstance(value, (dict, list)) else str(value)
    return json.dumps(text) if any(c in text for c in "\r\n") else text


class TextFormatter(logging.Formatter):
    """``level logger: first line key=value...``, then every further line of the
    message, traceback or stack prefixed with CONTINUATION."""

    def format(self, record: logging.LogRecord) -> str:
        head, *rest = _message(record).splitlines() or [""]
        if record.exc_info:
            rest += self.formatException(record.exc_info).splitlines()
        if record.stack_info:
            rest += self.formatStack(record.stack_info).splitlines()
        extra = " ".join(f"{k}={_text_value(v)}" for k, v in _extras(record).items())
        line = f"{record.levelname.lower():7} {record.name}: {head} {extra}".rstrip()
        return "\n".join([line, *(CONTINUATION + more for more in rest)])


# -- capture at the edge ------------------------------------------------------

_local = threading.local()


def _emit_stray(stream: str, text: str) -> None:
    """Logs output that bypassed logging as one dhtd.stray record."""
    text = text.rstrip("\n")
    if not text.strip():
        return
    if getattr(_local, "emitting", False):
        # Logging itself failed and is reporting that on stderr: logging it
        # again would recurse, so write it as one record by hand.
        _write_fallback(stream, text)
        return
    traceback_like = "Traceback (most recent call last)" in text
    level = (logging.ERROR if traceback_like
             else logging.WARNING if stream == "stderr" else logging.INFO)
    _local.emitting = True
    try:
        logging.getLogger(STRAY_LOGGER).log(level, text, extra={"stream": stream})
    finally:
        _local.emitting = False


class _StrayWriter(io.TextIOBase):
    """Stands in for sys.stdout or sys.stderr: what is written becomes records."""

    def __init__(self, stream: str, fd: int) -> None:
        super().__init__()
        self._stream = stream
        self._fd = fd
        self._lock = threading.Lock()
        self._pending: list[str] = []
        self._size = 0
        self._blocks = threading.local()

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        block: list[str] | None = getattr(self._blocks, "text", None)
        if block is not None:  # inside one traceback print: one record at its end
            block.append(s)
            return len(s)
        with self._lock:
            self._pending.append(s)
            self._size += len(s)
            if not s.endswith("\n") and self._size < MAX_PENDING:
                return len(s)
            text = "".join(self._pending)
            self._pending.clear()
            self._size = 0
        _emit_stray(self._stream, text)
        return len(s)

    def flush(self) -> None:
        """Emits a held partial line now."""
        with self._lock:
            text = "".join(self._pending)
            self._pending.clear()
            self._size = 0
        if text:
            _emit_stray(self._stream, text)

    @contextlib.contextmanager
    def one_record(self) -> Iterator[None]:
        """Everything this thread writes inside the block becomes one record."""
        if getattr(self._blocks, "text", None) is not None:  # nested: the outer one emits
            yield
            return
        self._blocks.text = []
        try:
            yield
        finally:
            text = "".join(self._blocks.text)
            self._blocks.text = None
            _emit_stray(self._stream, text)

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def buffer(self) -> io.BufferedIOBase:
        """For code that writes bytes (sys.stdout.buffer.write): decoded, then as write."""
        return _Bytes(self)

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._fd


class _Bytes(io.BufferedIOBase):
    def __init__(self, text: _StrayWriter) -> None:
        super().__init__()
        self._text = text

    def write(self, b: Any) -> int:
        data = bytes(b)
        self._text.write(data.decode("utf-8", "replace"))
        return len(data)

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        self._text.flush()


_F = TypeVar("_F", bound=Callable[..., Any])


def _one_record(fn: _F) -> _F:
    """``fn`` (a traceback printer) with all it writes to our writers as one record each."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with contextlib.ExitStack() as stack:
            for writer in (sys.stdout, sys.stderr):
                if isinstance(writer, _StrayWriter):
                    stack.enter_context(writer.one_record())
            return fn(*args, **kwargs)

    wrapper.__dhtd_one_record__ = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


# The traceback module's printers; print_exc calls print_exception calls
# TracebackException.print, so each is wrapped and the outermost one emits.
_TRACEBACK_PRINTERS = ("print_tb", "print_exception", "print_exc", "print_last",
                       "print_stack", "print_list")


def _wrap_traceback_printers() -> None:
    for name in _TRACEBACK_PRINTERS:
        fn = getattr(traceback, name)
        if not getattr(fn, "__dhtd_one_record__", False):
            setattr(traceback, name, _one_record(fn))
    method = traceback.TracebackException.print
    if not getattr(method, "__dhtd_one_record__", False):
        setattr(traceback.TracebackException, "print", _one_record(method))  # noqa: B010


def _pump_fd(read_fd: int, stream: str) -> None:
    with os.fdopen(read_fd, "rb") as pipe:
        while line := pipe.readline(MAX_PENDING):
            _emit_stray(stream, line.decode("utf-8", "replace"))


def _excepthook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
    logging.getLogger("dhtd").critical("uncaught exception", exc_info=(exc_type, exc, tb))


def _thread_excepthook(args: Any) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("dhtd").error(
        "uncaught exception in thread %s", name,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


def _unraisablehook(args: Any) -> None:
    try:
        what = repr(args.object)
    except Exception:
        what = "<object repr failed>"
    exc_info = ((args.exc_type, args.exc_value, args.exc_traceback)
                if args.exc_value is not None else None)
    logging.getLogger(STRAY_LOGGER).error(
        f"{args.err_msg or 'Exception ignored in'}: {what}", extra={"stream": "stderr"},
        exc_info=exc_info)


class _Capture:
    """What configure installed once per process, for the exit handler."""

    def __init__(self) -> None:
        self.fmt = "json"
        # dhtd's handler writes here: fd 2 as it was before the capture.
        self.real_stderr = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8",
                                     errors="backslashreplace")
        self.saved: list[tuple[int, int]] = []
        self.readers: list[threading.Thread] = []
        self.writers: list[_StrayWriter] = []
        self.noise: NoiseFilter | None = None
        self.stop = threading.Event()

    def install(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, stream in ((1, "stdout"), (2, "stderr")):
            read_fd, write_fd = os.pipe()
            self.saved.append((fd, os.dup(fd)))
            os.dup2(write_fd, fd)
            os.close(write_fd)
            reader = threading.Thread(target=_pump_fd, args=(read_fd, stream),
                                      name=f"dhtd-{stream}", daemon=True)
            reader.start()
            self.readers.append(reader)
        self.writers = [_StrayWriter("stdout", 1), _StrayWriter("stderr", 2)]
        sys.stdout, sys.stderr = self.writers
        _wrap_traceback_printers()
        logging.captureWarnings(True)
        sys.excepthook = _excepthook
        threading.excepthook = _thread_excepthook
        sys.unraisablehook = _unraisablehook
        threading.Thread(target=self._summarise, name="dhtd-log-summary", daemon=True).start()
        atexit.register(self.release)

    def _summarise(self) -> None:
        while not self.stop.wait(self.noise.interval if self.noise else INTERVAL):
            if self.noise is not None:
                self.noise.roll()

    def release(self) -> None:
        """At exit: log what is held, give fds 1 and 2 back, summarise the rest."""
        self.stop.set()
        for writer in self.writers:
            writer.flush()
        for fd, saved in self.saved:
            os.dup2(saved, fd)  # closes the pipe's write end: its reader sees EOF
            os.close(saved)
        for reader in self.readers:
            reader.join(DRAIN_TIMEOUT)
        if self.noise is not None:
            self.noise.roll(force=True)


_capture: _Capture | None = None


def _write_fallback(stream: str, text: str) -> None:
    if _capture is None:
        return
    if _capture.fmt == "json":
        line = json.dumps({"level": "error", "logger": STRAY_LOGGER, "msg": text,
                           "stream": stream}, separators=(",", ":"))
    else:
        head, *rest = text.splitlines() or [""]
        line = "\n".join([f"error   {STRAY_LOGGER}: {head}", *(CONTINUATION + r for r in rest)])
    with contextlib.suppress(Exception):
        _capture.real_stderr.write(line + "\n")


def library_message_counts() -> dict[Key, int]:
    """Library log records seen since configure, printed or not, by (source, kind, level)."""
    if _capture is None or _capture.noise is None:
        return {}
    return _capture.noise.counts()


def configure(level: str = "info", fmt: str = "json") -> None:
    """Routes everything the process writes through one handler on stderr.

    ``level`` is dhtd's level; library loggers log at least warnings unless it
    is ``debug``, when they log everything and nothing is rate-limited. The
    capture (fds, sys.stdout/stderr, hooks) is installed on the first call and
    kept; a later call changes the level and format only.
    """
    global _capture
    if _capture is None:
        _capture = _Capture()
        _capture.install()
    _capture.fmt = fmt
    if _capture.noise is None:
        _capture.noise = NoiseFilter()
    noise = _capture.noise
    noise.passthrough = level == "debug"
    handler = logging.StreamHandler(_capture.real_stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(noise)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # A logger that propagates nowhere and has no handler falls to lastResort.
    logging.lastResort = handler
    # py-libp2p's import sets up its own logging (propagate=False; with
    # LIBP2P_DEBUG its own handlers): import it now and undo that.
    import libp2p  # noqa: F401

    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and (name == "libp2p" or name.startswith("libp2p.")):
            logger.handlers.clear()
            logger.propagate = True
    floor = logging.DEBUG if level == "debug" else max(logging.WARNING, root.level)
    noise.floor = floor
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(floor)
