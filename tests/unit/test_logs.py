"""dhtd.logs: every line the process writes is one log record, and library noise
is counted and rate-limited with bounded labels.

What configure installs (fds, sys.stdout/stderr, hooks) is process-wide, so
those tests run it in a child Python and read the child's stdout and stderr.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap

from dhtd import logs

# A child Python imports libp2p (about 0.5 s); this is ample on a slow machine.
CHILD_TIMEOUT = 60


def run_child(body: str, level: str = "info", fmt: str = "json") -> tuple[str, list[str]]:
    """Runs ``body`` after logs.configure in a fresh Python; returns (stdout, stderr lines)."""
    code = (f"import sys\nfrom dhtd import logs\nlogs.configure({level!r}, {fmt!r})\n"
            + textwrap.dedent(body))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout, done.stderr.splitlines()


def parse(lines: list[str]) -> list[dict[str, object]]:
    """Every line as a JSON object; fails on the first line that is not one."""
    out = []
    for line in lines:
        obj = json.loads(line)
        assert isinstance(obj, dict), line
        out.append(obj)
    return out


def stray(records: list[dict[str, object]], stream: str) -> list[str]:
    return [str(r["msg"]) for r in records
            if r["logger"] == logs.STRAY_LOGGER and r.get("stream") == stream]


def test_stray_output_on_stdout_and_stderr_becomes_one_json_object_per_line() -> None:
    # Three lines on stdout: the rate limit (BURST) lets that many through.
    out, err = run_child("""
        import os
        print("hello from print")
        print("to stderr", file=sys.stderr)
        sys.__stderr__.write("via the original stderr\\n"); sys.__stderr__.flush()
        os.write(1, b"C code on fd 1\\n")
        os.write(2, b"C code on fd 2\\n")
        sys.stderr.buffer.write(b"as bytes\\n")
        sys.stdout.write("no newline at exit")
    """)
    assert out == ""
    records = parse(err)
    # The fds are read by threads: their lines may come before or after the others.
    assert sorted(stray(records, "stdout")) == [
        "C code on fd 1", "hello from print", "no newline at exit"]
    passed = stray(records, "stderr")
    assert len(passed) == logs.BURST and set(passed) < {
        "C code on fd 2", "to stderr", "via the original stderr", "as bytes"}
    # The fourth stderr line was held back and summed up at exit.
    summaries = [r for r in records if r["logger"] == logs.SUMMARY_LOGGER]
    assert [s["kinds"] for s in summaries] == [{"stderr/other": 1}], err
    assert len(records) == 7, err


def test_a_multi_line_write_is_one_record() -> None:
    _, err = run_child("""
        print("Failed to open stream to peer X:\\n  Error: e\\n  Protocols: ['/p']",
              file=sys.stderr)
        sys.stdout.write("one\\ntwo\\n")
    """)
    records = parse(err)
    assert stray(records, "stderr") == ["Failed to open stream to peer X:\n  Error: e\n"
                                        "  Protocols: ['/p']"]
    assert stray(records, "stdout") == ["one\ntwo"]


CHAINED_TRACEBACK = """
    import traceback
    try:
        try:
            1 / 0
        except ZeroDivisionError as exc:
            raise ValueError("two\\nlines") from exc
    except ValueError:
        traceback.print_exc()
    print("after")
