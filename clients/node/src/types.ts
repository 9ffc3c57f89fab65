/** Plain value types returned by DhtClient, independent of the generated protobuf code. */

/** The kind of a DHT walk step; the numbers are go-libp2p's `routing.QueryEventType`. */
export enum QueryEventType {
  SENDING_QUERY = 0,
  PEER_RESPONSE = 1,
  FINAL_PEER = 2,
  QUERY_ERROR = 3,
  PROVIDER = 4,
  VALUE = 5,
  ADDING_PEER = 6,
  DIALING_PEER = 7,
}

/** A peer ID (base58btc) and its multiaddrs (without the `/p2p/` suffix). */
export interface PeerInfo {
  id: string;
  addrs: string[];
}

/**
 * One step of a DHT walk. `responses` holds the closer peers for PEER_RESPONSE and
 * the result peer for FINAL_PEER; `extra` holds the failure text for QUERY_ERROR.
 */
export interface QueryEvent {
  type: QueryEventType;
  id: string;
  responses: PeerInfo[];
  extra: string;
}

/** A walk event of one announcement; `cid` is the CID as given to `provide`. */
export interface ProvideEvent {
  cid: string;
  event: QueryEvent;
}

/** How many peers had taken one CID's provider record when Provide ended. */
export interface ProvideHolders {
  cid: string;
  holders: number;
}

/** Whether the node answers kad requests from others. */
export type NodeMode = "server" | "client" | "unspecified";

/** What dhtd says about itself. */
export interface NodeInfo {
  peerId: string;
  addrs: string[];
  mode: NodeMode;
  /** The kad protocol id, e.g. `/ipfs/kad/1.0.0`. */
  protocol: string;
  routingTableSize: number;
  connectedPeers: number;
  version: string;
  queriesInFlight: number;
}

/** The peer dialled, and whether it is now in the routing table. */
export interface ConnectResult {
  peer: PeerInfo;
  addedToRoutingTable: boolean;
}
