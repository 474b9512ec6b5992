'use strict'
// Times how fast yjs applies incremental Y.Map updates (Y.applyUpdate) into
// a fresh Y.Doc, on the workload the Go crdt apply benchmark uses, and
// prints one JSON line.
//
// Usage: node yjs.js [--replicas 3] [--keys 1000] [--ops 100000] [--seed 1]
//                    [--every 100] [--runs 5]
const { parseArgs } = require('node:util')
const Y = require('yjs')
const { version } = require('yjs/package.json')

const o = {}
const { values } = parseArgs({
  options: {
    replicas: { type: 'string', default: '3' },
    keys: { type: 'string', default: '1000' },
    ops: { type: 'string', default: '100000' },
    seed: { type: 'string', default: '1' },
    every: { type: 'string', default: '100' }, // ops between full exchanges
    runs: { type: 'string', default: '5' } // timed runs, after one warm-up
  }
})
for (const [k, v] of Object.entries(values)) {
  o[k] = Number(v)
  check(Number.isInteger(o[k]) && o[k] >= (k === 'seed' ? 0 : 1), `--${k}: want a positive integer, got ${v}`)
}

// mulberry32: small deterministic 32-bit PRNG, floats in [0, 1).
function mulberry32 (seed) {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6D2B79F5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

function check (ok, msg) {
  if (!ok) {
    console.error(msg)
    process.exit(1)
  }
}

// canon serialises the map with sorted keys: Y.Map iterates in local
// insertion order, which differs between replicas.
function canon (map) {
  return JSON.stringify([...map.entries()].sort((a, b) => a[0] < b[0] ? -1 : 1))
}

// ---- Build phase (not timed) ----
//
// Each replica is a Y.Doc with clientID r+1. Op i picks a random replica r
// and a random key n < keys, and r sets "k<n>" in its Y.Map "m" to "v<i>".
// Every local set emits exactly one 'update' event; that Uint8Array is
// captured in `all`, in the order made. Updates a replica receives are
// applied with origin REMOTE and are not captured again.
//
// Exchange: before every `every`-th op (and once at the end) every replica
// applies, in order, each captured update it has not seen yet and did not
// make itself (`seen` is its position in `all`), as the Go benchmark's
// writers do. Between exchanges replicas write blindly, so two replicas
// setting the same key in one window are concurrent (yjs picks a winner by
// clientID), while a write after an exchange causally follows, and
// overwrites, what the replica received.
const REMOTE = Symbol('remote')
const all = [] // { from, update }
const replicas = []
for (let r = 0; r < o.replicas; r++) {
  const doc = new Y.Doc()
  doc.clientID = r + 1
  doc.on('update', (update, origin) => {
    if (origin !== REMOTE) all.push({ from: r, update })
  })
  replicas.push({ doc, map: doc.getMap('m'), seen: 0 })
}
function exchange () {
  replicas.forEach((rep, r) => {
    for (; rep.seen < all.length; rep.seen++) {
      if (all[rep.seen].from !== r) Y.applyUpdate(rep.doc, all[rep.seen].update, REMOTE)
    }
  })
}
const rnd = mulberry32(o.seed)
const touched = new Set()
for (let i = 0; i < o.ops; i++) {
  if (i > 0 && i % o.every === 0) exchange()
  const r = Math.floor(rnd() * o.replicas)
  const key = 'k' + Math.floor(rnd() * o.keys)
  replicas[r].map.set(key, 'v' + i)
  touched.add(key)
}
exchange()
check(all.length === o.ops, `captured ${all.length} updates for ${o.ops} ops`)
const want = canon(replicas[0].map)
check(replicas.every(rep => canon(rep.map) === want), 'replicas did not converge')

// ---- Timed phase ----
//
// Apply every captured update, one Y.applyUpdate each, in the order made,
// into a fresh Y.Doc. One untimed warm-up run, then `runs` timed runs.
const updates = all.map(u => u.update)
let doc
const apply = () => {
  doc = new Y.Doc()
  for (const u of updates) Y.applyUpdate(doc, u)
}
apply()
const secs = []
for (let i = 0; i < o.runs; i++) {
  const t0 = process.hrtime.bigint()
  apply()
  secs.push(Number(process.hrtime.bigint() - t0) / 1e9)
  const m = doc.getMap('m')
  check(m.size === touched.size, `fresh doc has ${m.size} keys, want ${touched.size}`)
  check(canon(m) === want, 'fresh doc differs from the replicas')
}
secs.sort((a, b) => a - b)
const mid = secs.length >> 1
const median = secs.length % 2 ? secs[mid] : (secs[mid - 1] + secs[mid]) / 2

console.log(JSON.stringify({
  lib: 'yjs',
  version,
  replicas: o.replicas,
  keys: o.keys,
  ops: o.ops,
  updates_per_s: Math.round(updates.length / secs[0]),
  median_updates_per_s: Math.round(updates.length / median)
}))
