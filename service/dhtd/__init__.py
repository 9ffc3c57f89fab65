"""dhtd: the libp2p / IPFS Kademlia DHT, served over gRPC."""

from dhtd import libp2p_lean

__version__ = "0.1.0"

# Before any dhtd module imports py-libp2p: skip the transports dhtd never runs.
libp2p_lean.install()
