/**
 * A typed Node.js client for dhtd, the libp2p Kademlia DHT served over gRPC
 * (`protos/dht/v1/dht.proto`), built on @grpc/grpc-js.
 *
 * It returns plain objects (see ./types), not protobuf messages, and throws
 * `DhtdError` subclasses instead of raw gRPC errors. Streaming methods return
 * async generators: the RPC starts when iteration starts, and leaving a
 * `for await` loop early (break, return, throw) cancels it. Provide, Put and
 * Query ask dhtd for batched events (`batch_events`: several per gRPC message,
 * which costs both ends less CPU) and still yield them one at a time, in order.
 */
import {
  type CallOptions as GrpcCallOptions,
  type ChannelCredentials,
  type ChannelOptions,
  type ClientReadableStream,
  type ClientUnaryCall,
  credentials as grpcCredentials,
  Metadata,
  type ServiceError,
} from "@grpc/grpc-js";

import * as pb from "./gen/dht/v1/dht";
import { InvalidArgumentError, CancelledError, Status, toDhtdError } from "./errors";
import {
  type ConnectResult,
  type NodeInfo,
  type NodeMode,
  type PeerInfo,
  type ProvideEvent,
  type ProvideHolders,
  type QueryEvent,
  QueryEventType,
} from "./types";

export * from "./errors";
export * from "./types";
/** The generated protobuf messages and @grpc/grpc-js service clients, for what DhtClient does not cover. */
export { pb };

/** Where dhtd listens by default. */
export const DEFAULT_TARGET = "127.0.0.1:50051";

/** Options every method takes. */
export interface CallOptions {
  /** Deadline of this call in milliseconds; overrides the client's `timeoutMs`. */
  timeoutMs?: number;
  /** Cancels the call when aborted; it then fails with `CancelledError`. */
  signal?: AbortSignal;
}

export interface FindProvsOptions extends CallOptions {
  /** Stop after this many providers; 0 (the default) means 20. */
  numProviders?: number;
}

export interface PutOptions extends CallOptions {
  /**
   * End the call once this many peers stored the record; the other stores go on in
   * dhtd's background. 0 (the default): dhtd's `--min-holders` (5); 20 or more:
   * wait for every store.
   */
  minHolders?: number;
  /**
   * Called once, when the stream ends, with how many peers had stored the record,
   * from the stream's last message (that message carries no event). Not called by a
   * dhtd that does not report holders.
   */
  onHolders?: (holders: number) => void;
}

export interface ProvideOptions extends CallOptions {
  /** Provide the whole DAG under each CID. dhtd answers FAILED_PRECONDITION for now. */
  recursive?: boolean;
  /** As `PutOptions.minHolders`, per CID. */
  minHolders?: number;
  /**
   * Called once, when the stream ends, with how many peers had taken each CID's
   * record, in request order. Not called by a dhtd that does not report holders.
   */
  onHolders?: (holders: ProvideHolders[]) => void;
}

export interface DhtClientOptions {
  /** Default deadline of every call in milliseconds (none when unset). */
  timeoutMs?: number;
  /** Channel credentials; insecure (plaintext) by default, as dhtd serves. */
  credentials?: ChannelCredentials;
  /** Options for the @grpc/grpc-js channel (e.g. `grpc.max_receive_message_length`). */
  channelOptions?: ChannelOptions;
}

type UnaryMethod<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: Partial<GrpcCallOptions>,
  callback: (error: ServiceError | null, response: Res) => void,
) => ClientUnaryCall;

type StreamMethod<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: Partial<GrpcCallOptions>,
) => ClientReadableStream<Res>;

const MAX_UINT32 = 0xffff_ffff;
const noop = (): void => {};

/**
 * A dhtd client. One instance holds one HTTP/2 channel, shared by both services;
 * `close()` it when done.
 *
 * ```ts
 * const dht = new DhtClient("127.0.0.1:50051", { timeoutMs: 30_000 });
 * for await (const p of dht.findProvs(cid, { numProviders: 1 })) console.log(p.id);
 * dht.close();
 * ```
 */
export class DhtClient {
  readonly target: string;
  private readonly timeoutMs: number | undefined;
  private readonly dht: pb.DhtServiceClient;
  private readonly node: pb.NodeServiceClient;

  constructor(target: string = DEFAULT_TARGET, options: DhtClientOptions = {}) {
    this.target = target;
    this.timeoutMs = options.timeoutMs;
    const creds = options.credentials ?? grpcCredentials.createInsecure();
    this.dht = new pb.DhtServiceClient(target, creds, options.channelOptions);
    this.node = new pb.NodeServiceClient(target, creds, {
      ...options.channelOptions,
      channelOverride: this.dht.getChannel(),
    });
  }

  /** Closes the channel. Calls still running fail with UNAVAILABLE or CANCELLED. */
  close(): void {
    this.dht.close();
  }

  // -- DhtService -------------------------------------------------------------------

  /** The multiaddrs of a peer. Throws NotFoundError when no peer on the walk knows one. */
  async findPeer(peerId: string, options: CallOptions = {}): Promise<PeerInfo> {
    const resp = await this.unary(this.dht.findPeer, this.dht, { peerId }, options);
    return peerFromPb(resp.peer);
  }

