// Asks dhtd's Delegated Routing V1 HTTP API with Helia's own client
// (@helia/delegated-routing-v1-http-api-client), as a browser or Node app would.
//
//   node routing_client.mjs <base URL> providers|peers|closest|ipns-get <arg>
//   node routing_client.mjs <base URL> ipns-put <name> <record, base64>
//
// Prints one JSON line and exits 0, or {"ok": false, "error"} and exits 1. Stream
// answers list each record with the milliseconds from the call to its arrival
// ("ms"), and when the stream ended ("endMs"). Ends by itself after 60 s.

// libp2p's packages call Promise.withResolvers, which Node 20 lacks.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers () {
    let resolve, reject
    const promise = new this((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}

const [url, op, arg, recordB64] = process.argv.slice(2)

function finish (result, code) {
  process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(code))
}

setTimeout(() => finish({ ok: false, error: 'no result within 60 s' }, 1), 60_000).unref()

try {
  const { delegatedRoutingV1HttpApiClient } = await import('@helia/delegated-routing-v1-http-api-client')
  const { defaultLogger } = await import('@libp2p/logger')
  const { CID } = await import('multiformats/cid')
  const { peerIdFromString } = await import('@libp2p/peer-id')
  const { marshalIPNSRecord, unmarshalIPNSRecord } = await import('ipns')

  const client = delegatedRoutingV1HttpApiClient({ url, timeout: 30_000, cacheTTL: 0 })({
    logger: defaultLogger()
  })
  await client.start?.()
  const started = Date.now()

  async function collect (records) {
    const out = []
    for await (const record of records) {
      out.push({
        id: record.ID.toString(),
        addrs: (record.Addrs ?? []).map(String),
        protocols: record.Protocols ?? [],
        ms: Date.now() - started
      })
    }
    return { ok: true, records: out, endMs: Date.now() - started }
  }

  let result
  if (op === 'providers') {
    result = await collect(client.getProviders(CID.parse(arg)))
  } else if (op === 'peers') {
    result = await collect(client.getPeers(peerIdFromString(arg)))
  } else if (op === 'closest') {
    result = await collect(client.getClosestPeers(CID.parse(arg)))
  } else if (op === 'ipns-get') {
    const record = await client.getIPNS(CID.parse(arg))
    result = {
      ok: true,
      value: record.value,
      sequence: record.sequence.toString(),
      record: Buffer.from(marshalIPNSRecord(record)).toString('base64')
    }
  } else if (op === 'ipns-put') {
    const record = unmarshalIPNSRecord(Buffer.from(recordB64, 'base64'))
    await client.putIPNS(CID.parse(arg), record)
    result = { ok: true }
  } else {
    throw new Error(`unknown op ${op}`)
  }
  await client.stop?.()
  finish(result, 0)
} catch (err) {
  finish({ ok: false, error: `${err.name}: ${err.message}` }, 1)
}
