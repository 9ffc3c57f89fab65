"""The Delegated Routing V1 HTTP API (``--routing-http-addr``): :mod:`.routes` on
:mod:`.server`."""

from dhtd.httproute.routes import Routes
from dhtd.httproute.server import HttpServer

__all__ = ["HttpServer", "Routes"]
