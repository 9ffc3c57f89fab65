// DhtClient against a live dhtd at $DHTD_ADDR (tests/clients/test_node_client.py
// starts one with 4 dev peers and --namespace demo). Skipped when DHTD_ADDR is unset.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { after, before, describe, test } from "node:test";

import {
  CancelledError,
  DeadlineExceededError,
  DhtClient,
  DhtdError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  QueryEventType,
  Status,
  UnavailableError,
} from "dhtd-client";

const ADDR = process.env.DHTD_ADDR;
const LIVE = { skip: ADDR ? false : "DHTD_ADDR is not set (no live dhtd to test against)" };

/** A CIDv1 (raw codec, sha2-256) of `text`, in base32: the shape of `ipfs add --cid-version 1`. */
function cidFor(text) {
  const bytes = Buffer.concat([
    Buffer.from([0x01, 0x55, 0x12, 0x20]),
    createHash("sha256").update(text).digest(),
  ]);
  const alphabet = "abcdefghijklmnopqrstuvwxyz234567";
  let bits = 0;
  let acc = 0;
  let out = "b";
  for (const byte of bytes) {
    acc = (acc << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out += alphabet[(acc >>> (bits - 5)) & 31];
      bits -= 5;
    }
    acc &= (1 << bits) - 1;
  }
  if (bits > 0) out += alphabet[(acc << (5 - bits)) & 31];
  return out;
}

const unique = (tag) => `node-${tag}-${process.pid}-${Date.now()}`;

async function collect(iterable) {
  const items = [];
  for await (const item of iterable) items.push(item);
  return items;
}