  /**
   * Each provider of `cid` the moment any peer returns it. Ends after `numProviders`
   * (0 means 20); throws NotFoundError if the walk found none.
   */
  findProvs(cid: string, options: FindProvsOptions = {}): AsyncGenerator<PeerInfo, void, undefined> {
    const numProviders = options.numProviders ?? 0;
    const bad = checkUint32("num_providers", numProviders);
    if (bad) {
      return failingStream(bad);
    }
    return this.stream(this.dht.findProvs, this.dht, { cid, numProviders }, options, (r) => [
      peerFromPb(r.provider),
    ]);
  }

  /** The best value stored under `key`. Throws NotFoundError if no peer holds a valid record. */
  async get(key: Uint8Array | string, options: CallOptions = {}): Promise<Uint8Array> {
    const resp = await this.unary(this.dht.get, this.dht, { key: toBytes(key) }, options);
    return resp.value;
  }

  /**
   * Announces this node as provider of each CID, yielding the walk events one by
   * one, in order, each with its CID. Throws UnavailableError at the end if any
   * CID was taken by no peer.
   */
  provide(cids: string | readonly string[], options: ProvideOptions = {}): AsyncGenerator<ProvideEvent, void, undefined> {
    const minHolders = options.minHolders ?? 0;
    const bad = checkUint32("min_holders", minHolders);
    if (bad) {
      return failingStream(bad);
    }
    // Asks for batched events (several per message; see provideEventsFromPb).
    const request = {
      cids: typeof cids === "string" ? [cids] : [...cids],
      recursive: options.recursive ?? false,
      batchEvents: true,
      minHolders,
    };
    // The holders message names every CID: one without any is not it.
    const last = new LastHolders<pb.ProvideResponse, ProvideHolders[]>((r) =>
      r.holders.length === 0 ? undefined : r.holders.map((h) => ({ cid: h.cid, holders: h.holders })),
    );
    const events = this.stream(this.dht.provide, this.dht, request, options, (r) => last.see(r, provideEventsFromPb(r)));
    return last.after(events, options.onHolders);
  }

  /**
   * Stores a record here and on the k closest peers, yielding the walk events; each
   * FINAL_PEER is a peer that stored it. Throws UnavailableError if no peer took it.
   * `minHolders` and `onHolders`: see PutOptions.
   */
  put(key: Uint8Array | string, value: Uint8Array | string, options: PutOptions = {}): AsyncGenerator<QueryEvent, void, undefined> {
    const minHolders = options.minHolders ?? 0;
    const bad = checkUint32("min_holders", minHolders);
    if (bad) {
      return failingStream(bad);
    }
    // Asks for batched events (several per message; see walkEventsFromPb).
    const request = { key: toBytes(key), value: toBytes(value), batchEvents: true, minHolders };
    const last = new LastHolders<pb.PutResponse, number>((r) => r.holders);
    const events = this.stream(this.dht.put, this.dht, request, options, (r) => last.see(r, walkEventsFromPb(r)));
    return last.after(events, options.onHolders);
  }

  /** The walk towards `peerId`; ends with one FINAL_PEER event per closest peer found. */
  query(peerId: string, options: CallOptions = {}): AsyncGenerator<QueryEvent, void, undefined> {
    // Asks for batched events (several per message; see walkEventsFromPb).
    return this.stream(this.dht.query, this.dht, { peerId, batchEvents: true }, options, walkEventsFromPb);
  }

  // -- NodeService ------------------------------------------------------------------

  /** Describes this node. */
  async info(options: CallOptions = {}): Promise<NodeInfo> {
    const r = await this.unary(this.node.info, this.node, {}, options);
    return {
      peerId: r.peerId,
      addrs: [...r.addrs],
      mode: modeFromPb(r.mode),
      protocol: r.protocol,
      routingTableSize: r.routingTableSize,
      connectedPeers: r.connectedPeers,
      version: r.version,
      queriesInFlight: r.queriesInFlight,
    };
  }

  /** Dials a multiaddr ending in `/p2p/<peer id>`. Throws UnavailableError if the dial fails. */
  async connect(addr: string, options: CallOptions = {}): Promise<ConnectResult> {
    const r = await this.unary(this.node.connect, this.node, { addr }, options);
    return { peer: peerFromPb(r.peer), addedToRoutingTable: r.addedToRoutingTable };
  }

  // -- plumbing ---------------------------------------------------------------------

  private grpcOptions(options: CallOptions): Partial<GrpcCallOptions> {
    const timeoutMs = options.timeoutMs ?? this.timeoutMs;
    return timeoutMs === undefined ? {} : { deadline: new Date(Date.now() + Math.max(0, timeoutMs)) };
  }

