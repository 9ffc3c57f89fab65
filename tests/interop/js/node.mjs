// One js-libp2p node with @libp2p/kad-dht, driven over stdin/stdout for the
// dhtd interop tests (tests/interop/test_js_interop.py).
//
// Protocol: one JSON object per line on stdin, {"id": N, "cmd": NAME, ...args};
// one JSON object per line on stdout for each, {"id": N, "ok": true, ...result}
// or {"id": N, "ok": false, "error": TEXT, "name": ERROR_NAME}. Commands run
// concurrently; answers come in the order they finish. Bytes travel as base64.
// Logs go to stderr only.
//
// Lifetime: the process exits when stdin closes (the test process died or is
// done), on the "stop" command, and in any case after --max-lifetime seconds
// (default 600), so no node outlives a test run.
//
// Commands:
//   start {listen?, protocol?, namespaces?: [NAME], deny?: [peerId],
//          security?: 'noise' | 'tls', muxer?: 'yamux' | 'mplex'} -> {peerId, addrs}
//                                   (a connection with a peer in deny is refused, both ways;
//                                    only the one security and the one muxer named are offered)
//   connect {addr}                  -> {peerId, protocols, inRoutingTable}
//   info                            -> {peerId, addrs, routingTable: [id], connections: [id],
//                                       refused: [id] (peers in deny that a connection was refused to)}
//   provide {cid}                   -> {sent: N, errors: [text]}
//   findProviders {cid, count?}     -> {providers: [{id, addrs, from}]}  (from: who returned it)
//   put {key, value}                -> {sent: N, errors: [text]}
//   get {key}                       -> {value}            (NotFound: ok false)
//   findPeer {peerId, useCache?}    -> {peer: {id, addrs}}   (useCache false: ask the network only)
//   getClosestPeers {peerId | key}  -> {peers: [{id, addrs}]}
//   newPublicKey {type?}            -> {key, value}: a fresh /pk/ record (key bytes, protobuf key)
//   stop                            -> {} and exit

