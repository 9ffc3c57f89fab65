"""dhtd.liveness: round trips, patience and remembered failures, with their literal values."""

from __future__ import annotations

from dhtd.liveness import PeerBook

A, B = b"\x12\x20" + b"\x01" * 32, b"\x12\x20" + b"\x02" * 32


def test_a_failed_peer_is_dead_for_30_s_doubling_to_10_min() -> None:
    book = PeerBook()
    spans = []
    now = 0.0
    for _ in range(8):
        book.failed(A, now)
        span = 0.0
        while book.is_dead(A, now + span):
            span += 1.0
        spans.append(span)
        now += span
    assert spans == [30.0, 60.0, 120.0, 240.0, 480.0, 600.0, 600.0, 600.0]


def test_an_answer_or_a_sign_of_life_clears_the_failure_and_its_doubling() -> None:
    book = PeerBook()
    book.failed(A, 0.0)
    book.failed(A, 0.0)
    book.answered(A, None)
    assert not book.is_dead(A, 0.0)
    book.failed(A, 0.0)
    assert book.is_dead(A, 29.9) and not book.is_dead(A, 30.0)
    book.alive(A)
    assert not book.is_dead(A, 1.0)


def test_three_slow_answers_in_a_row_count_as_a_failure_unless_one_answered_between() -> None:
    book = PeerBook()
    assert book.slow(A, 0.0) is False
    assert book.slow(A, 0.0) is False
    book.answered(A, 0.01)
    assert book.slow(A, 0.0) is False
    assert book.slow(A, 0.0) is False
    assert book.slow(A, 0.0) is True
    assert book.is_dead(A, 1.0)


def test_patience_is_bounded_and_a_dial_gets_room() -> None:
    book = PeerBook()
    assert book.patience(A, True, 10.0) == 2.0  # nothing measured: DEFAULT_PATIENCE
    assert book.patience(A, True, 1.5) == 1.5  # never past the request timeout
    book.answered(B, 0.2)  # the network's figure now: 2 x 0.2 or 0.2 + 4 x 0.1
    assert abs(book.patience(A, True, 10.0) - 0.6) < 1e-9
    # A dial first: DIAL_ROUND_TRIPS more round trips, 0.6 + 4 x 0.2.
    assert abs(book.patience(A, False, 10.0) - 1.4) < 1e-9
    assert book.round_trip(B) == 0.2 and book.round_trip(A) is None
    assert book.round_trip() == 0.2
    fast = PeerBook()
    for _ in range(30):
        fast.answered(B, 0.01)
    assert fast.patience(B, True, 10.0) == 0.5  # at least MIN_PATIENCE


def test_at_most_max_peers_are_remembered_least_recently_used_first() -> None:
    book = PeerBook(max_peers=2)
    book.failed(A, 0.0)
    book.failed(B, 0.0)
    book.failed(b"third", 0.0)
    assert len(book) == 2
    assert not book.is_dead(A, 1.0) and book.is_dead(B, 1.0)
