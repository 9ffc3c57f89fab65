"""py-libp2p without the parts dhtd never runs, for a faster start.

``import libp2p`` (0.8.1) imports every transport and service it has: QUIC (with
aioquic), WebSocket, TLS with AutoTLS's ACME client (with httpx), circuit relay.
dhtd speaks TCP with its own Noise and yamux (dhtd.p2p), so that was about 0.3 s of
CPU at every start, spent by each of 30 processes of a swarm starting on 2 cores,
and by a sidecar before its readiness (bench/startup.py, 10 runs each in one
sitting: exec to ready went from 1.10 to 0.77 s of CPU).

:func:`install` (called when the ``dhtd`` package is imported, so before any of its
modules imports libp2p) puts a finder first on ``sys.meta_path`` that answers for
:data:`STUBBED` packages with empty stand-ins, and turns off dnspython's DNS-over-QUIC
(:data:`DNS_FEATURES_OFF`), which would import aioquic. A stand-in's names are
classes that take any arguments and do nothing (those ending in Error or Exception
are exceptions, so ``except`` clauses naming them still work): enough for
py-libp2p's imports and type annotations, nothing that runs. Promises:

- Nothing changes once ``libp2p`` was imported before :func:`install`: then the
  real modules are loaded already and the finder is not installed.
- dnspython (multiaddr's DNS resolver, for /dns addresses) resolves over UDP and
  TCP as before; only DNS-over-QUIC, which nothing here asks for, is off.
- dhtd listens on TCP only (dhtd.addrs refuses other listen addresses), and
  py-libp2p builds its transports from the listen addresses, so no stand-in is
  ever called: a peer's QUIC or WebSocket address is not dialled, as before.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Sequence
from typing import Any

# py-libp2p packages dhtd never runs; each is replaced whole, with its submodules.
STUBBED: tuple[str, ...] = (
    "libp2p.transport.quic",
    "libp2p.transport.websocket",
    "libp2p.security.tls.autotls",
    "libp2p.relay",
)
# dnspython features (dns._features) that would import what is stubbed or unused:
# DNS-over-QUIC needs aioquic.
DNS_FEATURES_OFF: tuple[str, ...] = ("doq",)


def _within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def _accept_anything(self: object, *args: Any, **kwargs: Any) -> None:
    del args, kwargs


class StandIn(types.ModuleType):
    """An empty module whose every name is a do-nothing class."""

    def __getattr__(self, name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        base: type = Exception if name.endswith(("Error", "Exception")) else object
        cls = type(name, (base,), {"__init__": _accept_anything, "__module__": self.__name__})
        setattr(self, name, cls)
        return cls


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if _within(fullname, STUBBED):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = StandIn(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


def install() -> bool:
    """Installs the finder once, unless libp2p is imported already; True if it is
    in place."""
    if any(isinstance(f, _Finder) for f in sys.meta_path):
        return True
    if "libp2p" in sys.modules:
        return False
    sys.meta_path.insert(0, _Finder())
    # dnspython 2.9's switch for its optional features (its tests use it too).
    import dns._features

    for feature in DNS_FEATURES_OFF:
        dns._features.force(feature, False)
    return True