// libp2p 3.x and @libp2p/kad-dht 16.x call Promise.withResolvers, which Node 20
// lacks; it must exist before they load, hence the dynamic imports below.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers () {
    let resolve, reject
    const promise = new this((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}

const { createInterface } = await import('node:readline')
const { createLibp2p } = await import('libp2p')
const { tcp } = await import('@libp2p/tcp')
const { noise } = await import('@chainsafe/libp2p-noise')
const { yamux } = await import('@chainsafe/libp2p-yamux')
const { mplex } = await import('@libp2p/mplex')
const { tls } = await import('@libp2p/tls')
const { identify } = await import('@libp2p/identify')
const { ping } = await import('@libp2p/ping')
const { kadDHT, passthroughMapper } = await import('@libp2p/kad-dht')
const { generateKeyPair, publicKeyToProtobuf } = await import('@libp2p/crypto/keys')
const { peerIdFromString } = await import('@libp2p/peer-id')
const { multiaddr } = await import('@multiformats/multiaddr')
const { CID } = await import('multiformats/cid')

const MAX_VALUE_BYTES = 64 * 1024 // dhtd's limit for an operator namespace
// How long connect waits for identify of the dialled peer (it returns as soon as
// identify ends): identify can take seconds on a loaded machine, and the wait
// stays within jsnode.py's CALL_TIMEOUT (30 s) with room for the dial.
const IDENTIFY_WAIT_MS = 15000
// Every DHT operation gives up after this; the tests wait longer for an answer.
const OPERATION_MS = 20_000

function arg (name, fallback) {
  const i = process.argv.indexOf(name)
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback
}

const maxLifetime = Number(arg('--max-lifetime', '600'))
const lifetime = setTimeout(() => {
  process.stderr.write(`node.mjs: max lifetime of ${maxLifetime}s reached, exiting\n`)
  process.exit(3)
}, maxLifetime * 1000)

const b64 = (bytes) => Buffer.from(bytes).toString('base64')
const unb64 = (text) => new Uint8Array(Buffer.from(text, 'base64'))
const keyId = (key) => b64(key)

let node = null
let dht = null
const refused = new Set()

// -- last write wins, as dhtd's --namespace does --------------------------------
//
// A kad-dht selector sees only the values, but last write wins is decided by
// when each holder received its value (Record.timeReceived). So the time of
// every record that passes by is noted here: records in GET_VALUE answers
// (stamped by the remote holder) and this node's own stored record (read from
// its datastore, stamped when it was put or received). The selector then picks
// the value received most recently; ties and unknown times go to the later
// index, as in dhtd's LastWriteWinsValidator.
const receivedAt = new Map() // key (base64) -> Map(value (base64) -> ms)

function noteReceived (key, value, time) {
  const ms = time instanceof Date ? time.getTime() : NaN
  if (Number.isNaN(ms)) return
  const k = keyId(key)
  const values = receivedAt.get(k) ?? new Map()
  const v = b64(value)
  values.set(v, Math.max(values.get(v) ?? -Infinity, ms))
  receivedAt.set(k, values)
}

function lastWriteWins (key, records) {
  const values = receivedAt.get(keyId(key)) ?? new Map()
  let best = 0
  let bestTime = -Infinity
  records.forEach((record, index) => {
    const time = values.get(b64(record)) ?? -Infinity
    if (time >= bestTime) { best = index; bestTime = time }
  })
  return best
}

function acceptValue (key, value) {
  if (value.length === 0) throw new Error('value is empty')
  if (value.length > MAX_VALUE_BYTES) throw new Error(`value over ${MAX_VALUE_BYTES} bytes`)
}

// -- commands -----------------------------------------------------------------

function peerInfo (peer) {
  return { id: peer.id.toString(), addrs: (peer.multiaddrs ?? []).map(a => a.toString()) }
}

async function start ({ listen = '/ip4/127.0.0.1/tcp/0', protocol = '/ipfs/kad/1.0.0', namespaces = [], deny = [], security = 'noise', muxer = 'yamux' }) {
  if (node != null) throw new Error('already started')
  const { MemoryDatastore } = await import('datastore-core')
  const { Libp2pRecord } = await import('@libp2p/record')
  // The DHT keeps its records in this datastore; reads of records are watched
  // to learn when this node received its own copy (see lastWriteWins).
  class WatchedDatastore extends MemoryDatastore {
    async get (key, options) {
      const raw = await super.get(key, options)
      if (key.toString().startsWith('/dht/record/')) {
        try {
          const record = Libp2pRecord.deserialize(raw)
          noteReceived(record.key, record.value, record.timeReceived)
        } catch {}
      }
      return raw
    }
  }
  if (SECURITY[security] == null) throw new Error(`unknown security ${security}`)
  if (MUXERS[muxer] == null) throw new Error(`unknown muxer ${muxer}`)
  const validators = {}
  const selectors = {}
  for (const name of namespaces) {
    validators[name] = acceptValue
    selectors[name] = lastWriteWins
  }
  // No connection with a denied peer, in either direction: what such a peer
  // learns of this node (and the reverse) must come through other peers.
  const denied = (peerId) => {
    const id = peerId.toString()
    if (!deny.includes(id)) return false
    refused.add(id)
    return true
  }
  node = await createLibp2p({
    addresses: { listen: [listen] },
    connectionGater: {
      denyDialPeer: denied,
      denyInboundEncryptedConnection: denied,
      denyOutboundEncryptedConnection: denied
    },
    transports: [tcp()],
    connectionEncrypters: [SECURITY[security]()],
    streamMuxers: [MUXERS[muxer]()],
    datastore: new WatchedDatastore(),
    services: {
      identify: identify(),
      ping: ping(),
      dht: kadDHT({
        protocol,
        clientMode: false,
        // The default mapper drops private and loopback addresses; every peer
        // here is on 127.0.0.1.
        peerInfoMapper: passthroughMapper,
        validators,
        selectors
      })
    }
  })
  dht = node.services.dht
  await dht.setMode('server')
  return { peerId: node.peerId.toString(), addrs: node.getMultiaddrs().map(a => a.toString()) }
}

// The one connection encrypter and the one stream muxer this node offers.
const SECURITY = { noise, tls }
const MUXERS = { yamux, mplex }

function needNode () {
  if (node == null) throw new Error('not started: send "start" first')
}

async function connect ({ addr }) {
  needNode()
  const ma = multiaddr(addr)
  const target = ma.getComponents().find(c => c.name === 'p2p')?.value
  if (target == null) throw new Error('connect needs an address that ends in /p2p/<peer id>')
  const known = node.getConnections(peerIdFromString(target)).length > 0
  // Identify runs after a new connection opens; its protocol list is what
  // makes kad-dht take the peer into its routing table.
  const identified = known
    ? Promise.resolve()
    : new Promise((resolve) => {
      const timer = setTimeout(done, IDENTIFY_WAIT_MS)
      function done () {
        clearTimeout(timer)
        node.removeEventListener('peer:identify', onIdentify)
        resolve()
      }
      function onIdentify (event) {
        if (event.detail.peerId.toString() === target) done()
      }
      node.addEventListener('peer:identify', onIdentify)
    })
  const connection = await node.dial(ma, { signal: AbortSignal.timeout(10_000) })
  await identified
  const peer = connection.remotePeer
  let protocols = []
  try {
    protocols = (await node.peerStore.get(peer)).protocols
  } catch {}
  return {
    peerId: peer.toString(),
    protocols,
    inRoutingTable: (await dht.routingTable.find(peer)) != null
  }
}

async function info () {
  needNode()
  const table = [...dht.routingTable.kb.toIterable()].map(p => p.peerId.toString())
  return {
    peerId: node.peerId.toString(),
    addrs: node.getMultiaddrs().map(a => a.toString()),
    routingTable: table,
    connections: [...new Set(node.getConnections().map(c => c.remotePeer.toString()))],
    refused: [...refused]
  }
}

// Runs a DHT operation to its end; counts the peers that answered `messageName`
// and keeps the errors.
async function drive (events, messageName) {
  let sent = 0
  const errors = []
  for await (const event of events) {
    if (event.name === 'PEER_RESPONSE' && event.messageName === messageName) sent++
    if (event.name === 'QUERY_ERROR') errors.push(`${event.from}: ${event.error?.message ?? event.error}`)
  }
  return { sent, errors }
}

async function provide ({ cid }) {
  needNode()
  return drive(dht.provide(CID.parse(cid), { signal: AbortSignal.timeout(OPERATION_MS) }), 'ADD_PROVIDER')
}

// Reads a DHT operation's events until `take` returns true, then aborts the
// operation (its requests still in flight) through `controller`.
async function readUntil (events, controller, take) {
  for await (const event of events) {
    if (take(event)) {
      controller.abort()
      return true
    }
  }
  return false
}

async function findProviders ({ cid, count = 20 }) {
  needNode()
  const found = new Map()
  const controller = new AbortController()
  const signal = AbortSignal.any([controller.signal, AbortSignal.timeout(OPERATION_MS)])
  await readUntil(dht.findProviders(CID.parse(cid), { signal }), controller, (event) => {
    if (event.name === 'PROVIDER') {
      for (const provider of event.providers) {
        if (!found.has(provider.id.toString())) {
          // from: the peer that returned it (this node itself for its own records)
          found.set(provider.id.toString(), { ...peerInfo(provider), from: event.from.toString() })
        }
      }
    }
    return found.size >= count
  })
  return { providers: [...found.values()] }
}

async function put ({ key, value }) {
  needNode()
  const k = unb64(key)
  const result = await drive(dht.put(k, unb64(value), { signal: AbortSignal.timeout(OPERATION_MS) }), 'PUT_VALUE')
  return result
}

async function get ({ key }) {
  needNode()
  const k = unb64(key)
  let best = null
  for await (const event of dht.get(k, { signal: AbortSignal.timeout(OPERATION_MS) })) {
    // Seen before the selector runs: each holder's copy and its receive time.
    if (event.name === 'PEER_RESPONSE' && event.record != null) {
      noteReceived(event.record.key, event.record.value, event.record.timeReceived)
    }
    if (event.name === 'VALUE') best = event.value
  }
  if (best == null) {
    const err = new Error('no value found')
    err.name = 'NotFoundError'
    throw err
  }
  return { value: b64(best) }
}

async function findPeer ({ peerId, useCache = true }) {
  needNode()
  const id = peerIdFromString(peerId)
  const controller = new AbortController()
  const signal = AbortSignal.any([controller.signal, AbortSignal.timeout(OPERATION_MS)])
  let found = null
  try {
    await readUntil(dht.findPeer(id, { useCache, signal }), controller, (event) => {
      if (event.name === 'FINAL_PEER' && event.peer.id.equals(id)) found = peerInfo(event.peer)
      return found != null
    })
  } catch (err) {
    // js throws NotFoundError when the walk ends without the peer.
    if (err?.name !== 'NotFoundError') throw err
  }
  if (found != null) return { peer: found }
  const err = new Error(`peer ${peerId} not found`)
  err.name = 'NotFoundError'
  throw err
}

async function getClosestPeers ({ peerId, key }) {
  needNode()
  const target = peerId != null ? peerIdFromString(peerId).toMultihash().bytes : unb64(key)
  const peers = []
  for await (const event of dht.getClosestPeers(target, { signal: AbortSignal.timeout(OPERATION_MS) })) {
    if (event.name === 'FINAL_PEER') peers.push(peerInfo(event.peer))
  }
  return { peers }
}

async function newPublicKey ({ type = 'RSA' }) {
  const pair = await generateKeyPair(type)
  const key = new Uint8Array([...Buffer.from('/pk/'), ...pair.publicKey.toMultihash().bytes])
  return { key: b64(key), value: b64(publicKeyToProtobuf(pair.publicKey)) }
}

let stopping = null
async function stop () {
  stopping ??= (async () => {
    clearTimeout(lifetime)
    if (node != null) {
      await Promise.race([node.stop(), new Promise(resolve => setTimeout(resolve, 3000))])
    }
  })()
  await stopping
  return {}
}

const COMMANDS = {
  start, connect, info, provide, findProviders, put, get, findPeer, getClosestPeers, newPublicKey, stop
}

function answer (message) {
  process.stdout.write(JSON.stringify(message) + '\n')
}

async function run (line) {
  let request
  try {
    request = JSON.parse(line)
  } catch {
    answer({ id: null, ok: false, error: 'not JSON', name: 'SyntaxError' })
    return
  }
  const { id, cmd, ...args } = request
  const command = COMMANDS[cmd]
  if (command == null) {
    answer({ id, ok: false, error: `unknown command ${cmd}`, name: 'UnknownCommand' })
    return
  }
  try {
    answer({ ...(await command(args)), id, ok: true })
  } catch (err) {
    answer({ id, ok: false, error: String(err?.message ?? err), name: err?.name ?? 'Error' })
  }
  if (cmd === 'stop') process.exit(0)
}

const lines = createInterface({ input: process.stdin })
lines.on('line', line => { if (line.trim() !== '') void run(line) })
lines.on('close', () => {
  stop().finally(() => process.exit(0))
})
process.on('unhandledRejection', err => {
  process.stderr.write(`node.mjs: unhandled rejection: ${err?.stack ?? err}\n`)
})
