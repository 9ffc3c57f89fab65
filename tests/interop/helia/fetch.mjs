// Fetches a UnixFS file with Helia, the way a browser or Node app would: Helia
// with only the trustless-gateway block broker (@helia/block-brokers) and only
// libp2p routing (@helia/routers), over a js-libp2p node whose kad-dht (client
// mode) has one peer to start from. Helia is never told a gateway: it finds
// providers on the DHT and fetches from the HTTP addresses they announce.
//
//   node fetch.mjs <bootstrap multiaddr .../p2p/<id>> <root CID> <timeout seconds>
//
// Prints one JSON line: {"ok": true, "bytes": N, "sha256": "<hex>", "providers":
// [{"id", "addrs"}]} or {"ok": false, "error": "..."}; exits 0 or 1. It ends
// by itself after the timeout, whatever happens.
import { createHash } from 'node:crypto'

// libp2p 3.x and Helia call Promise.withResolvers, which Node 20 lacks; it must
// exist before they load, hence the dynamic imports below.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers () {
    let resolve, reject
    const promise = new this((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}

const [bootstrap, root, timeoutText] = process.argv.slice(2)
const timeoutMs = Number(timeoutText ?? '60') * 1000

function finish (result, code) {
  process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(code))
}

setTimeout(() => finish({ ok: false, error: `no result within ${timeoutMs / 1000} s` }, 1),
  timeoutMs + 5000).unref()

try {
  const { createHelia } = await import('helia')
  const { trustlessGateway } = await import('@helia/block-brokers')
  const { libp2pRouting } = await import('@helia/routers')
  const { unixfs } = await import('@helia/unixfs')
  const { createLibp2p } = await import('libp2p')
  const { tcp } = await import('@libp2p/tcp')
  const { noise } = await import('@chainsafe/libp2p-noise')
  const { yamux } = await import('@chainsafe/libp2p-yamux')
  const { identify } = await import('@libp2p/identify')
  const { ping } = await import('@libp2p/ping')
  const { kadDHT, passthroughMapper } = await import('@libp2p/kad-dht')
  const { multiaddr } = await import('@multiformats/multiaddr')
  const { CID } = await import('multiformats/cid')

  const signal = AbortSignal.timeout(timeoutMs)
  const libp2p = await createLibp2p({
    addresses: { listen: [] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    services: {
      identify: identify(),
      ping: ping(),
      dht: kadDHT({
        protocol: '/ipfs/kad/1.0.0',
        clientMode: true,
        // Every peer here is on 127.0.0.1, which the default mapper drops.
        peerInfoMapper: passthroughMapper
      })
    }
  })
  const helia = await createHelia({
    libp2p,
    blockBrokers: [trustlessGateway({ allowInsecure: true, allowLocal: true })],
    routers: [libp2pRouting(libp2p)]
  })
  const identified = new Promise((resolve) => {
    libp2p.addEventListener('peer:identify', resolve, { once: true })
  })
  await libp2p.dial(multiaddr(bootstrap), { signal })
  await identified

  const cid = CID.parse(root)
  const providers = []
  for await (const provider of libp2p.contentRouting.findProviders(cid, { signal })) {
    providers.push({ id: provider.id.toString(), addrs: provider.multiaddrs.map(String) })
    break
  }
  const hash = createHash('sha256')
  let bytes = 0
  for await (const chunk of unixfs(helia).cat(cid, { signal })) {
    hash.update(chunk)
    bytes += chunk.byteLength
  }
  await helia.stop()
  finish({ ok: true, bytes, sha256: hash.digest('hex'), providers }, 0)
} catch (err) {
  finish({ ok: false, error: `${err.name}: ${err.message}` }, 1)
}
