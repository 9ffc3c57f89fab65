"""What a node has learned about other peers' liveness, kept across lookups.

A lookup on a wide-area network meets two kinds of trouble that loopback never
shows: round trips of 40-300 ms that differ per peer, and stale peers (gone, a
black-holed address, or a frozen process) that never answer. :class:`PeerBook`
keeps, for every peer a lookup asked:

* **Round trips** (RFC 6298's smoothed RTT and its variation, per peer and for
  the whole network), from which a request's *patience* follows: how long a
  walk waits for one answer before it goes on without it. The request itself is
  not cancelled then; a late answer is still used (dhtd.lookup). This is
  js-libp2p's adaptive timeout, kept per peer.
* **Failures, with backoff.** A peer that failed a request is dead for a while
  (DEAD_BACKOFF_FIRST, doubling up to DEAD_BACKOFF_MAX): walks skip it at once
  instead of waiting on it again. An answer, or a dial this node chose to make
  (Connect, bootstrap), clears it.
* **Strikes.** A peer whose answer outlived the walk's patience three times in a row,
  with no answer in between, counts as failed (a frozen process keeps its
  connection open and never answers).

Pure bookkeeping: no trio, no network. Times are in seconds of any monotonic
clock the caller passes.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

# How long a walk waits for a peer it has no round-trip figure for, when nothing
# is known of the network either (ours: a first request to a fresh peer on a
# wide-area network is a dial (TCP, noise, yamux: about 4 round trips) and a
# request, so 4-5 round trips of up to 300 ms).
DEFAULT_PATIENCE = 2.0

# The least patience a walk has with any peer (ours): a few round trips on a
# wide-area network, and what a loaded 2-core machine takes to answer on loopback
# at worst, usually. Passing over an honest peer costs little: its late answer is
# still used, and only STRIKES_TO_FAIL such walks in a row count as a failure.
MIN_PATIENCE = 0.5

# A request's patience is SRTT + PATIENCE_DEVIATIONS x RTTVAR (RFC 6298's
# retransmission timeout uses K = 4), and at least PATIENCE_ROUND_TRIPS x SRTT (a
# peer whose round trip never varies still gets time to think; ours).
PATIENCE_DEVIATIONS = 4.0
PATIENCE_ROUND_TRIPS = 2.0

# The round trips a first request to a peer without a connection costs before its
# answer: TCP (1), noise XX (1.5), multistream and yamux (0.5, pipelined), the
# request (1); rounded up (ours).
DIAL_ROUND_TRIPS = 4.0

# RFC 6298's smoothing gains.
RTT_ALPHA = 1 / 8
RTT_BETA = 1 / 4

# A failed peer is skipped this long, doubled at each further failure up to the
# maximum (ours; go-libp2p's swarm backs off failed dials from 5 s up to 5 min).
DEAD_BACKOFF_FIRST = 30.0
DEAD_BACKOFF_MAX = 600.0

# Answers that outlived a walk's patience, in a row, before the peer counts as failed.
STRIKES_TO_FAIL = 3

# Peers remembered (least recently touched forgotten first).
MAX_PEERS = 10_000


@dataclass
class _Rtt:
    srtt: float
    rttvar: float

    def add(self, sample: float) -> None:
        self.rttvar = (1 - RTT_BETA) * self.rttvar + RTT_BETA * abs(self.srtt - sample)
        self.srtt = (1 - RTT_ALPHA) * self.srtt + RTT_ALPHA * sample

    @property
    def patience(self) -> float:
        return max(PATIENCE_ROUND_TRIPS * self.srtt,
                   self.srtt + PATIENCE_DEVIATIONS * self.rttvar)


@dataclass
class _Peer:
    rtt: _Rtt | None = None
    dead_until: float = 0.0
    failures: int = 0
    strikes: int = 0


class PeerBook:
    """Round trips and failures of the peers this node asked (see the module doc)."""

    def __init__(self, max_peers: int = MAX_PEERS) -> None:
        self._peers: OrderedDict[bytes, _Peer] = OrderedDict()
        self._network: _Rtt | None = None
        self._max = max_peers

    def __len__(self) -> int:
        return len(self._peers)

    def _entry(self, peer: bytes) -> _Peer:
        entry = self._peers.get(peer)
        if entry is None:
            entry = self._peers[peer] = _Peer()
            if len(self._peers) > self._max:
                self._peers.popitem(last=False)
        else:
            self._peers.move_to_end(peer)
        return entry

    # -- what happened ----------------------------------------------------------

    def answered(self, peer: bytes, seconds: float | None) -> None:
        """``peer`` answered; ``seconds`` is the round trip, if it had a connection
        before the request (a dial's time is not a round trip)."""
        entry = self._entry(peer)
        entry.dead_until = 0.0
        entry.failures = entry.strikes = 0
        if seconds is None:
            return
        seconds = max(0.0, seconds)
        for rtt in (entry.rtt, self._network):
            if rtt is not None:
                rtt.add(seconds)
        if entry.rtt is None:
            entry.rtt = _Rtt(seconds, seconds / 2)
        if self._network is None:
            self._network = _Rtt(seconds, seconds / 2)

    def alive(self, peer: bytes) -> None:
        """A sign of life other than an answer (it connected, it asked us)."""
        entry = self._peers.get(peer)
        if entry is not None:
            entry.dead_until = 0.0
            entry.failures = entry.strikes = 0

    def failed(self, peer: bytes, now: float) -> None:
        """A request to ``peer`` failed: it is dead for a backoff that doubles."""
        entry = self._entry(peer)
        backoff = min(DEAD_BACKOFF_MAX, DEAD_BACKOFF_FIRST * 2 ** min(entry.failures, 16))
        entry.failures += 1
        entry.strikes = 0
        entry.dead_until = now + backoff

    def slow(self, peer: bytes, now: float) -> bool:
        """``peer``'s answer outlived a walk's patience. True when that made it
        count as failed (STRIKES_TO_FAIL in a row)."""
        entry = self._entry(peer)
        entry.strikes += 1
        if entry.strikes >= STRIKES_TO_FAIL:
            self.failed(peer, now)
            return True
        return False

    # -- what to do ---------------------------------------------------------------

    def is_dead(self, peer: bytes, now: float) -> bool:
        entry = self._peers.get(peer)
        return entry is not None and entry.dead_until > now

    def patience(self, peer: bytes, connected: bool, ceiling: float) -> float:
        """How long a walk waits for ``peer``'s answer before going on without it."""
        entry = self._peers.get(peer)
        rtt = entry.rtt if entry is not None and entry.rtt is not None else self._network
        wait = DEFAULT_PATIENCE if rtt is None else rtt.patience
        if not connected and rtt is not None:
            # The dial's round trips come on top of the request's patience: added,
            # not multiplied with its margin (a walk meets many unconnected dead
            # peers on a large network, and waits each one's patience).
            wait += DIAL_ROUND_TRIPS * rtt.srtt
        return min(ceiling, max(MIN_PATIENCE, wait))

    def round_trip(self, peer: bytes | None = None) -> float | None:
        """The smoothed round trip to ``peer`` (or across the network), if measured."""
        if peer is None:
            rtt = self._network
        else:
            entry = self._peers.get(peer)
            rtt = entry.rtt if entry is not None else None
        return None if rtt is None else rtt.srtt
