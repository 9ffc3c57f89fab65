"""Unit tests for dhtd.handlers: the server side of the kad protocol, one handler per type."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable, Sequence

import pytest
import trio

from dhtd.errors import InvalidRecord
from dhtd.handlers import (
    HANDLERS,
    MAX_PROVIDERS_PER_ANSWER,
    MAX_REQUEST_KEY_BYTES,
    KadHandlers,
    Peers,
    Rejected,
)
from dhtd.ids import kad_key, xor_distance
from dhtd.kadmsg import MessageType, format_time, new_message
from dhtd.records import (
    Candidate,
    LastWriteWinsValidator,
    PublicKeyValidator,
    Validators,
    peer_id_from_public_key,
)
from dhtd.routing import BUCKET_SIZE, RoutingTable
from dhtd.stores import HeldRecords, ProviderStore, RecordsDb, ValueStore
from dhtd.wire.kad_pb2 import KeyType, Message, PublicKey

NOW = 1_750_000_000.25


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def new_id(rng: random.Random) -> bytes:
    return b"\x12\x20" + rng.randbytes(32)


def addrs(peer: bytes) -> tuple[bytes, ...]:
    return (b"\x04\x7f\x00\x00\x01\x06" + peer[-2:],)


def held(providers: Callable[[sqlite3.Connection], ProviderStore],
         values: Callable[[sqlite3.Connection], ValueStore]) -> HeldRecords:
    """Stores made by ``providers`` and ``values`` (other limits) on an in-memory database."""
    db = RecordsDb.memory()
    return HeldRecords(db, providers(db.conn), values(db.conn))


class World:
    """One node's handlers, with a filled routing table and fake host knowledge."""

    def __init__(
        self,
        peers: int = 60,
        *,
        values: Callable[[sqlite3.Connection], ValueStore] | None = None,
        providers: Callable[[sqlite3.Connection], ProviderStore] | None = None,
        seed: int = 1,
    ) -> None:
        rng = random.Random(seed)
        self.rng = rng
        self.self_id = new_id(rng)
        self.table = RoutingTable(self.self_id, bucket_size=1000)
        self.peers = [new_id(rng) for _ in range(peers)]
        for peer in self.peers:
            self.table.add(peer)
        self.addrs: dict[bytes, tuple[bytes, ...]] = {p: addrs(p) for p in self.peers}
        self.connected: set[bytes] = set(self.peers[::3])
        self.clock = Clock()
        self.requests: list[int] = []
        self.h = KadHandlers(
            self_id=self.self_id,
            table=self.table,
            records=held(providers or ProviderStore, values or ValueStore),
            validators=Validators(
                {"pk": PublicKeyValidator(), "app": LastWriteWinsValidator(1024)}
            ),
            peers=Peers(
                addrs_of=lambda p: self.addrs.get(p, ()),
                connected=lambda: frozenset(self.connected),
            ),
            clock=self.clock,
            on_request=self.requests.append,
        )
        self.sender = self.peers[0]

    def handle(self, request: Message, sender: bytes | None = None) -> Message | None:
        return trio.run(self.h.handle, self.sender if sender is None else sender, request)

    @property
    def providers(self) -> ProviderStore:
        return self.h.records.providers

    def answer(self, request: Message, sender: bytes | None = None) -> Message:
        answer = self.handle(request, sender)
        assert answer is not None
        return answer

    def expected_closer(self, key: bytes, exclude: bytes, count: int = BUCKET_SIZE) -> list[bytes]:
        candidates = [p for p in self.peers if p != exclude and self.addrs.get(p)]
        tkey = kad_key(key)
        return sorted(candidates, key=lambda p: xor_distance(kad_key(p), tkey))[:count]


def ids_of(field: object) -> list[bytes]:
    return [p.id for p in field]  # type: ignore[attr-defined]


