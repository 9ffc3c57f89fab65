"""dhtd.p2p.upgrade: multistream-select, the Noise XX handshake and the muxer choice,
between two of dhtd's upgraders and against py-libp2p's own, over real sockets."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.lowlevel
from libp2p import new_host
from libp2p.io.trio import TrioTCPStream
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.peer.id import ID
from libp2p.security.noise.pb import noise_pb2
from libp2p.transport.exceptions import SecurityUpgradeFailure
from libp2p.transport.upgrader import TransportUpgrader

from dhtd.ids import encode_uvarint
from dhtd.p2p import multistream, new_identity, peer_id_of
from dhtd.p2p import upgrade as up
from dhtd.p2p.yamux import Yamux

YAMUX = "/yamux/1.0.0"
MPLEX = "/mplex/6.7.0"


def trio_test(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        trio.run(functools.partial(fn, *args, **kwargs))

    return run


def stock() -> TransportUpgrader:
    """py-libp2p's own upgrader (noise, yamux then mplex), as new_host builds it."""
    network: Any = new_host(key_pair=new_identity()).get_network()
    upgrader: TransportUpgrader = network.upgrader
    return upgrader


def upgrader(muxers: list[str] | None = None) -> up.Upgrader:
    pair = new_identity()
    network: Any = new_host(key_pair=pair).get_network()
    ours = up.Upgrader(pair, network.upgrader)
    if muxers is not None:  # what it supports, and lists in its handshake payload
        ours.muxers = muxers
        ours._payload = ours.payload()
    return ours


def raw_pair() -> tuple[RawConnection, RawConnection]:
    a, b = trio.socket.socketpair()
    return (RawConnection(TrioTCPStream(trio.SocketStream(a)), True),
            RawConnection(TrioTCPStream(trio.SocketStream(b)), False))


def peer_of(u: Any) -> ID:
    return ID(peer_id_of(u._pair)) if isinstance(u, up.Upgrader) else u._peer


async def both(dial: Callable[[], Awaitable[Any]], answer: Callable[[], Awaitable[Any]]
               ) -> tuple[Any, Any]:
    out: dict[str, Any] = {}

    async def run(name: str, fn: Callable[[], Awaitable[Any]]) -> None:
        try:
            out[name] = await fn()
        except Exception as exc:
            out[name] = exc

    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, "dial", dial)
            nursery.start_soon(run, "answer", answer)
    return out["dial"], out["answer"]


async def connect(dialler: Any, listener: Any, expect: ID | None = None
                  ) -> tuple[Any, Any, Any, Any]:
    """Secures and muxes a socket pair; returns (dial session, answer session,
    dial muxer, answer muxer); exceptions are returned, not raised."""
    raw_a, raw_b = raw_pair()
    expected = expect or ID(peer_id_of(listener._pair))
    a, b = await both(lambda: dialler.upgrade_security(raw_a, True, expected),
                      lambda: listener.upgrade_security(raw_b, False))
    if isinstance(a, Exception) or isinstance(b, Exception):
        return a, b, None, None
    ma, mb = await both(lambda: dialler.upgrade_connection(a, b.get_local_peer()),
                        lambda: listener.upgrade_connection(b, a.get_local_peer()))
    return a, b, ma, mb


