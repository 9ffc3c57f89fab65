"""Answers inbound kad requests, dispatched through one table by message type.

Each handler takes the sender and the request and returns the answer, or
None when the spec says nothing is sent back (ADD_PROVIDER). Handlers are
async: the records held for others are reached through
:class:`dhtd.stores.HeldRecords`. A handler raises
:class:`Rejected` when the request is invalid; the host then resets the
stream, as the spec asks.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from dhtd.errors import InvalidRecord
from dhtd.ids import is_valid_multihash, kad_key
from dhtd.kadmsg import MessageType, add_peers, new_message, new_record, peer_addrs
from dhtd.lookup import PeerRecord
from dhtd.records import Candidate, Validators
from dhtd.routing import BUCKET_SIZE, RoutingTable
from dhtd.state import StorageFull, StorageUnavailable
from dhtd.stores import BetterRecordHeld, HeldRecords, StoredRecord, StoreFull
from dhtd.stores.values import Select
from dhtd.wire.kad_pb2 import Message

# The longest key accepted in GET_VALUE / GET_PROVIDERS / ADD_PROVIDER.
# Record keys are at most dhtd.ids.MAX_KEY_BYTES (512); provider keys are
# multihashes, far shorter. Anything longer is a malformed request.
MAX_REQUEST_KEY_BYTES = 512

# The longest ADD_PROVIDER / GET_PROVIDERS key, which must be a multihash
# (go-libp2p-kad-dht handlers.go refuses provider keys over 80 bytes).
MAX_PROVIDER_KEY_BYTES = 80

# Provider entries read from one ADD_PROVIDER: a peer announces itself, once.
MAX_PROVIDER_ENTRIES = 1

# Providers returned per GET_PROVIDERS answer (go-libp2p-kad-dht returns every
# live provider record; we cap the answer at k to keep messages small).
MAX_PROVIDERS_PER_ANSWER = BUCKET_SIZE


class Rejected(Exception):
    """The request is invalid: reset the stream without an answer."""


@dataclass
class Peers:
    """What the handlers need to know about peers, from the host."""

    addrs_of: Callable[[bytes], tuple[bytes, ...]]
    connected: Callable[[], frozenset[bytes]]


Handler = Callable[["KadHandlers", bytes, Message], Awaitable[Message | None]]


@dataclass
class KadHandlers:
    """The server side of the kad protocol for one node."""

    self_id: bytes
    table: RoutingTable
    records: HeldRecords
    validators: Validators
    peers: Peers
    clock: Callable[[], float] = time.time
    on_request: Callable[[int], None] = field(default=lambda _kind: None)
    # Told of every record a store refused (kind "provider" or "value").
    on_refused: Callable[[str], None] = field(default=lambda _kind: None)
    # Whether this node itself provides a key (its provide set): GET_PROVIDERS
    # then names this node first, as go-libp2p-kad-dht, which stores its own
    # provider record beside those of others.
    provides: Callable[[bytes], bool] = field(default=lambda _key: False)

    async def handle(self, sender: bytes, request: Message) -> Message | None:
        """Answers ``request`` from ``sender``; raises Rejected on invalid input."""
        handler = HANDLERS.get(request.type)
        if handler is None:
            raise Rejected(f"unknown message type {request.type}")
        self.on_request(request.type)
        if len(request.key) > MAX_REQUEST_KEY_BYTES:
            raise Rejected("key too long")
        return await handler(self, sender, request)

    def closer_peers(self, key: bytes, exclude: bytes) -> list[PeerRecord]:
        """Up to k known peers nearest to ``key`` that have addresses, minus ``exclude``."""
        out: list[PeerRecord] = []
        # Ranks the whole table (closest() sorts it all anyway), so that peers
        # skipped for having no addresses do not shrink the answer below k.
        for peer in self.table.closest(kad_key(key), len(self.table)):
            if len(out) == BUCKET_SIZE:
                break
            if peer == exclude:
                continue
            addrs = self.peers.addrs_of(peer)
            if addrs:
                out.append(PeerRecord(peer, addrs))
        return out

    def _answer(self, request: Message, sender: bytes) -> Message:
        answer = new_message(request.type, request.key)
        add_peers(answer.closerPeers, self.closer_peers(request.key, sender),
                  self.peers.connected())
        return answer


async def find_node(h: KadHandlers, sender: bytes, request: Message) -> Message:
    if not request.key:
        raise Rejected("FIND_NODE without a key")
    answer = h._answer(request, sender)
    # The spec's FIND_NODE exception: a known target is returned first, even
    # when it is not a DHT server, so that FindPeer finds client-mode peers.
    target = request.key
    if target != sender and all(p.id != target for p in answer.closerPeers):
        addrs = h.peers.addrs_of(target)
        if addrs:
            found = Message()
            add_peers(found.closerPeers, [PeerRecord(target, addrs)], h.peers.connected())
            found.closerPeers.extend(answer.closerPeers[: BUCKET_SIZE - 1])
            del answer.closerPeers[:]
            answer.closerPeers.extend(found.closerPeers)
    return answer


async def get_value(h: KadHandlers, sender: bytes, request: Message) -> Message:
    if not request.key:
        raise Rejected("GET_VALUE without a key")
    answer = h._answer(request, sender)
    stored = await h.records.value_of(request.key, h.clock())
    if stored is not None:
        answer.record.CopyFrom(new_record(stored.key, stored.value, stored.received_at))
    return answer


async def put_value(h: KadHandlers, sender: bytes, request: Message) -> Message:
    record = request.record
    if not request.HasField("record") or record.key != request.key or not request.key:
        raise Rejected("PUT_VALUE record key must equal the message key")
    try:
        h.validators.validate(record.key, record.value)
    except InvalidRecord as exc:
        raise Rejected(str(exc)) from None
    try:
        await h.records.put_value(record.key, record.value, h.clock(), sender,
                                  record_selector(h.validators))
    except BetterRecordHeld as exc:
        raise Rejected(str(exc)) from None
    except (InvalidRecord, StoreFull, StorageFull, StorageUnavailable) as exc:
        h.on_refused("value")
        raise Rejected(str(exc)) from None
    # The spec: the answer echoes the request.
    answer = Message()
    answer.CopyFrom(request)
    return answer


def record_selector(validators: Validators) -> Select:
    """``validators.select`` over stored records (dhtd.stores.values.Select)."""

    def select(key: bytes, records: Sequence[StoredRecord]) -> int:
        return validators.select(key, [Candidate(r.value, r.received_at) for r in records])

    return select


def _provider_key(request: Message) -> bytes:
    key = request.key
    if not key:
        raise Rejected("provider request without a key")
    if len(key) > MAX_PROVIDER_KEY_BYTES or not is_valid_multihash(key):
        raise Rejected("provider key is not a multihash")
    return key


async def add_provider(h: KadHandlers, sender: bytes, request: Message) -> None:
    key = _provider_key(request)
    # A peer may only announce itself (go-libp2p-kad-dht handlers.go does the same).
    mine = [p for p in request.providerPeers if p.id == sender][:MAX_PROVIDER_ENTRIES]
    for provider in mine:
        addrs = peer_addrs(sender, provider.addrs) or h.peers.addrs_of(sender)
        try:
            await h.records.add_provider(key, sender, addrs, h.clock())
        except (StoreFull, StorageFull, StorageUnavailable):
            # No answer exists to carry a refusal; the stream stays usable. (A
            # storage failure is logged once by the database.)
            h.on_refused("provider")
    return None


async def get_providers(h: KadHandlers, sender: bytes, request: Message) -> Message:
    _provider_key(request)
    answer = h._answer(request, sender)
    records = (await h.records.providers_of(request.key, h.clock()))[:MAX_PROVIDERS_PER_ANSWER]
    peers = [PeerRecord(r.peer, r.addrs or h.peers.addrs_of(r.peer)) for r in records
             if r.peer != h.self_id]
    if h.provides(request.key):
        peers = [PeerRecord(h.self_id, h.peers.addrs_of(h.self_id)),
                 *peers[:MAX_PROVIDERS_PER_ANSWER - 1]]
    add_peers(answer.providerPeers, peers, h.peers.connected())
    return answer


async def ping(h: KadHandlers, sender: bytes, request: Message) -> Message:
    return new_message(MessageType.PING)


HANDLERS: dict[int, Handler] = {
    MessageType.FIND_NODE: find_node,
    MessageType.GET_VALUE: get_value,
    MessageType.PUT_VALUE: put_value,
    MessageType.ADD_PROVIDER: add_provider,
    MessageType.GET_PROVIDERS: get_providers,
    MessageType.PING: ping,
}