def put_request(key: bytes, value: bytes, record_key: bytes | None = None) -> Message:
    request = new_message(MessageType.PUT_VALUE, key)
    request.record.key = key if record_key is None else record_key
    request.record.value = value
    return request


def pk_record() -> tuple[bytes, bytes]:
    """A /pk/ key and its valid value (an Ed25519 PublicKey, inlined in the peer ID)."""
    value = PublicKey(Type=KeyType.Ed25519, Data=bytes(range(32))).SerializeToString()
    return b"/pk/" + peer_id_from_public_key(value), value


# --- dispatch -----------------------------------------------------------------------------


def test_the_table_covers_every_message_type() -> None:
    assert set(HANDLERS) == set(MessageType.values())


def test_unknown_type_is_rejected() -> None:
    w = World()
    request = Message()
    request.type = 42  # type: ignore[assignment]
    request.key = b"k"
    with pytest.raises(Rejected, match="unknown message type 42"):
        w.handle(request)


@pytest.mark.parametrize(
    "kind",
    [MessageType.FIND_NODE, MessageType.GET_VALUE, MessageType.PUT_VALUE,
     MessageType.ADD_PROVIDER, MessageType.GET_PROVIDERS],
)
def test_too_long_key_is_rejected(kind: int) -> None:
    w = World()
    key = b"/app/" + b"x" * (MAX_REQUEST_KEY_BYTES - 4)
    assert len(key) == MAX_REQUEST_KEY_BYTES + 1
    request = put_request(key, b"v") if kind == MessageType.PUT_VALUE else new_message(kind, key)
    with pytest.raises(Rejected, match="key too long"):
        w.handle(request)
    assert len(w.h.records.values) == 0
    assert len(w.providers) == 0


def test_longest_allowed_key_is_answered() -> None:
    w = World()
    key = b"/app/" + b"x" * (MAX_REQUEST_KEY_BYTES - 5)
    assert len(w.answer(new_message(MessageType.GET_VALUE, key)).closerPeers) == BUCKET_SIZE


@pytest.mark.parametrize(
    "kind", [MessageType.FIND_NODE, MessageType.GET_VALUE, MessageType.PUT_VALUE,
             MessageType.ADD_PROVIDER, MessageType.GET_PROVIDERS],
)
def test_empty_key_is_rejected(kind: int) -> None:
    w = World()
    request = put_request(b"", b"v") if kind == MessageType.PUT_VALUE else new_message(kind)
    with pytest.raises(Rejected):
        w.handle(request)


def test_on_request_sees_each_request_type() -> None:
    w = World()
    w.handle(new_message(MessageType.PING))
    w.handle(new_message(MessageType.FIND_NODE, w.peers[5]))
    assert w.requests == [MessageType.PING, MessageType.FIND_NODE]


def test_ping_answers_ping() -> None:
    w = World()
    answer = w.answer(new_message(MessageType.PING))
    assert answer.type == MessageType.PING
    assert not answer.closerPeers


# --- FIND_NODE ----------------------------------------------------------------------------


def test_find_node_returns_the_k_closest_with_addrs_and_connection_state() -> None:
    w = World()
    target = new_id(w.rng)  # not a known peer
    answer = w.answer(new_message(MessageType.FIND_NODE, target))
    assert answer.type == MessageType.FIND_NODE
    assert answer.key == target
    assert ids_of(answer.closerPeers) == w.expected_closer(target, w.sender)
    for entry in answer.closerPeers:
        assert tuple(entry.addrs) == addrs(entry.id)
        expected = Message.CONNECTED if entry.id in w.connected else Message.CAN_CONNECT
        assert entry.connection == expected


def test_find_node_never_names_the_sender() -> None:
    w = World()
    # The sender is the peer nearest to its own ID: it would be first if not excluded.
    answer = w.answer(new_message(MessageType.FIND_NODE, w.sender))
    assert w.sender not in ids_of(answer.closerPeers)
    assert len(answer.closerPeers) == BUCKET_SIZE
    assert ids_of(answer.closerPeers) == w.expected_closer(w.sender, w.sender)