  private unary<Req, Res>(
    method: UnaryMethod<Req, Res>,
    self: object,
    request: Req,
    options: CallOptions,
  ): Promise<Res> {
    const { signal } = options;
    if (signal?.aborted) {
      return Promise.reject(abortedError(signal));
    }
    return new Promise<Res>((resolve, reject) => {
      let onAbort = noop;
      const call = method.call(self, request, new Metadata(), this.grpcOptions(options), (err, resp) => {
        signal?.removeEventListener("abort", onAbort);
        if (err) {
          reject(toDhtdError(err));
        } else {
          resolve(resp);
        }
      });
      if (signal) {
        onAbort = () => call.cancel();
        signal.addEventListener("abort", onAbort, { once: true });
      }
    });
  }

  /**
   * Runs a server-streaming call, yielding the items `convert` makes of each
   * response message (none, one or several), in order.
   */
  private async *stream<Req, Res, T>(
    method: StreamMethod<Req, Res>,
    self: object,
    request: Req,
    options: CallOptions,
    convert: (response: Res) => Iterable<T>,
  ): AsyncGenerator<T, void, undefined> {
    const { signal } = options;
    if (signal?.aborted) {
      throw abortedError(signal);
    }
    const call = method.call(self, request, new Metadata(), this.grpcOptions(options));
    const onAbort = () => call.cancel();
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      for await (const response of call as AsyncIterable<Res>) {
        yield* convert(response);
      }
    } catch (err) {
      throw toDhtdError(err);
    } finally {
      signal?.removeEventListener("abort", onAbort);
      // Abandoned early (break, return, throw in the loop body): stop the walk on
      // the server. The CANCELLED status that follows is ours; swallow it.
      call.on("error", noop);
      call.cancel();
    }
  }
}

function abortedError(signal: AbortSignal): CancelledError {
  const reason: unknown = signal.reason;
  const text = reason instanceof Error ? reason.message : reason === undefined ? "" : String(reason);
  return new CancelledError(Status.CANCELLED, `aborted before the call started${text ? `: ${text}` : ""}`, {
    cause: reason,
  });
}

/** An InvalidArgumentError naming `field` unless `value` is an integer from 0 to MAX_UINT32. */
function checkUint32(field: string, value: number): InvalidArgumentError | undefined {
  if (Number.isInteger(value) && value >= 0 && value <= MAX_UINT32) {
    return undefined;
  }
  return new InvalidArgumentError(
    Status.INVALID_ARGUMENT,
    `${field}: must be an integer from 0 to ${MAX_UINT32}, got ${value}`,
  );
}

/**
 * The holders of a Provide or Put stream: its last message has no event and
 * carries them. An eventless message that is followed by events is nothing, and a
 * dhtd that does not report holders ends with an event: then there are none.
 */
class LastHolders<Res, H> {
  private holders: H | undefined;

  constructor(private readonly fromPb: (response: Res) => H | undefined) {}

  /** Notes one response and its events; returns the events. */
  see<T>(response: Res, events: T[]): T[] {
    this.holders = events.length === 0 ? this.fromPb(response) : undefined;
    return events;
  }

  /** `events`, then `onHolders` called with the holders, if the stream ended with them. */
  async *after<T>(events: AsyncGenerator<T, void, undefined>, onHolders?: (holders: H) => void): AsyncGenerator<T, void, undefined> {
    yield* events;
    if (this.holders !== undefined) {
      onHolders?.(this.holders);
    }
  }
}

async function* failingStream<T>(err: Error): AsyncGenerator<T, void, undefined> {
  throw err;
}

const encoder = new TextEncoder();

function toBytes(value: Uint8Array | string): Uint8Array {
  return typeof value === "string" ? encoder.encode(value) : value;
}

function peerFromPb(msg: pb.PeerInfo | undefined): PeerInfo {
  return { id: msg?.id ?? "", addrs: [...(msg?.addrs ?? [])] };
}

function eventFromPb(msg: pb.QueryEvent | undefined): QueryEvent {
  return {
    type: (msg?.type ?? QueryEventType.SENDING_QUERY) as number as QueryEventType,
    id: msg?.id ?? "",
    responses: (msg?.responses ?? []).map(peerFromPb),
    extra: msg?.extra ?? "",
  };
}

/**
 * The events of one Provide response, in order, each with its CID: those in
 * `events` (dhtd honours batchEvents), else the single `event` with `cid` (an
 * older dhtd that ignores it), else none.
 */
function provideEventsFromPb(r: pb.ProvideResponse): ProvideEvent[] {
  if (r.events.length > 0) {
    return r.events.map((e) => ({ cid: e.cid, event: eventFromPb(e.event) }));
  }
  return r.event === undefined ? [] : [{ cid: r.cid, event: eventFromPb(r.event) }];
}

/**
 * The events of one Put or Query response, in order: those in `events` (dhtd
 * honours batchEvents), else the single `event` (an older dhtd that ignores
 * it), else none.
 */
function walkEventsFromPb(r: pb.PutResponse | pb.QueryResponse): QueryEvent[] {
  if (r.events.length > 0) {
    return r.events.map((e) => eventFromPb(e));
  }
  return r.event === undefined ? [] : [eventFromPb(r.event)];
}

function modeFromPb(mode: pb.Mode): NodeMode {
  switch (mode) {
    case pb.Mode.MODE_SERVER:
      return "server";
    case pb.Mode.MODE_CLIENT:
      return "client";
    default:
      return "unspecified";
  }
}