"""


def test_a_traceback_printed_by_print_exc_is_one_record() -> None:
    _, err = run_child(CHAINED_TRACEBACK)
    records = parse(err)
    assert len(records) == 2, err
    tb = records[0]
    assert tb["level"] == "error" and tb["logger"] == logs.STRAY_LOGGER
    msg = str(tb["msg"])
    assert msg.startswith("Traceback (most recent call last):")
    assert "ZeroDivisionError" in msg and msg.endswith("ValueError: two\nlines")
    assert records[1]["msg"] == "after"


def test_text_format_keeps_one_record_per_event_with_marked_continuation_lines() -> None:
    _, err = run_child(CHAINED_TRACEBACK, fmt="text")
    starts = [line for line in err if not line.startswith(logs.CONTINUATION)]
    assert len(starts) == 2, err
    assert starts[0].startswith("error   dhtd.stray: Traceback (most recent call last):")
    assert starts[1].startswith("info    dhtd.stray: after")
    assert f"{logs.CONTINUATION}ValueError: two" in err


def test_warnings_asyncio_and_thread_errors_are_records() -> None:
    _, err = run_child("""
        import asyncio, gc, threading, warnings
        warnings.warn("careful now")
        async def boom() -> None:
            raise RuntimeError("never retrieved")
        async def main() -> None:
            task = asyncio.ensure_future(boom())
            await asyncio.wait([task])
        asyncio.run(main())
        gc.collect()
        thread = threading.Thread(target=lambda: 1 / 0)
        thread.start()
        thread.join()
    """)
    records = parse(err)
    by_logger = {str(r["logger"]): r for r in records}
    assert "UserWarning: careful now" in str(by_logger["py.warnings"]["msg"])
    assert str(by_logger["asyncio"]["msg"]).startswith("Task exception was never retrieved")
    assert "RuntimeError: never retrieved" in str(by_logger["asyncio"]["error"])
    assert "ZeroDivisionError" in str(by_logger["dhtd"]["error"])
    assert len(records) == 3, err


def test_library_blocks_are_one_record_and_repeats_are_summarised() -> None:
    # libp2p's import sets its logger to propagate nowhere, which used to send
    # these to logging.lastResort: raw text on stderr.
    _, err = run_child("""
        import logging
        log = logging.getLogger("libp2p.host.basic_host")
        for i in range(10):
            log.error("Failed to open stream to peer 12D3KooW%d:\\n  Error: timed out", i)
        logging.getLogger("dhtd").info("own records always pass")
    """)
    records = parse(err)
    blocks = [r for r in records if r["logger"] == "libp2p.host.basic_host"]
    assert [r["msg"] for r in blocks] == [
        f"Failed to open stream to peer 12D3KooW{i}:\n  Error: timed out"
        for i in range(logs.BURST)]
    assert any(r["msg"] == "own records always pass" for r in records)
    summary = [r for r in records if r["logger"] == logs.SUMMARY_LOGGER]
    assert len(summary) == 1, err
    assert summary[0]["suppressed"] == 10 - logs.BURST
    assert summary[0]["kinds"] == {"libp2p/stream_open_failed": 10 - logs.BURST}
    assert summary[0]["level"] == "warning"  # a summary, not an error of its own


def test_debug_level_passes_every_library_record_as_a_record() -> None:
    _, err = run_child("""
        import logging
        for i in range(10):
            logging.getLogger("libp2p.transport.tcp").debug("dial tcp 127.0.0.1:%d", i)
    """, level="debug")
    records = parse(err)
    assert len([r for r in records if r["logger"] == "libp2p.transport.tcp"]) == 10
    assert not [r for r in records if r["logger"] == logs.SUMMARY_LOGGER]


# -- the noise filter, in this process with a fake clock ---------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(name: str, msg: str, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.makeLogRecord({"name": name, "msg": msg, "levelno": level,
                                  "levelname": logging.getLevelName(level)})


def test_rate_limit_lets_burst_through_then_summarises_once_per_interval() -> None:
    clock = Clock()
    summaries: list[logging.LogRecord] = []
    noise = logs.NoiseFilter(burst=2, interval=60, clock=clock, emit=summaries.append)
    stream = [noise.filter(record("libp2p.host.basic_host", f"Failed to open stream to peer {i}"))
              for i in range(5)]
    assert stream == [True, True, False, False, False]
    # Another kind has its own allowance; dhtd's own records are never held back.
    assert noise.filter(record("libp2p.transport.tcp", "Failed to open TCP stream: refused"))
    assert all(noise.filter(record("dhtd.node", "mine")) for _ in range(10))
    noise.roll()
    assert summaries == []  # the interval is not over yet
    clock.now += 60
    assert noise.filter(record("libp2p.host.basic_host", "Failed to open stream to peer 9"))
    assert len(summaries) == 1
    summary = summaries[0]
    assert summary.name == logs.SUMMARY_LOGGER and summary.levelno == logging.WARNING
    assert vars(summary)["suppressed"] == 3
    assert vars(summary)["kinds"] == {"libp2p/stream_open_failed": 3}
    assert "suppressed 3 similar" in summary.getMessage()
    # Every record was counted, printed or not; dhtd's own were not.
    assert noise.counts() == {("libp2p", "stream_open_failed", "warning"): 6,
                              ("libp2p", "dial_failed", "warning"): 1}
    clock.now += 60
    noise.roll()
    assert len(summaries) == 1  # nothing held back: no summary


def test_passthrough_counts_but_holds_nothing_back() -> None:
    noise = logs.NoiseFilter(burst=1, passthrough=True, clock=Clock(), emit=lambda r: None)
    assert all(noise.filter(record("libp2p.x", "Failed to open stream")) for _ in range(20))
    assert noise.counts() == {("libp2p", "stream_open_failed", "warning"): 20}


def test_the_summary_shows_at_the_floor_when_that_is_above_warning() -> None:
    summaries: list[logging.LogRecord] = []
    noise = logs.NoiseFilter(burst=0, floor=logging.ERROR, clock=Clock(), emit=summaries.append)
    assert not noise.filter(record("grpc._cython", "boom", logging.ERROR))
    noise.roll(force=True)
    assert [s.levelno for s in summaries] == [logging.ERROR]


def test_library_records_below_the_floor_are_dropped_uncounted_but_prints_are_kept() -> None:
    noise = logs.NoiseFilter(clock=Clock(), emit=lambda r: None)
    # py-libp2p's auto-connector sets its own logger to info.
    assert not noise.filter(record("libp2p.network.auto_connector",
                                   "initiating 160 new dials", logging.INFO))
    printed = record(logs.STRAY_LOGGER, "hello", logging.INFO)
    vars(printed)["stream"] = "stdout"
    assert noise.filter(printed)
    assert noise.counts() == {("stdout", "other", "info"): 1}


def test_label_values_come_from_fixed_sets_never_from_the_message() -> None:
    noise = logs.NoiseFilter(floor=logging.NOTSET, clock=Clock(), emit=lambda r: None)
    peer = "12D3KooWGzvzQNDhCTmQzxqY8gCgZdfUwJzjQAYgZkQrtz6S4Ahh"
    addr = "/ip4/127.0.0.1/tcp/40123"
    messages = [
        f"Failed to open stream to peer {peer}:\n  Error: response timed out after 10s, "
        "/ipfs/id/1.0.0",
        f"Failed to open TCP stream: all attempts to connect to {addr} failed",
        f"MultiselectClient handshake: read failed: {peer}",
        f"Failed to read DHT message from stream: {peer}",
        "Traceback (most recent call last):\n  File x",
        f"key /app/{peer} bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
    ]
    names = ["libp2p.host.basic_host", "grpc._cython.cygrpc", "asyncio", "py.warnings",
             f"random.{peer}", logs.STRAY_LOGGER]
    for i, (name, msg) in enumerate((n, m) for n in names for m in messages):
        rec = record(name, msg, level=[5, 10, 20, 25, 30, 40, 50, 60][i % 8])
        if name == logs.STRAY_LOGGER:
            vars(rec)["stream"] = ["stdout", "stderr", peer][i % 3]
        noise.filter(rec)
    keys = noise.counts()
    assert sum(keys.values()) == len(names) * len(messages)
    for source, kind, level in keys:
        assert source in logs.SOURCES and kind in logs.KINDS and level in logs.LEVELS
    labels = {value for key in keys for value in key}
    assert not any(peer in v or "127.0.0.1" in v or "bafk" in v for v in labels)
    kinds = {kind for _, kind, _ in keys}
    assert {"stream_open_failed", "dial_failed", "negotiation_failed", "dht_message_failed",
            "traceback", "other"} <= kinds


def test_json_is_one_line_and_text_marks_continuations() -> None:
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        rec = logging.LogRecord("libp2p.x", logging.ERROR, __file__, 1, "a\nb", None,
                                sys.exc_info())
    vars(rec)["kinds"] = {"libp2p/other": 2}
    line = logs.JsonFormatter().format(rec)
    assert "\n" not in line
    obj = json.loads(line)
    assert obj["msg"] == "a\nb" and obj["kinds"] == {"libp2p/other": 2}
    assert "ValueError: bad" in obj["error"]
    text = logs.TextFormatter().format(rec).split("\n")
    assert text[0] == 'error   libp2p.x: a kinds={"libp2p/other": 2}'
    assert all(line.startswith(logs.CONTINUATION) for line in text[1:])
    assert f"{logs.CONTINUATION}b" in text


def test_metrics_page_has_the_library_log_counter() -> None:
    from dhtd.metrics import Metrics

    page = Metrics().render().decode()
    assert "# TYPE dhtd_library_log_messages_total counter" in page


def test_a_traceback_written_into_a_library_warning_is_cut_to_its_first_line() -> None:
    """py-libp2p's swarm writes a traceback into the text of a warning each time a
    peer closes a connection it is still setting up (go-libp2p does, when it dials a
    peer that dials it): one line is kept, unless the level is debug or the record
    is an error."""
    tb = ("Traceback (most recent call last):\n  File \"swarm.py\", line 2621\n"
          "libp2p.network.exceptions.SwarmException: Connection closed while starting")
    head = "[ADDCONN_FAIL] add_conn failed for peer %s: %r"

    def warning() -> logging.LogRecord:
        rec = record("libp2p.network.swarm", head + "\n%s", logging.WARNING)
        rec.args = ("12D3KooW", RuntimeError("Connection closed while starting"), tb)
        return rec

    noise = logs.NoiseFilter(clock=Clock(), emit=lambda r: None)
    cut = warning()
    assert noise.filter(cut)
    assert cut.getMessage() == (
        "[ADDCONN_FAIL] add_conn failed for peer 12D3KooW: "
        "RuntimeError('Connection closed while starting')")
    error = record("libp2p.network.swarm", "[X] add_conn failed for peer %s: %r\n%s")
    error.args = ("12D3KooW", RuntimeError("boom"), tb)
    assert noise.filter(error) and "Traceback" in error.getMessage()
    debug = logs.NoiseFilter(passthrough=True, floor=logging.DEBUG, clock=Clock(),
                             emit=lambda r: None)
    kept = warning()
    assert debug.filter(kept) and "Traceback" in kept.getMessage()
    # A multi-line warning without a traceback keeps its lines.
    lines = record("libp2p.x", "first\nsecond")
    assert noise.filter(lines) and lines.getMessage() == "first\nsecond"


def test_a_library_error_about_a_peer_is_written_and_counted_as_a_warning() -> None:
    """py-libp2p logs a dial to a dead peer at error: that is the peer's state, not
    this node's fault. Other library errors stay errors."""
    noise = logs.NoiseFilter(clock=Clock(), emit=lambda r: None)
    dial = record("libp2p.transport.tcp.tcp",
                  "Failed to open TCP stream: all attempts to connect to 127.0.0.1:9 failed")
    assert noise.filter(dial)
    assert (dial.levelno, dial.levelname) == (logging.WARNING, "WARNING")
    other = record("libp2p.network.swarm", "something unexpected")
    assert noise.filter(other) and other.levelno == logging.ERROR
    assert noise.counts() == {("libp2p", "dial_failed", "warning"): 1,
                              ("libp2p", "other", "error"): 1}