def test_find_node_returns_a_known_target_first_even_outside_the_table() -> None:
    w = World()
    target = new_id(w.rng)  # a client-mode peer: connected, not in the table
    w.addrs[target] = addrs(target)
    w.connected.add(target)
    answer = w.answer(new_message(MessageType.FIND_NODE, target))
    got = ids_of(answer.closerPeers)
    assert got[0] == target
    assert answer.closerPeers[0].connection == Message.CONNECTED
    assert tuple(answer.closerPeers[0].addrs) == addrs(target)
    assert got[1:] == w.expected_closer(target, w.sender, BUCKET_SIZE - 1)
    assert len(got) == BUCKET_SIZE


def test_find_node_for_a_table_peer_lists_it_once_and_first() -> None:
    w = World()
    target = w.peers[7]
    got = ids_of(w.answer(new_message(MessageType.FIND_NODE, target)).closerPeers)
    assert got[0] == target
    assert got.count(target) == 1
    assert len(got) == BUCKET_SIZE


def test_find_node_without_addresses_for_the_target_does_not_name_it() -> None:
    w = World()
    target = new_id(w.rng)
    got = ids_of(w.answer(new_message(MessageType.FIND_NODE, target)).closerPeers)
    assert target not in got


def test_peers_without_addresses_are_skipped_but_k_are_still_returned() -> None:
    w = World()
    key = b"/app/some-key"
    nearest = w.expected_closer(key, w.sender, 5)
    for peer in nearest[:3]:
        del w.addrs[peer]
    got = ids_of(w.answer(new_message(MessageType.GET_VALUE, key)).closerPeers)
    assert not set(got) & set(nearest[:3])
    assert got == w.expected_closer(key, w.sender)
    assert len(got) == BUCKET_SIZE


def test_small_table_returns_every_peer_but_the_sender() -> None:
    w = World(peers=4)
    got = ids_of(w.answer(new_message(MessageType.FIND_NODE, b"\x12\x20" + bytes(32)))
                 .closerPeers)
    assert sorted(got) == sorted(w.peers[1:])


# --- GET_VALUE / PUT_VALUE ------------------------------------------------------------------


def test_get_value_without_a_record() -> None:
    w = World()
    key = b"/app/nothing-here"
    answer = w.answer(new_message(MessageType.GET_VALUE, key))
    assert answer.type == MessageType.GET_VALUE
    assert answer.key == key
    assert not answer.HasField("record")
    assert ids_of(answer.closerPeers) == w.expected_closer(key, w.sender)


def test_put_then_get_value() -> None:
    w = World()
    key = b"/app/greeting"
    request = put_request(key, b"hello")
    echo = w.answer(request)
    assert echo == request
    stored = w.h.records.values.get(key, NOW)
    assert stored is not None
    assert (stored.value, stored.received_at) == (b"hello", NOW)

    w.clock.now = NOW + 60
    answer = w.answer(new_message(MessageType.GET_VALUE, key), w.peers[1])
    assert answer.HasField("record")
    assert answer.record.key == key
    assert answer.record.value == b"hello"
    assert answer.record.timeReceived == format_time(NOW)
    assert ids_of(answer.closerPeers) == w.expected_closer(key, w.peers[1])


def test_get_value_does_not_return_an_expired_record() -> None:
    w = World()
    key = b"/app/old"
    w.answer(put_request(key, b"v"))
    w.clock.now = NOW + 48 * 3600 - 1  # records live 48 h (go-libp2p-kad-dht amino)
    assert w.answer(new_message(MessageType.GET_VALUE, key)).HasField("record")
    w.clock.now = NOW + 48 * 3600
    assert not w.answer(new_message(MessageType.GET_VALUE, key)).HasField("record")


