"""dhtd: the libp2p / IPFS Kademlia DHT, served over gRPC."""

__version__ = "0.1.0"
