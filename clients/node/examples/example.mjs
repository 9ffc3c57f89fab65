// A tour of DhtClient against a running dhtd: Info, Query our own peer ID,
// Provide a CID, then FindProvs it. Build first (npm run build), then:
//   DHTD_ADDR=127.0.0.1:50051 node examples/example.mjs
import { createHash } from "node:crypto";

import { DhtClient, DhtdError, QueryEventType } from "dhtd-client";

const addr = process.env.DHTD_ADDR || "127.0.0.1:50051";

/** A CIDv1 (raw codec, sha2-256) of `text` in base32, as `ipfs add --cid-version 1` makes. */
function cidFor(text) {
  const bytes = Buffer.concat([Buffer.from([0x01, 0x55, 0x12, 0x20]), createHash("sha256").update(text).digest()]);
  const alphabet = "abcdefghijklmnopqrstuvwxyz234567";
  let out = "b";
  let acc = 0;
  let bits = 0;
  for (const byte of bytes) {
    acc = ((acc << 8) | byte) & 0xffff;
    bits += 8;
    for (; bits >= 5; bits -= 5) out += alphabet[(acc >>> (bits - 5)) & 31];
  }
  if (bits > 0) out += alphabet[(acc << (5 - bits)) & 31];
  return out;
}

const dht = new DhtClient(addr, { timeoutMs: 30_000 });
try {
  const info = await dht.info();
  console.log(`node ${info.peerId} (${info.mode}, ${info.protocol}, ${info.routingTableSize} peers in routing table)`);

  let closest = 0;
  for await (const event of dht.query(info.peerId)) {
    if (event.type === QueryEventType.FINAL_PEER) closest += 1;
  }
  console.log(`query: ${closest} closest peers to ourselves`);

  const cid = cidFor(`hello from the node client ${Date.now()}`);
  let accepted = 0;
  for await (const { event } of dht.provide([cid])) {
    if (event.type === QueryEventType.FINAL_PEER) accepted += 1;
  }
  console.log(`provided ${cid} to ${accepted} peers`);

  for await (const provider of dht.findProvs(cid, { numProviders: 1 })) {
    console.log(`provider ${provider.id} ${provider.addrs.join(" ")}`);
  }
} catch (err) {
  if (err instanceof DhtdError) {
    console.error(`dhtd error ${err.codeName}: ${err.details}`);
    process.exitCode = 1;
  } else {
    throw err;
  }
} finally {
  dht.close();
}