def test_put_value_last_write_wins() -> None:
    w = World()
    key = b"/app/counter"
    w.answer(put_request(key, b"one"))
    w.clock.now = NOW + 5
    assert w.answer(put_request(key, b"two")).record.value == b"two"
    stored = w.h.records.values.get(key, w.clock.now)
    assert stored is not None
    assert (stored.value, stored.received_at) == (b"two", NOW + 5)


def test_put_value_same_value_again_refreshes_it() -> None:
    w = World()
    key = b"/app/same"
    w.answer(put_request(key, b"v"))
    w.clock.now = NOW + 100
    w.answer(put_request(key, b"v"))
    stored = w.h.records.values.get(key, w.clock.now)
    assert stored is not None
    assert stored.received_at == NOW + 100


def test_put_value_refuses_to_replace_a_better_record() -> None:
    w = World()
    key = b"/app/k"
    w.clock.now = NOW + 10
    w.answer(put_request(key, b"newer"))
    w.clock.now = NOW  # the clock stepped back: the stored record is the newer one
    with pytest.raises(Rejected, match="better record"):
        w.handle(put_request(key, b"older"))
    stored = w.h.records.values.get(key, NOW)
    assert stored is not None
    assert stored.value == b"newer"


@pytest.mark.parametrize(
    ("request_key", "record_key"),
    [(b"/app/a", b"/app/b"), (b"/app/a", b""), (b"", b"/app/a")],
)
def test_put_value_key_mismatch_is_rejected(request_key: bytes, record_key: bytes) -> None:
    w = World()
    with pytest.raises(Rejected, match="must equal"):
        w.handle(put_request(request_key, b"v", record_key))
    assert len(w.h.records.values) == 0


def test_put_value_without_a_record_is_rejected() -> None:
    w = World()
    with pytest.raises(Rejected):
        w.handle(new_message(MessageType.PUT_VALUE, b"/app/a"))


def test_put_value_unknown_namespace_is_rejected() -> None:
    w = World()
    with pytest.raises(Rejected, match="no validator for namespace 'other'"):
        w.handle(put_request(b"/other/a", b"v"))
    assert len(w.h.records.values) == 0


@pytest.mark.parametrize("value", [b"", b"x" * 1025])
def test_put_value_invalid_app_value_is_rejected(value: bytes) -> None:
    w = World()
    with pytest.raises(Rejected):
        w.handle(put_request(b"/app/a", value))
    assert len(w.h.records.values) == 0


def test_put_value_pk() -> None:
    w = World()
    key, value = pk_record()
    assert w.answer(put_request(key, value)).record.value == value
    stored = w.h.records.values.get(key, NOW)
    assert stored is not None
    assert stored.value == value


@pytest.mark.parametrize(
    "value",
    [
        b"\xff\xff not a protobuf",
        # A valid key, but not the one the peer ID in the key names.
        PublicKey(Type=KeyType.Ed25519, Data=bytes(32)).SerializeToString(),
    ],
)
def test_put_value_invalid_pk_is_rejected(value: bytes) -> None:
    w = World()
    key, _ = pk_record()
    with pytest.raises(Rejected):
        w.handle(put_request(key, value))
    assert len(w.h.records.values) == 0


def test_put_value_into_a_full_store_is_rejected() -> None:
    w = World(values=lambda conn: ValueStore(conn, max_bytes=300, per_peer=300))
    w.answer(put_request(b"/app/a", b"1"))
    with pytest.raises(Rejected, match="share"):
        w.handle(put_request(b"/app/b", b"2"))


# --- ADD_PROVIDER / GET_PROVIDERS -------------------------------------------------------------


def add_provider_request(key: bytes, *providers: tuple[bytes, tuple[bytes, ...]]) -> Message:
    request = new_message(MessageType.ADD_PROVIDER, key)
    for peer, peer_addrs in providers:
        entry = request.providerPeers.add()
        entry.id = peer
        entry.addrs.extend(peer_addrs)
    return request