describe("DhtClient against a live dhtd", LIVE, () => {
  /** @type {DhtClient} */
  let client;
  let self;
  let other;

  before(async () => {
    client = new DhtClient(ADDR, { timeoutMs: 20_000 });
    self = await client.info();
    const events = await collect(client.query(self.peerId));
    other = events.find((e) => e.type === QueryEventType.FINAL_PEER && e.id !== self.peerId);
    assert.ok(other, "Query of our own ID found no other peer");
  });

  after(() => client?.close());

  test("info describes the node", () => {
    assert.match(self.peerId, /^(Qm|12D3)/);
    assert.equal(self.mode, "server");
    assert.match(self.protocol, /\/kad\/1\.0\.0$/);
    assert.ok(self.routingTableSize >= 4, `routing table ${self.routingTableSize}`);
    assert.ok(self.addrs.length > 0);
    assert.equal(typeof self.version, "string");
  });

  test("query walks and ends with FINAL_PEER events", async () => {
    const events = await collect(client.query(other.id));
    assert.ok(events.length > 0);
    for (const e of events) assert.ok(e.type in QueryEventType, `unknown type ${e.type}`);
    const finals = events.filter((e) => e.type === QueryEventType.FINAL_PEER);
    assert.ok(finals.length > 0);
    assert.ok(finals.every((e) => e.responses.length === 1 && e.responses[0].id === e.id));
    assert.ok(events.some((e) => e.type === QueryEventType.SENDING_QUERY));
  });

  test("findPeer and connect", async () => {
    const peer = await client.findPeer(other.id);
    assert.equal(peer.id, other.id);
    assert.ok(peer.addrs.length > 0);
    const result = await client.connect(`${peer.addrs[0]}/p2p/${peer.id}`);
    assert.equal(result.peer.id, peer.id);
    assert.equal(result.addedToRoutingTable, true);
  });

  test("provide, then findProvs yields this node", async () => {
    const cid = cidFor(unique("provide"));
    const events = await collect(client.provide([cid]));
    assert.ok(events.length > 0);
    assert.ok(events.every((p) => p.cid === cid));
    assert.ok(events.some((p) => p.event.type === QueryEventType.FINAL_PEER));
    const providers = await collect(client.findProvs(cid, { numProviders: 1 }));
    assert.deepEqual(providers.map((p) => p.id), [self.peerId]);
  });

  test("put, then get returns the value", async () => {
    const key = new TextEncoder().encode(`/demo/${unique("put")}`);
    const value = new TextEncoder().encode("world");
    const events = await collect(client.put(key, value));
    assert.ok(events.filter((e) => e.type === QueryEventType.FINAL_PEER).length >= 1);
    const got = await client.get(key);
    assert.ok(got instanceof Uint8Array);
    assert.equal(new TextDecoder().decode(got), "world");
  });

  test("minHolders 20 waits for every store; onHolders gets the FINAL_PEER count", async () => {
    let holders;
    const events = await collect(
      client.put(`/demo/${unique("holders")}`, "v", { minHolders: 20, onHolders: (h) => (holders = h) }),
    );
    assert.ok(events.every((e) => e.id !== "" && e.type !== undefined), "no empty event");
    const finals = events.filter((e) => e.type === QueryEventType.FINAL_PEER).length;
    assert.ok(finals >= 1);
    assert.equal(holders, finals);

    const cid = cidFor(unique("holders"));
    let perCid;
    const provided = await collect(client.provide(cid, { minHolders: 20, onHolders: (h) => (perCid = h) }));
    assert.ok(provided.every((p) => p.cid === cid && p.event.id !== ""), "no empty event");
    const delivered = provided.filter((p) => p.event.type === QueryEventType.FINAL_PEER).length;
    assert.deepEqual(perCid, [{ cid, holders: delivered }]);
  });

  test("NOT_FOUND is a NotFoundError, unary and streaming", async () => {
    const err = await client.get(new TextEncoder().encode(`/demo/${unique("missing")}`)).catch((e) => e);
    assert.ok(err instanceof NotFoundError, String(err));
    assert.ok(err instanceof DhtdError && err instanceof Error);
    assert.equal(err.code, Status.NOT_FOUND);
    assert.equal(err.codeName, "NOT_FOUND");
    await assert.rejects(collect(client.findProvs(cidFor(unique("nobody")))), NotFoundError);
  });

  test("malformed input is an InvalidArgumentError naming the field", async () => {
    const bad = await client.findPeer("nope").catch((e) => e);
    assert.ok(bad instanceof InvalidArgumentError, String(bad));
    assert.equal(bad.code, Status.INVALID_ARGUMENT);
    assert.ok(bad.details.startsWith("peer_id:"), bad.details);

    const good = cidFor(unique("ok"));
    const badCid = await collect(client.provide([good, "not-a-cid"])).catch((e) => e);
    assert.ok(badCid instanceof InvalidArgumentError, String(badCid));
    assert.ok(badCid.details.startsWith("cids[1]:"), badCid.details);

    const badKey = await client.get(new TextEncoder().encode("no-namespace")).catch((e) => e);
    assert.ok(badKey instanceof InvalidArgumentError, String(badKey));
    assert.ok(badKey.details.startsWith("key:"), badKey.details);

    const badQuery = await collect(client.query("also-not-a-peer")).catch((e) => e);
    assert.ok(badQuery instanceof InvalidArgumentError, String(badQuery));
    assert.ok(badQuery.details.startsWith("peer_id:"), badQuery.details);

    await assert.rejects(collect(client.findProvs(good, { numProviders: -1 })), (e) => {
      assert.ok(e instanceof InvalidArgumentError);
      assert.ok(e.details.startsWith("num_providers:"));
      return true;
    });
  });

  test("recursive provide is a FailedPreconditionError", async () => {
    await assert.rejects(
      collect(client.provide(cidFor(unique("rec")), { recursive: true })),
      FailedPreconditionError,
    );
  });

  test("a tiny timeout is a DeadlineExceededError or a prompt result", async () => {
    const started = Date.now();
    try {
      await collect(client.query(other.id, { timeoutMs: 1 }));
    } catch (err) {
      assert.ok(err instanceof DeadlineExceededError, String(err));
      assert.equal(err.code, Status.DEADLINE_EXCEEDED);
    }
    try {
      await client.findPeer(other.id, { timeoutMs: 1 });
    } catch (err) {
      assert.ok(err instanceof DeadlineExceededError, String(err));
    }
    assert.ok(Date.now() - started < 5_000, "the deadline was not applied");
  });

  test("breaking out of a stream early cancels it", async () => {
    let seen = 0;
    for await (const event of client.query(other.id)) {
      assert.ok(event.type in QueryEventType);
      seen += 1;
      break;
    }
    assert.equal(seen, 1);
    // The walk stops on the server; the channel stays usable.
    const deadline = Date.now() + 5_000;
    let info = await client.info();
    while (info.queriesInFlight > 0 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      info = await client.info();
    }
    assert.equal(info.queriesInFlight, 0);
    const rest = await collect(client.query(other.id));
    assert.ok(rest.some((e) => e.type === QueryEventType.FINAL_PEER));
  });

  test("an AbortSignal cancels a call", async () => {
    const controller = new AbortController();
    const seen = [];
    const err = await (async () => {
      for await (const event of client.query(other.id, { signal: controller.signal })) {
        seen.push(event);
        controller.abort();
      }
    })().catch((e) => e);
    assert.equal(seen.length >= 1, true);
    // Aborted before the server finished: CANCELLED; or it had already finished.
    if (err !== undefined) assert.ok(err instanceof CancelledError, String(err));
    await assert.rejects(client.info({ signal: AbortSignal.abort() }), CancelledError);
  });
});

test("an unreachable dhtd is an UnavailableError", async () => {
  const dead = new DhtClient("127.0.0.1:1", { timeoutMs: 5_000 });
  try {
    await assert.rejects(dead.info(), (err) => {
      assert.ok(err instanceof UnavailableError, String(err));
      assert.equal(err.code, Status.UNAVAILABLE);
      return true;
    });
    await assert.rejects(collect(dead.query("12D3KooWabc")), UnavailableError);
  } finally {
    dead.close();
  }
});