async def exchange(ma: Any, mb: Any) -> bytes:
    """One stream from a to b: b echoes what a sends."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ma.start)
        nursery.start_soon(mb.start)
        stream = await ma.open_stream()
        await stream.write(b"ping over the new connection")
        inbound = await mb.accept_stream()
        await inbound.write(await inbound.read(1024))
        echoed: bytes = await stream.read(1024)
        await ma.close()
        await mb.close()
        nursery.cancel_scope.cancel()
    return echoed


@trio_test
async def test_two_dhtd_upgraders_agree_on_who_is_who_and_pick_yamux_in_the_handshake() -> None:
    dialler, listener = upgrader(), upgrader()
    a, b, ma, mb = await connect(dialler, listener)
    assert a.get_remote_peer() == ID(peer_id_of(listener._pair))
    assert b.get_remote_peer() == ID(peer_id_of(dialler._pair))
    assert a.early_muxer == b.early_muxer == YAMUX  # no multistream round for the muxer
    assert isinstance(ma, Yamux) and isinstance(mb, Yamux)
    assert ma.is_initiator and not mb.is_initiator
    assert await exchange(ma, mb) == b"ping over the new connection"


@trio_test
async def test_without_muxer_lists_multistream_select_picks_the_muxer_in_the_channel() -> None:
    dialler, listener = upgrader(), upgrader()
    listener.offer_muxers = False  # an older peer
    listener._payload = listener.payload()
    a, b, ma, mb = await connect(dialler, listener)
    assert a.early_muxer is b.early_muxer is None  # multistream-select decides
    assert isinstance(ma, Yamux) and isinstance(mb, Yamux)
    assert await exchange(ma, mb) == b"ping over the new connection"


@trio_test
async def test_the_dialler_s_first_shared_muxer_wins() -> None:
    dialler = upgrader([MPLEX, YAMUX])
    listener = upgrader([YAMUX, MPLEX])
    a, b, ma, mb = await connect(dialler, listener)
    assert a.early_muxer == b.early_muxer == MPLEX
    assert type(ma).__name__ == type(mb).__name__ == "Mplex"
    await ma.close()
    await mb.close()


@trio_test
async def test_no_shared_muxer_fails_the_handshake() -> None:
    a, b, _, _ = await connect(upgrader([MPLEX]), upgrader([YAMUX]))
    assert isinstance(a, SecurityUpgradeFailure) and "no shared stream muxer" in str(a)
    assert isinstance(b, Exception)


@trio_test
async def test_dialling_the_wrong_peer_id_fails() -> None:
    someone_else = ID(peer_id_of(new_identity()))
    a, b, _, _ = await connect(upgrader(), upgrader(), expect=someone_else)
    assert isinstance(a, SecurityUpgradeFailure)
    assert f"dialled {someone_else}" in str(a)
    assert isinstance(b, Exception)  # the socket was closed under it


@trio_test
async def test_an_identity_that_did_not_sign_the_noise_key_is_refused() -> None:
    listener = upgrader()
    forger = new_identity()  # signs the static key with a key it does not present
    listener._payload = noise_pb2.NoiseHandshakePayload(
        identity_key=listener._pair.public_key.serialize(),
        identity_sig=forger.private_key.sign(
            up._STATIC_KEY_PREFIX + up._raw_public(listener._static)),
    ).SerializeToString()
    a, _, _, _ = await connect(upgrader(), listener)
    assert isinstance(a, SecurityUpgradeFailure)
    assert "does not sign its noise key" in str(a)


@pytest.mark.parametrize("dhtd_dials", [True, False])
@trio_test
async def test_py_libp2p_s_own_upgrader_interoperates(dhtd_dials: bool) -> None:
    ours, theirs = upgrader(), stock()
    raw_a, raw_b = raw_pair()
    if dhtd_dials:
        their_id = _stock_peer(theirs)
        a, b = await both(lambda: ours.upgrade_security(raw_a, True, their_id),
                          lambda: theirs.upgrade_security(raw_b, False))
        assert not isinstance(a, Exception) and not isinstance(b, Exception), (a, b)
        assert a.early_muxer is None  # py-libp2p lists no muxers
        ma, mb = await both(lambda: ours.upgrade_connection(a, b.get_local_peer()),
                            lambda: theirs.upgrade_connection(b, a.get_local_peer()))
    else:
        our_id = ID(peer_id_of(ours._pair))
        a, b = await both(lambda: theirs.upgrade_security(raw_a, True, our_id),
                          lambda: ours.upgrade_security(raw_b, False))
        assert not isinstance(a, Exception) and not isinstance(b, Exception), (a, b)
        assert b.early_muxer is None
        ma, mb = await both(lambda: theirs.upgrade_connection(a, b.get_local_peer()),
                            lambda: ours.upgrade_connection(b, a.get_local_peer()))
    assert not isinstance(ma, Exception) and not isinstance(mb, Exception), (ma, mb)
    assert await exchange(ma, mb) == b"ping over the new connection"


def _stock_peer(theirs: TransportUpgrader) -> ID:
    transport: Any = theirs.security_multistream.transports["/noise"]  # type: ignore[index]
    return ID.from_pubkey(transport.libp2p_privkey.get_public_key())


# -- what a hostile or broken dialler gets -------------------------------------------


def ms(*messages: bytes) -> bytes:
    return b"".join(encode_uvarint(len(m)) + m for m in messages)


async def answer_to(data: bytes, *, close: bool = True) -> tuple[Exception | Any, bytes]:
    """Feeds ``data`` to a listener; returns what it raised and what it wrote."""
    listener = upgrader()
    raw_a, raw_b = raw_pair()
    sock = raw_a.stream.stream  # type: ignore[attr-defined]
    await sock.send_all(data)
    if close:
        await sock.send_eof()
    result, _ = await both(lambda: listener.upgrade_security(raw_b, False),
                           trio.lowlevel.checkpoint)
    written = b""
    with trio.move_on_after(1):
        while chunk := await sock.receive_some(65536):
            written += chunk
    await raw_a.close()
    return result, written


@trio_test
async def test_a_dialler_without_the_multistream_header_is_dropped() -> None:
    result, _ = await answer_to(ms(b"/multistream/2.0.0\n", b"/noise\n"))
    assert isinstance(result, SecurityUpgradeFailure)
    assert "multistream-select 1.0" in str(result)


@trio_test
async def test_unknown_proposals_get_na_and_the_dialler_gets_a_bounded_number() -> None:
    proposals = [b"/tls/1.0.0\n"] + [b"/other/%d\n" % i for i in range(multistream.MAX_PROPOSALS)]
    result, written = await answer_to(ms(b"/multistream/1.0.0\n", *proposals))
    assert isinstance(result, SecurityUpgradeFailure)
    assert f"{multistream.MAX_PROPOSALS} proposals" in str(result)
    assert written == ms(b"/multistream/1.0.0\n", *[b"na\n"] * multistream.MAX_PROPOSALS)


@trio_test
async def test_a_multistream_message_over_the_limit_is_refused() -> None:
    result, _ = await answer_to(ms(b"/multistream/1.0.0\n", b"x" * 2000 + b"\n"))
    assert isinstance(result, SecurityUpgradeFailure)
    assert "2001 bytes" in str(result)


@trio_test
async def test_a_dialler_that_stops_mid_handshake_is_dropped_at_the_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(up, "HANDSHAKE_TIMEOUT", 0.3)
    start = trio.current_time()
    result, written = await answer_to(ms(b"/multistream/1.0.0\n", b"/noise\n"), close=False)
    assert isinstance(result, SecurityUpgradeFailure)
    assert "not done within 0.3s" in str(result)
    assert trio.current_time() - start < 2
    assert written == ms(b"/multistream/1.0.0\n", b"/noise\n")


@trio_test
async def test_a_garbage_handshake_message_fails_to_decrypt() -> None:
    # A well-formed message 1, then 80 bytes of noise as message 3.
    message1 = bytes(32)[:31] + b"\x09"  # a public key; the contents do not matter
    message3 = bytes(range(80))
    result, _ = await answer_to(
        ms(b"/multistream/1.0.0\n", b"/noise\n")
        + len(message1).to_bytes(2, "big") + message1
        + len(message3).to_bytes(2, "big") + message3)
    assert isinstance(result, SecurityUpgradeFailure)
    assert "decrypt" in str(result) or "bad noise key" in str(result)


def test_bytes_behind_the_last_handshake_message_are_ciphertext() -> None:
    """A dialler that chose the muxer in the handshake writes at once: bytes read
    with its message 3 are its first transport message, not plaintext."""
    link = up._Link(trio.SocketStream.__new__(trio.SocketStream))
    link.plain += b"\x00\x05sealed"
    link.secure(bytes(32), bytes(32))
    assert link.plain == b""
    assert link.raw == b"\x00\x05sealed"