def test_add_provider_has_no_answer_and_only_the_sender_may_announce_itself() -> None:
    w = World()
    key = b"\x12\x20" + bytes(range(32))
    other = w.peers[1]
    request = add_provider_request(key, (other, (b"evil",)), (w.sender, (b"mine",)))
    assert w.handle(request) is None
    records = w.providers.get(key, NOW)
    assert [(r.peer, r.addrs) for r in records] == [(w.sender, (b"mine",))]


def test_add_provider_for_someone_else_only_stores_nothing() -> None:
    w = World()
    key = b"\x12\x20" + bytes(32)
    assert w.handle(add_provider_request(key, (w.peers[2], addrs(w.peers[2])))) is None
    assert w.providers.get(key, NOW) == []


def test_add_provider_without_addrs_uses_the_known_ones() -> None:
    w = World()
    key = b"\x12\x20" + bytes(32)
    w.handle(add_provider_request(key, (w.sender, ())))
    [record] = w.providers.get(key, NOW)
    assert record.addrs == addrs(w.sender)


def test_add_provider_stores_addrs_without_the_senders_own_p2p_suffix() -> None:
    # js-libp2p sends /ip4/.../tcp/.../p2p/<itself>; the record keeps /ip4/.../tcp/...
    w = World()
    key = b"\x12\x20" + bytes(32)
    tcp = bytes([0x04, 127, 0, 0, 1, 0x06, 0x0F, 0xA1])
    suffix = b"\xa5\x03" + bytes([len(w.sender)]) + w.sender
    w.handle(add_provider_request(key, (w.sender, (tcp + suffix,))))
    [record] = w.providers.get(key, NOW)
    assert record.addrs == (tcp,)


def test_add_provider_past_the_senders_share_is_dropped_without_a_reset() -> None:
    refused: list[str] = []
    w = World(providers=lambda conn: ProviderStore(conn, max_records=10, per_peer=1))
    w.h.on_refused = refused.append
    first, second = b"\x12\x20" + bytes(32), b"\x12\x20" + b"\x01" * 32
    assert w.handle(add_provider_request(first, (w.sender, (b"a",)))) is None
    # Over its share: no answer exists to refuse with, and the stream stays usable.
    assert w.handle(add_provider_request(second, (w.sender, (b"a",)))) is None
    assert w.providers.get(second, NOW) == []
    assert refused == ["provider"]


@pytest.mark.parametrize(
    "key",
    [b"\x00", b"not a multihash", b"\x12\x20" + bytes(31), b"\x12\x50" + bytes(80)],
    ids=["identity-empty-digest-short", "text", "short-sha256", "over-80-bytes"],
)
@pytest.mark.parametrize("kind", [MessageType.ADD_PROVIDER, MessageType.GET_PROVIDERS])
def test_provider_keys_must_be_multihashes(key: bytes, kind: int) -> None:
    w = World()
    request = add_provider_request(key, (w.sender, (b"a",)))
    request.type = kind  # type: ignore[assignment]
    with pytest.raises(Rejected, match="multihash"):
        w.handle(request)
    assert len(w.providers) == 0


def test_get_providers() -> None:
    w = World()
    key = b"\x12\x20" + bytes(range(32))
    provider = w.peers[4]
    w.handle(add_provider_request(key, (provider, (b"p-addr",))), sender=provider)
    w.connected.add(provider)

    answer = w.answer(new_message(MessageType.GET_PROVIDERS, key))
    assert answer.type == MessageType.GET_PROVIDERS
    assert answer.key == key
    assert [(p.id, tuple(p.addrs), p.connection) for p in answer.providerPeers] == [
        (provider, (b"p-addr",), Message.CONNECTED)
    ]
    assert ids_of(answer.closerPeers) == w.expected_closer(key, w.sender)


