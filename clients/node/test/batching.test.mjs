// DhtClient's handling of batched walk events (batch_events), against a fake
// DhtService in this process: no dhtd needed, so these run with or without
// DHTD_ADDR. The fake records each request and writes the response messages a
// test scripts for it, then ends the stream.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { Server, ServerCredentials } from "@grpc/grpc-js";

import { DhtClient, pb, QueryEventType } from "dhtd-client";

const { SENDING_QUERY, PEER_RESPONSE, FINAL_PEER, QUERY_ERROR } = QueryEventType;

/** A walk event as the client yields it (a plain QueryEvent). */
function ev(type, id, responses = [], extra = "") {
  return { type, id, responses, extra };
}

const PEER = { id: "12D3KooWPeer", addrs: ["/ip4/127.0.0.1/tcp/4001"] };
const A = ev(SENDING_QUERY, "12D3KooWA");
const B = ev(PEER_RESPONSE, "12D3KooWA", [PEER]);
const C = ev(QUERY_ERROR, "12D3KooWB", [], "dial refused");
const D = ev(FINAL_PEER, "12D3KooWPeer", [PEER]);
const E = ev(FINAL_PEER, "12D3KooWC", [{ id: "12D3KooWC", addrs: [] }]);

/**
 * A Put or Query stream that uses both shapes: a batched message of three
 * events, a single-event message (what a dhtd that ignores batch_events sends),
 * a message with neither (yields nothing), and a batched message of two.
 * In order, it must yield A B C D E.
 */
const WALK_MESSAGES = [{ events: [A, B, C] }, { event: D }, {}, { events: [E, D] }];
const WALK_EVENTS = [A, B, C, D, E, D];

/** The same for Provide, where each event names its CID. */
const PROVIDE_MESSAGES = [
  { events: [{ cid: "cid-1", event: A }, { cid: "cid-2", event: B }, { cid: "cid-1", event: D }] },
  { cid: "cid-2", event: C },
  {},
  { events: [{ cid: "cid-2", event: E }] },
];
const PROVIDE_EVENTS = [
  { cid: "cid-1", event: A },
  { cid: "cid-2", event: B },
  { cid: "cid-1", event: D },
  { cid: "cid-2", event: C },
  { cid: "cid-2", event: E },
];

/**
 * Starts a fake DhtService on a loopback port. `script[method]` is the list of
 * response messages (partial objects) that method writes before it ends; a
 * function instead is called with the call and handles it itself. Every request
 * is kept in `requests[method]`, in arrival order.
 */
async function startFake(script) {
  const requests = { provide: [], put: [], query: [], findProvs: [] };
  const types = {
    provide: pb.ProvideResponse,
    put: pb.PutResponse,
    query: pb.QueryResponse,
    findProvs: pb.FindProvsResponse,
  };
  const impl = {};
  for (const [method, type] of Object.entries(types)) {
    impl[method] = (call) => {
      requests[method].push(call.request);
      const plan = script[method] ?? [];
      if (typeof plan === "function") return plan(call);
      for (const message of plan) call.write(type.fromPartial(message));
      call.end();
    };
  }
  const server = new Server();
  server.addService(pb.DhtServiceService, impl);
  const port = await new Promise((resolve, reject) => {
    server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (err, bound) =>
      err ? reject(err) : resolve(bound));
  });
  return { target: `127.0.0.1:${port}`, requests, stop: () => server.forceShutdown() };
}

async function collect(iterable) {
  const items = [];
  for await (const item of iterable) items.push(item);
  return items;
}

