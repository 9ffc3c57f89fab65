"""dhtd.libp2p_lean: importing dhtd skips py-libp2p's QUIC, WebSocket, AutoTLS and relay
packages (and dnspython's DNS-over-QUIC) with do-nothing stand-ins, and changes
nothing when libp2p was imported first. Each import runs in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dhtd import libp2p_lean
from dhtd.libp2p_lean import StandIn

CHILD_TIMEOUT = 60


def child(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_importing_dhtd_leaves_the_unused_transports_out() -> None:
    out = child(
        "import sys, dhtd.app, dns._features\n"
        "quic = sys.modules['libp2p.transport.quic.transport']\n"
        "print(type(quic).__name__, 'aioquic' in sys.modules, 'httpx' in sys.modules,\n"
        "      dns._features.have('doq'), type(sys.modules['libp2p.transport.tcp.tcp']).__name__)")
    assert out == "StandIn False False False module"


def test_libp2p_imported_first_is_left_whole() -> None:
    out = child("import libp2p, sys, dhtd.p2p, dhtd.libp2p_lean as lean\n"
                "print(type(sys.modules['libp2p.transport.quic.transport']).__name__,\n"
                "      'aioquic' in sys.modules,\n"
                "      any(isinstance(f, lean._Finder) for f in sys.meta_path))")
    assert out == "module True False"


def test_a_stand_ins_names_take_anything_and_errors_can_be_caught() -> None:
    module = StandIn("libp2p.transport.quic.example")
    transport = module.QUICTransport("key", config=None)
    assert type(transport).__module__ == "libp2p.transport.quic.example"
    assert module.QUICTransport is type(transport)  # the same class each time
    with pytest.raises(module.QUICStreamResetError):
        raise module.QUICStreamResetError("reset")
    assert issubclass(module.ConnectionException, Exception)
    with pytest.raises(AttributeError):
        _ = module.__wrapped__


def test_install_is_idempotent_once_in_place() -> None:
    # This test process imported dhtd (and so libp2p) already: in place or refused.
    first = libp2p_lean.install()
    assert libp2p_lean.install() is first