def test_get_providers_fills_in_missing_addrs_and_caps_the_answer() -> None:
    w = World(peers=MAX_PROVIDERS_PER_ANSWER + 10)
    key = b"\x12\x20" + bytes(32)
    for i, peer in enumerate(w.peers):
        w.clock.now = NOW + i
        w.providers.add(key, peer, (), w.clock.now)
    answer = w.answer(new_message(MessageType.GET_PROVIDERS, key))
    got = [(p.id, tuple(p.addrs)) for p in answer.providerPeers]
    assert len(got) == MAX_PROVIDERS_PER_ANSWER
    # Newest first, each with the addresses the host knows.
    newest = list(reversed(w.peers))[:MAX_PROVIDERS_PER_ANSWER]
    assert got == [(p, addrs(p)) for p in newest]


def test_get_providers_names_this_node_first_for_a_key_it_provides() -> None:
    """As go-libp2p-kad-dht, which stores its own record: a peer asking this node
    for a key it provides hears of this node, with its announced addresses, ahead
    of the records held for others, and the answer stays within the cap."""
    w = World(peers=MAX_PROVIDERS_PER_ANSWER + 10)
    key = b"\x12\x20" + bytes(32)
    other_key = b"\x12\x20" + bytes([1]) * 32
    w.addrs[w.self_id] = (b"announced",)
    w.h.provides = lambda k: k == key
    for i, peer in enumerate(w.peers):
        w.clock.now = NOW + i
        w.providers.add(key, peer, (), w.clock.now)
    w.providers.add(key, w.self_id, (b"stale",), w.clock.now + 1)  # never twice
    got = [(p.id, tuple(p.addrs)) for p in
           w.answer(new_message(MessageType.GET_PROVIDERS, key)).providerPeers]
    assert len(got) == MAX_PROVIDERS_PER_ANSWER
    assert got[0] == (w.self_id, (b"announced",))
    assert [p for p, _ in got[1:]] == list(reversed(w.peers))[:MAX_PROVIDERS_PER_ANSWER - 1]
    assert not w.answer(new_message(MessageType.GET_PROVIDERS, other_key)).providerPeers


def test_get_providers_for_an_unknown_key() -> None:
    w = World()
    answer = w.answer(new_message(MessageType.GET_PROVIDERS, b"\x12\x20" + bytes(32)))
    assert not answer.providerPeers
    assert len(answer.closerPeers) == BUCKET_SIZE


# --- refusals, bounds and the sender ----------------------------------------------------------


def reason(w: World, request: Message) -> str:
    """Why ``request`` is refused (the host logs it and resets the stream)."""
    with pytest.raises(Rejected) as refused:
        w.handle(request)
    return str(refused.value)


def with_type(kind: int, request: Message) -> Message:
    request.type = kind  # type: ignore[assignment]
    return request


@pytest.mark.parametrize(
    ("request_of", "expected"),
    [
        (lambda: new_message(MessageType.FIND_NODE), "FIND_NODE without a key"),
        (lambda: new_message(MessageType.GET_VALUE), "GET_VALUE without a key"),
        (lambda: put_request(b"/app/a", b"v", b"/app/b"),
         "PUT_VALUE record key must equal the message key"),
        (lambda: new_message(MessageType.PUT_VALUE, b"/app/a"),
         "PUT_VALUE record key must equal the message key"),
        (lambda: new_message(MessageType.ADD_PROVIDER), "provider request without a key"),
        (lambda: new_message(MessageType.GET_PROVIDERS), "provider request without a key"),
        (lambda: new_message(MessageType.ADD_PROVIDER, b"\x12\x20" + bytes(31)),
         "provider key is not a multihash"),
        (lambda: new_message(MessageType.GET_PROVIDERS, b"\x00\x4f" + bytes(79)),
         "provider key is not a multihash"),
        (lambda: new_message(MessageType.GET_VALUE, b"/app/" + b"x" * 508), "key too long"),
        (lambda: with_type(42, new_message(MessageType.PING)), "unknown message type 42"),
    ],
    ids=["find-node-no-key", "get-value-no-key", "put-value-other-key", "put-value-no-record",
         "add-provider-no-key", "get-providers-no-key", "add-provider-not-multihash",
         "get-providers-81-bytes", "513-byte-key", "unknown-type"],
)
def test_each_refusal_says_why(request_of: Callable[[], Message], expected: str) -> None:
    w = World()
    assert reason(w, request_of()) == expected
    assert len(w.h.records.values) == 0
    assert len(w.providers) == 0