describe("batched walk events (fake dhtd)", () => {
  /** Set by the cancel test: resolves when the server sees the call cancelled. */
  let cancelled;
  let fake;
  /** @type {DhtClient} */
  let client;

  before(async () => {
    let onCancelled;
    cancelled = new Promise((resolve) => {
      onCancelled = resolve;
    });
    // Provide and Put end with the holders message only when min_holders is set,
    // so that the other tests see a dhtd that predates it.
    const withHolders = (type, messages, holders) => (call) => {
      for (const message of messages) call.write(type.fromPartial(message));
      if (call.request.minHolders > 0) call.write(type.fromPartial({ holders }));
      call.end();
    };
    fake = await startFake({
      provide: withHolders(pb.ProvideResponse, PROVIDE_MESSAGES, [
        { cid: "cid-1", holders: 1 },
        { cid: "cid-2", holders: 1 },
      ]),
      put: withHolders(pb.PutResponse, WALK_MESSAGES, 3),
      query: (call) => {
        if (call.request.peerId !== "hold-open") {
          for (const message of WALK_MESSAGES) call.write(pb.QueryResponse.fromPartial(message));
          call.end();
          return;
        }
        // One batched message, then the stream stays open until the client cancels.
        call.on("cancelled", onCancelled);
        call.write(pb.QueryResponse.fromPartial({ events: [A, B, C] }));
      },
      findProvs: [{ provider: PEER }, { provider: { id: "12D3KooWC", addrs: [] } }],
    });
    client = new DhtClient(fake.target, { timeoutMs: 10_000 });
  });

  after(() => {
    client?.close();
    fake?.stop();
  });

  test("provide, put and query ask for batch_events", async () => {
    await collect(client.provide(["cid-1", "cid-2"], { recursive: false }));
    await collect(client.put("/demo/k", "v"));
    await collect(client.query("12D3KooWTarget"));
    const [provide] = fake.requests.provide.slice(-1);
    const [put] = fake.requests.put.slice(-1);
    const [query] = fake.requests.query.slice(-1);
    assert.equal(provide.batchEvents, true, "ProvideRequest.batch_events");
    assert.equal(put.batchEvents, true, "PutRequest.batch_events");
    assert.equal(query.batchEvents, true, "QueryRequest.batch_events");
    // The rest of each request is as before.
    assert.deepEqual(provide.cids, ["cid-1", "cid-2"]);
    assert.equal(provide.recursive, false);
    assert.equal(new TextDecoder().decode(put.key), "/demo/k");
    assert.equal(new TextDecoder().decode(put.value), "v");
    assert.equal(query.peerId, "12D3KooWTarget");
  });

  test("provide yields every event of every message, in order, each with its CID", async () => {
    assert.deepEqual(await collect(client.provide(["cid-1", "cid-2"])), PROVIDE_EVENTS);
  });

  test("put yields every event of every message, in order", async () => {
    assert.deepEqual(await collect(client.put("/demo/k", "v")), WALK_EVENTS);
  });

  test("query yields every event of every message, in order", async () => {
    assert.deepEqual(await collect(client.query("12D3KooWTarget")), WALK_EVENTS);
  });

  test("min_holders is sent, and the last message's holders go to onHolders, not as an event", async () => {
    const got = [];
    const provided = await collect(
      client.provide(["cid-1", "cid-2"], { minHolders: 20, onHolders: (h) => got.push(h) }),
    );
    assert.deepEqual(provided, PROVIDE_EVENTS);
    assert.equal(fake.requests.provide.at(-1).minHolders, 20);
    assert.deepEqual(got, [[{ cid: "cid-1", holders: 1 }, { cid: "cid-2", holders: 1 }]]);

    const stored = await collect(client.put("/demo/k", "v", { minHolders: 7, onHolders: (h) => got.push(h) }));
    assert.deepEqual(stored, WALK_EVENTS);
    assert.equal(fake.requests.put.at(-1).minHolders, 7);
    assert.deepEqual(got.at(-1), 3);
    assert.equal(got.length, 2);
  });

  test("without a holders message (an older dhtd) onHolders is not called", async () => {
    const called = [];
    await collect(client.provide(["cid-1"], { onHolders: (h) => called.push(h) }));
    await collect(client.put("/demo/k", "v", { onHolders: (h) => called.push(h) }));
    assert.equal(fake.requests.provide.at(-1).minHolders, 0);
    assert.equal(fake.requests.put.at(-1).minHolders, 0);
    assert.deepEqual(called, []);
  });

  test("a bad minHolders is an InvalidArgumentError", async () => {
    const err = await collect(client.put("/demo/k", "v", { minHolders: -1 })).catch((e) => e);
    assert.equal(err.code, 3);
    assert.match(err.message, /min_holders/);
  });

  test("findProvs still yields one provider per message", async () => {
    const providers = await collect(client.findProvs("cid-1", { numProviders: 2 }));
    assert.deepEqual(providers, [PEER, { id: "12D3KooWC", addrs: [] }]);
  });

  test("breaking out in the middle of a batched message cancels the call", async () => {
    const seen = [];
    for await (const event of client.query("hold-open")) {
      seen.push(event);
      break;
    }
    assert.deepEqual(seen, [A]);
    await cancelled; // the server saw the cancellation (the test times out otherwise)
  });
});