def identity_multihash(length: int) -> bytes:
    """A valid identity multihash of ``length`` bytes in all (a 2-byte header)."""
    return bytes([0x00, length - 2]) + bytes(range(length - 2))


@pytest.mark.parametrize(("length", "accepted"), [(34, True), (80, True), (81, False)])
def test_provider_keys_are_multihashes_of_at_most_80_bytes(length: int, accepted: bool) -> None:
    w = World()
    key = identity_multihash(length)
    assert len(key) == length
    add = add_provider_request(key, (w.sender, (b"a",)))
    get = new_message(MessageType.GET_PROVIDERS, key)
    if not accepted:
        assert reason(w, add) == "provider key is not a multihash"
        assert reason(w, get) == "provider key is not a multihash"
        assert len(w.providers) == 0
        return
    assert w.handle(add) is None
    answer = w.answer(get, w.peers[1])
    assert [(p.id, tuple(p.addrs)) for p in answer.providerPeers] == [(w.sender, (b"a",))]


@pytest.mark.parametrize(
    "kind", [MessageType.FIND_NODE, MessageType.GET_VALUE, MessageType.GET_PROVIDERS]
)
def test_closer_peers_never_name_the_sender(kind: int) -> None:
    w = World(peers=4)
    key = b"\x12\x20" + bytes(32)  # a multihash, so valid for every kind
    for sender in w.peers:
        got = ids_of(w.answer(new_message(kind, key), sender).closerPeers)
        assert sorted(got) == sorted(p for p in w.peers if p != sender)


def test_closer_peers_are_at_most_20() -> None:
    w = World(peers=21)
    key = b"\x12\x20" + bytes(32)
    stranger = new_id(w.rng)  # every table peer is a candidate
    for kind in (MessageType.FIND_NODE, MessageType.GET_VALUE, MessageType.GET_PROVIDERS):
        got = ids_of(w.answer(new_message(kind, key), stranger).closerPeers)
        assert got == w.expected_closer(key, stranger, 20)
        assert len(got) == 20


class HighestWins:
    """A namespace whose records are decimal numbers; the highest is best."""

    def validate(self, key: bytes, value: bytes) -> None:
        if not value.isdigit():
            raise InvalidRecord(f"{value!r} is not a number")

    def select(self, key: bytes, candidates: Sequence[Candidate]) -> int:
        values = [int(c.value) for c in candidates]
        return values.index(max(values))


def test_put_value_keeps_the_record_the_namespace_prefers() -> None:
    # The stored and the offered value are judged by the validator, not by time.
    w = World()
    w.h.validators = Validators({"num": HighestWins()})
    key = b"/num/n"
    w.answer(put_request(key, b"5"))
    w.clock.now = NOW + 10
    assert reason(w, put_request(key, b"4")) == "a better record is already stored"
    w.answer(put_request(key, b"6"))
    stored = w.h.records.values.get(key, w.clock.now)
    assert stored is not None
    assert (stored.value, stored.received_at) == (b"6", NOW + 10)


def test_a_value_the_store_refuses_is_counted_and_rejected() -> None:
    refused: list[str] = []
    w = World(values=lambda conn: ValueStore(conn, max_bytes=300, per_peer=300))
    w.h.on_refused = refused.append
    w.answer(put_request(b"/app/a", b"1"))
    assert refused == []
    with pytest.raises(Rejected):
        w.handle(put_request(b"/app/b", b"2"))
    assert refused == ["value"]
