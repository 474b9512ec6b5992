// The syncd browser demo. Everything on the page is real: the regions are
// syncd servers (HTTP API under /r/<region>/), and each browser device is
// the Go replica core compiled to WebAssembly (core.wasm), persisted in
// IndexedDB and synced over the websocket protocol (docs/protocol.md).
// Plain JavaScript, no build step.

const NS = 'demo';
const params = new URLSearchParams(location.search);
// ?pace=0.1 shortens the pauses between scenario steps (the browser test
// uses it); convergence is measured from the last step either way.
const PACE = Math.max(0, Number(params.get('pace') ?? 1)) || 0;
const TICK_MS = 50;

const $ = (s, el = document) => el.querySelector(s);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const pause = (ms) => sleep(ms * PACE);
const now = () => performance.now();

// ---------------------------------------------------------------- the core

// core calls the WebAssembly replica core. Its functions take and return
// JSON strings; an {"error"} answer becomes an exception.
function core(name, ...args) {
  const out = globalThis.syncdCore[name](...args);
  const v = out == null ? null : JSON.parse(out);
  if (v && typeof v === 'object' && typeof v.error === 'string' && Object.keys(v).length === 1) {
    throw new Error(`core.${name}: ${v.error}`);
  }
  return v;
}

async function loadCore() {
  const go = new Go();
  // index.html started the download and compile (syncdBoot.core).
  const mod = await (window.syncdBoot?.core ?? WebAssembly.compileStreaming(fetch('core.wasm')));
  const instance = await WebAssembly.instantiate(mod, go.importObject);
  go.run(instance); // main registers syncdCore, then waits for calls
  if (!globalThis.syncdCore) throw new Error('the replica core did not start');
}

// ---------------------------------------------------------------- IndexedDB

const idb = {
  db: null,
  open() {
    return new Promise((resolve, reject) => {
      const r = indexedDB.open('syncd-demo', 1);
      r.onupgradeneeded = () => r.result.createObjectStore('devices');
      r.onsuccess = () => { this.db = r.result; resolve(); };
      r.onerror = () => reject(r.error);
    });
  },
  tx(mode, f) {
    return new Promise((resolve, reject) => {
      // The snapshot is committed before the device sends anything that
      // depends on it (persist, then send). relaxed durability survives a
      // crash of the tab or the browser but not of the machine: the same
      // promise as the regions' default (SQLite synchronous=NORMAL).
      const t = this.db.transaction('devices', mode, { durability: 'relaxed' });
      const req = f(t.objectStore('devices'));
      t.oncomplete = () => resolve(req.result);
      t.onerror = t.onabort = () => reject(t.error);
    });
  },
  get(k) { return this.tx('readonly', (s) => s.get(k)); },
  put(k, v) { return this.tx('readwrite', (s) => s.put(v, k)); },
  del(k) { return this.tx('readwrite', (s) => s.delete(k)); },
};

// ---------------------------------------------------------------- state

const app = {
  info: null,
  regions: [],
  devices: [],
  focus: null, // {coll, id, field}
  phase: 'loading',
  scenario: null,
  results: {},
  timeline: { changes: [], regions: [] },
  seenChanges: new Set(),
  interactiveMs: null,
  timings: {}, // ms since navigation at which each part of the start was ready
  resolveWaiter: null,
  regionDocs: {}, // region name -> focused view (or null)
  regionCounts: {},
};

const COLOR = { nyc: 'var(--nyc)', london: 'var(--london)', tokyo: 'var(--tokyo)', A: 'var(--devA)', B: 'var(--devB)' };

// who names a replica id: a region, one of this page's devices, or a
// device this page no longer has.
function who(id) {
  const r = app.regions.find((r) => r.id === id);
  if (r) return { name: r.name, color: COLOR[r.name], region: true };
  const d = app.devices.find((d) => d.id === id);
  if (d) return { name: d.label, color: COLOR[d.key], region: false };
  return { name: 'device ' + String(id).slice(0, 8), color: 'var(--ink3)', region: false };
}

function kindOf(coll, field) {
  return app.info?.schema?.[coll]?.fields?.[field] || 'lww';
}

// ---------------------------------------------------------------- HTTP

async function api(method, path, body) {
  const opts = { method, cache: 'no-store' };
  if (body !== undefined) {
    opts.headers = { 'Content-Type': 'application/json' };
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  const text = await r.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
  return { status: r.status, json };
}

// ---------------------------------------------------------------- devices

class Device {
  constructor(key, label, gadget, region) {
    this.key = key; // A or B
    this.label = label;
    this.gadget = gadget;
    this.region = region;
    this.online = true;
    this.ws = null;
    this.welcomed = false;
    this.chain = Promise.resolve();
    this.retry = 0;
    this.status = null;
    this.conn = 'offline';
  }

  // open makes the device from its IndexedDB record, or afresh when there
  // is none or it was made against other regions.
  async open(epoch) {
    this.epoch = epoch;
    const rec = await idb.get('device-' + this.key);
    let snap = null;
    if (rec && rec.epoch === epoch) {
      snap = rec.snapshot ?? null;
      this.region = rec.region || this.region;
      this.online = rec.online !== false;
    }
    let o;
    try {
      o = core('open', NS, snap);
    } catch (e) {
      console.warn(`${this.label}: starting afresh:`, e.message);
      o = core('open', NS, null);
      snap = null;
    }
    this.h = o.handle;
    this.id = o.id;
    this.status = core('status', this.h);
    if (snap == null) {
      // A new device: keep its id from the start.
      this.snapshot = core('export', this.h).snapshot;
      await this.save();
    } else {
      this.snapshot = snap;
    }
  }

  save() {
    return idb.put('device-' + this.key, { epoch: this.epoch, snapshot: this.snapshot, region: this.region, online: this.online });
  }

  setOnline(on) {
    if (on === this.online) return;
    this.online = on;
    this.save();
    if (on) this.connect(); else this.drop();
    changed();
  }

  setRegion(name) {
    if (name === this.region) return;
    this.region = name;
    this.save();
    if (this.online) { this.drop(); this.connect(); }
    changed();
  }

  connect() {
    if (this.ws || !this.online) return;
    const proto = location.protocol === 'https:' ? 'wss' : 'ws';
    const ws = new WebSocket(`${proto}://${location.host}/r/${this.region}/v1/ws`, ['syncd.v1']);
    this.ws = ws;
    this.welcomed = false;
    this.conn = 'connecting';
    ws.onopen = () => {
      if (this.ws === ws) ws.send(JSON.stringify(core('hello', this.h, '')));
    };
    ws.onmessage = (ev) => this.frame(ws, ev.data);
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.lost();
    };
    changed();
  }

  frame(ws, data) {
    if (this.ws !== ws) return;
    let head;
    try { head = JSON.parse(data); } catch { return; }
    if (head.type === 'welcome') {
      this.welcomed = true;
      this.retry = 0;
      this.conn = 'online';
      core('connect', this.h, head.region, '');
      this.flush();
      return;
    }
    if (head.type === 'pong') return;
    try {
      core('step', this.h, data);
    } catch (e) {
      console.warn(`${this.label}:`, e.message);
    }
    if (head.type === 'batch') pulse(this.region, this.key);
    this.flush();
  }

  lost() {
    core('disconnect', this.h);
    this.welcomed = false;
    this.conn = this.online ? 'connecting' : 'offline';
    changed();
    if (this.online) {
      const delay = Math.min(3000, 200 * 2 ** this.retry++);
      setTimeout(() => this.connect(), delay);
    }
  }

  drop() {
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      if (ws.readyState === WebSocket.CONNECTING) ws.onopen = () => ws.close(1000, 'offline');
      else ws.close(1000, 'offline');
    }
    core('disconnect', this.h);
    this.welcomed = false;
    this.conn = 'offline';
    changed();
  }

  // flush runs the replica's Ready loop: save the snapshot, then Advance,
  // then send. One at a time, in order.
  flush() {
    this.chain = this.chain.then(() => this.flushNow()).catch((e) => console.warn(`${this.label}: flush:`, e.message));
    return this.chain;
  }

  async flushNow() {
    let any = false;
    for (;;) {
      const rd = core('ready', this.h);
      if (!rd) break;
      any = true;
      if (rd.snapshot != null) {
        this.snapshot = rd.snapshot;
        await this.save();
      }
      core('advance', this.h);
      const ws = this.ws;
      let pushed = false;
      for (const m of rd.messages || []) {
        if (ws && this.welcomed && ws.readyState === WebSocket.OPEN) {
          ws.send(m);
          pushed = pushed || m.startsWith('{"type":"push"');
        }
      }
      if (pushed) pulse(this.key, this.region);
    }
    // Status moves without a Ready too (the synced flag after a catch-up
    // that brought nothing).
    const st = core('status', this.h);
    if (any || JSON.stringify(st) !== JSON.stringify(this.status)) {
      this.status = st;
      changed();
    }
  }

  write(ops) {
    core('write', this.h, JSON.stringify(ops));
    this.status = core('status', this.h);
    changed();
    return this.flush();
  }

  doc(coll, id) { return core('doc', this.h, coll, id); }

  tick() {
    if (!this.welcomed) return;
    core('tick', this.h);
    this.flush();
  }

  close() {
    this.online = false;
    this.drop();
    core('close', this.h);
  }
}

// ---------------------------------------------------------------- regions

class Region {
  constructor(info) {
    Object.assign(this, info); // name, id, path, addr
    this.status = null;
    this.err = null;
  }

  async poll() {
    try {
      const r = await api('GET', `${this.path}/v1/status`);
      if (r.status === 200) { this.status = r.json; this.err = null; } else this.err = `status ${r.status}`;
    } catch (e) {
      this.err = e.message;
    }
  }

  // docs lists a collection as this region's API serves it. (A list, not
  // a GET of one document, so that a document not here yet is an empty
  // answer rather than a 404 in the console.)
  async docs(coll) {
    const out = [];
    let after = '';
    for (let page = 0; page < 50; page++) {
      const r = await api('GET', `${this.path}/v1/docs/${NS}/${coll}?limit=1000${after ? '&after=' + encodeURIComponent(after) : ''}`);
      if (r.status !== 200) throw new Error(`${this.name}: list ${coll}: ${r.status} ${JSON.stringify(r.json)}`);
      out.push(...r.json.docs);
      if (!r.json.next) break;
      after = r.json.next;
    }
    return out;
  }

  isolate(on) { return api('POST', `${this.path}/v1/admin/isolate`, { isolated: on }); }
}

// ---------------------------------------------------------------- views

// views reads the focused document on every replica: regions over HTTP,
// devices from their core.
async function views(f = app.focus) {
  const out = {};
  const lists = await Promise.all(app.regions.map((r) => r.docs(f.coll).catch(() => null)));
  app.regions.forEach((r, i) => {
    if (lists[i] == null) { out[r.name] = undefined; return; }
    out[r.name] = lists[i].find((d) => d.id === f.id) || null;
    app.regionCounts[r.name] = { coll: f.coll, n: lists[i].length };
    if (app.focus === f) app.regionDocs[r.name] = out[r.name];
  });
  for (const d of app.devices) out[d.key] = d.doc(f.coll, f.id);
  changed();
  return out;
}

// canon is what must be equal on every replica: the regions name the
// writers of versions, the devices do not.
function canon(v) {
  if (!v) return 'null';
  const sort = (x) => {
    if (Array.isArray(x)) return x.map(sort);
    if (x && typeof x === 'object') {
      return Object.keys(x).sort().filter((k) => k !== 'node').reduce((o, k) => { o[k] = sort(x[k]); return o; }, {});
    }
    return x;
  };
  return JSON.stringify(sort({ fields: v.fields, conflicts: v.conflicts, deleted: v.deleted, version: v.version }));
}

const fieldOf = (v, f) => (v && v.fields && f in v.fields ? v.fields[f] : undefined);
const versionsOf = (v, f) => (v && v.conflicts && v.conflicts[f]) || [];
const show = (x) => (typeof x === 'string' ? `“${x}”` : JSON.stringify(x));
const plain = (x) => (typeof x === 'string' ? x : JSON.stringify(x));

// ---------------------------------------------------------------- rendering

let renderQueued = false;
function changed() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => { renderQueued = false; render(); });
}

function setHTML(el, html) {
  if (el && el.__html !== html) { el.__html = html; el.innerHTML = html; return true; }
  return false;
}

function flash(card) {
  card.classList.add('flash');
  clearTimeout(card.__flash);
  card.__flash = setTimeout(() => card.classList.remove('flash'), 700);
}

function fmtHLC(hex) {
  if (!hex || hex.length !== 16) return { time: '—', hex: hex || '' };
  const wall = parseInt(hex.slice(0, 12), 16);
  const logical = parseInt(hex.slice(12), 16);
  const d = new Date(wall);
  const p = (n, w = 2) => String(n).padStart(w, '0');
  return { time: `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}${logical ? ' +' + logical : ''}`, hex };
}

function whoHTML(id) {
  const w = who(id);
  return `<span class="by" style="--c:${w.color}"><i></i>${esc(w.name)}</span>`;
}

function docHTML(view, replica) {
  const f = app.focus;
  if (!f) return '<div class="empty">Run a scenario above: its document shows here, on every replica.</div>';
  const kind = kindOf(f.coll, f.field);
  let h = `<div class="path">${esc(f.coll)} / ${esc(f.id)} <span class="kind">${esc(f.field)}: ${esc(kind)}</span></div>`;
  if (view === undefined) return h + '<div class="empty">unreachable</div>';
  if (!view) return h + '<div class="empty">not here yet</div>';
  if (view.deleted) return h + '<div class="empty">deleted</div>';
  const val = fieldOf(view, f.field);
  const isDevice = !!app.devices.find((d) => d.key === replica);
  if (kind === 'orset') {
    const items = Array.isArray(val) ? val : [];
    h += `<div class="items" data-field="${esc(f.field)}">${items.map((it) =>
      `<span class="item" data-item="${esc(plain(it))}">${esc(plain(it))}${isDevice ? `<button title="remove" data-act="remove" data-json="${esc(JSON.stringify(it))}">×</button>` : ''}</span>`).join('') ||
      '<span class="noitems">empty</span>'}</div>`;
  } else if (kind === 'counter') {
    h += `<div class="value num" data-field="${esc(f.field)}">${esc(val ?? 0)}</div>`;
  } else {
    h += `<div class="value" data-field="${esc(f.field)}">${val === undefined ? '<span class="empty">—</span>' : esc(show(val))}</div>`;
  }
  const vs = versionsOf(view, f.field);
  if (kind === 'manual' && vs.length > 1) {
    h += `<div class="versions manual"><div class="vh">⚠ ${vs.length} concurrent versions — pick one</div>${vs.map((v) =>
      `<div class="version" data-value="${esc(plain(v.value))}"><span class="val">${esc(show(v.value))}</span>${whoHTML(v.replica)}<span class="hlc">${esc(fmtHLC(v.hlc).time)}</span>` +
      `<button class="keep" data-act="keep" data-keep="${esc(plain(v.value))}" data-json="${esc(JSON.stringify(v.value))}">keep this</button></div>`).join('')}</div>`;
  } else if (kind === 'lww' && vs.length) {
    h += `<div class="versions history"><div class="vh">Lost to last-write-wins, kept in the document's history:</div>${vs.map((v) =>
      `<div class="version lost" data-value="${esc(plain(v.value))}"><span class="val">${esc(show(v.value))}</span>${whoHTML(v.replica)}<span class="hlc">${esc(fmtHLC(v.hlc).time)}</span></div>`).join('')}</div>`;
  }
  return h;
}

function vectorHTML(vec) {
  const ids = Object.keys(vec || {});
  if (!ids.length) return '<span class="sub">empty</span>';
  ids.sort((a, b) => who(a).name.localeCompare(who(b).name));
  return ids.map((id) => { const w = who(id); return `<span class="chip" style="--c:${w.color}"><i></i>${esc(w.name)} <b>${vec[id]}</b></span>`; }).join('');
}

function buildCards() {
  const rs = $('#regions');
  rs.innerHTML = app.regions.map((r) => `
    <article class="card region" data-replica="${r.name}" style="--c:${COLOR[r.name]}">
      <header><span class="dot"></span><h3>${r.name}</h3><span class="sub" title="${r.id}">region · ${r.id.slice(0, 8)}</span>
        <div class="right"><label class="switch danger" title="Cut this region off NATS (POST /v1/admin/isolate)"><input type="checkbox" data-act="isolate"> isolate</label></div></header>
      <div class="row"><span class="label">vector</span><span data-part="vector"></span></div>
      <div class="lag" data-part="lag"></div>
      <div class="doc" data-part="doc"></div>
      <div class="row" data-part="foot"></div>
    </article>`).join('');
  const ds = $('#devices');
  ds.innerHTML = app.devices.map((d) => `
    <article class="card device" data-replica="${d.key}" style="--c:${COLOR[d.key]}">
      <header><span class="dot" data-part="dot"></span><h3>${esc(d.label)}</h3><span class="sub" data-part="id"></span>
        <div class="right">
          <label class="sub">region <select data-act="region">${app.regions.map((r) => `<option value="${r.name}">${r.name}</option>`).join('')}</select></label>
          <label class="switch" title="Connect or disconnect this device's websocket"><input type="checkbox" data-act="online"> online</label>
        </div></header>
      <div class="row" data-part="conn"></div>
      <div class="doc" data-part="doc"></div>
      <div class="edit" data-part="edit"></div>
      <div class="row"><span class="label">vector</span><span data-part="vector"></span></div>
    </article>`).join('');
}

function lagHTML(r) {
  const st = r.status;
  if (!st) return `<span class="sub">${esc(r.err || 'loading…')}</span>`;
  return app.regions.filter((o) => o !== r).map((o) => {
    const p = (st.peers || []).find((p) => p.replica === o.id);
    let v;
    let cls = 'ok';
    let fill = 100;
    const cut = st.isolated || o.status?.isolated;
    if (!p) { v = 'not heard yet'; cls = 'warn'; fill = 0; } else if (p.lag_changes > 0) {
      v = `${p.lag_changes} change${p.lag_changes > 1 ? 's' : ''} behind · ${p.lag_seconds.toFixed(2)} s`;
      cls = 'bad';
      fill = 30;
    } else {
      v = `in sync · heard ${p.last_heartbeat_s.toFixed(1)} s ago`;
    }
    if (cut) {
      v = `cut off${p ? ` · heard ${p.last_heartbeat_s.toFixed(1)} s ago` : ''}${p && p.lag_changes ? ` · ${p.lag_changes} behind` : ''}`;
      cls = 'bad';
      fill = 8;
    }
    return `<div class="who" style="--c:${COLOR[o.name]}"><span class="dot"></span>${o.name}</div>
      <div class="bar"><span style="width:${fill}%;background:var(--${cls === 'ok' ? 'ok' : cls === 'warn' ? 'warn' : 'bad'})"></span></div>
      <div class="v ${cls}">${esc(v)}</div>`;
  }).join('');
}

function editHTML(d) {
  const f = app.focus;
  if (!f) return '<span class="muted">Each device can edit the scenario\'s document, online or offline.</span>';
  const kind = kindOf(f.coll, f.field);
  if (kind === 'orset') return `<input type="text" data-input placeholder="an item, e.g. bread"><button data-act="add">Add to ${esc(f.field)}</button>`;
  if (kind === 'counter') return `<button data-act="incr" data-n="-1">Sell 1 (−1)</button><button data-act="incr" data-n="5">Restock (+5)</button><span class="muted">${esc(f.field)} is a counter: increments merge</span>`;
  return `<input type="text" data-input placeholder="new ${esc(f.field)}"><button data-act="set">Set ${esc(f.field)}</button>`;
}

function render() {
  // Regions.
  for (const r of app.regions) {
    const card = $(`#regions [data-replica="${r.name}"]`);
    if (!card) continue;
    const iso = !!r.status?.isolated;
    card.classList.toggle('cut', iso);
    const box = $('[data-act="isolate"]', card);
    if (box && document.activeElement !== box) box.checked = iso;
    const tv = app.timeline.regions.find((x) => x.name === r.name);
    setHTML($('[data-part="vector"]', card), vectorHTML(tv ? tv.vector : r.status?.namespaces?.[NS]?.vector));
    setHTML($('[data-part="lag"]', card), lagHTML(r));
    if (setHTML($('[data-part="doc"]', card), docHTML(app.regionDocs[r.name], r.name)) && app.focus) flash(card);
    const cnt = app.regionCounts[r.name];
    setHTML($('[data-part="foot"]', card), `<span class="label">serves</span><span class="chip">${r.status ? r.status.clients : 0} device${r.status?.clients === 1 ? '' : 's'}</span>` +
      (cnt && app.focus && cnt.coll === app.focus.coll ? `<span class="chip">${cnt.n} doc${cnt.n === 1 ? '' : 's'} in ${esc(cnt.coll)}</span>` : '') +
      `<span class="sub" style="margin-left:auto">${esc(r.path)}/v1/status</span>`);
  }
  // Devices.
  for (const d of app.devices) {
    const card = $(`#devices [data-replica="${d.key}"]`);
    if (!card) continue;
    const st = d.status || {};
    $('[data-part="dot"]', card).classList.toggle('off', d.conn !== 'online');
    setHTML($('[data-part="id"]', card), `${esc(d.gadget)} · ${esc(String(d.id).slice(0, 8))}`);
    const sel = $('[data-act="region"]', card);
    if (sel && document.activeElement !== sel) sel.value = d.region;
    const box = $('[data-act="online"]', card);
    if (box) box.checked = d.online;
    const pending = (st.outbox || []).length;
    const pend = pending ? `<span class="pending">● ${pending} change${pending > 1 ? 's' : ''} waiting to push</span>` : '';
    let conn;
    if (d.conn === 'online') conn = `<span class="conn">connected to ${d.region}</span>${st.synced ? '<span class="synced">✓ synced</span>' : '<span class="offline">syncing…</span>'}${pend}`;
    else if (d.conn === 'connecting') conn = `<span class="conn">connecting to ${d.region}…</span>${pend}`;
    else conn = `<span class="offline">offline</span>${pend}<span class="sub">writes stay in IndexedDB until it reconnects</span>`;
    setHTML($('[data-part="conn"]', card), conn);
    const view = app.focus ? d.doc(app.focus.coll, app.focus.id) : null;
    if (setHTML($('[data-part="doc"]', card), docHTML(view, d.key)) && app.focus) flash(card);
    const ek = app.focus ? `${app.focus.coll}/${app.focus.id}` : '';
    const edit = $('[data-part="edit"]', card);
    if (edit.__key !== ek) { edit.__key = ek; edit.innerHTML = editHTML(d); }
    setHTML($('[data-part="vector"]', card), vectorHTML(st.vector));
  }
  renderTopo();
  renderTimeline();
  document.body.dataset.phase = app.phase;
  document.body.dataset.scenario = app.scenario || '';
}

// ---------------------------------------------------------------- topology

const POS = { nyc: [70, 56], london: [210, 36], tokyo: [350, 56], A: [120, 196], B: [300, 196] };

function renderTopo() {
  const svg = $('#topo');
  if (!svg.__built) {
    svg.__built = true;
    const rr = [['nyc', 'london'], ['london', 'tokyo'], ['nyc', 'tokyo']];
    let h = '<g id="links">';
    for (const [a, b] of rr) h += `<path class="link" data-link="${a}-${b}" d="M${POS[a]} L${POS[b]}"/>`;
    h += '</g><text class="s" x="210" y="78" text-anchor="middle">NATS</text>' +
      '<text class="s" x="210" y="242" text-anchor="middle">devices ↔ regions: websocket · state and outbox in IndexedDB</text>' +
      '<g id="dlinks"></g><g id="pulses"></g>';
    for (const r of app.regions) {
      const [x, y] = POS[r.name];
      h += `<g data-node="${r.name}"><circle cx="${x}" cy="${y}" r="21" fill="${COLOR[r.name]}"/><circle cx="${x}" cy="${y}" r="21" fill="none" stroke="#fff" stroke-width="3" opacity=".35"/>` +
        `<text x="${x}" y="${y + 4}" text-anchor="middle" style="fill:#fff;font-size:10.5px">${r.name}</text><text class="s" data-sub="${r.name}" x="${x}" y="${y + 36}" text-anchor="middle"></text></g>`;
    }
    for (const d of app.devices) {
      const [x, y] = POS[d.key];
      h += `<g data-node="${d.key}"><rect x="${x - 52}" y="${y - 17}" width="104" height="34" rx="9" fill="#fff" stroke="${COLOR[d.key]}" stroke-width="2"/>` +
        `<text x="${x}" y="${y - 1}" text-anchor="middle">${esc(d.label)}</text><text class="s" data-sub="${d.key}" x="${x}" y="${y + 11}" text-anchor="middle"></text></g>`;
    }
    svg.innerHTML = h;
  }
  for (const p of svg.querySelectorAll('[data-link]')) {
    const [a, b] = p.dataset.link.split('-');
    const ra = app.regions.find((r) => r.name === a);
    const rb = app.regions.find((r) => r.name === b);
    const cut = ra?.status?.isolated || rb?.status?.isolated;
    p.setAttribute('class', 'link ' + (cut ? 'cut' : 'up'));
  }
  setHTML($('#dlinks', svg), app.devices.map((d) => {
    const [x1, y1] = POS[d.key];
    const [x2, y2] = POS[d.region];
    return `<path class="dlink ${d.conn === 'online' ? '' : 'off'}" data-dlink="${d.key}" d="M${x1},${y1 - 17} C${x1},${y1 - 70} ${x2},${y2 + 70} ${x2},${y2 + 21}" stroke="${COLOR[d.key]}"/>`;
  }).join(''));
  for (const r of app.regions) {
    const t = $(`[data-sub="${r.name}"]`, svg);
    if (t) t.textContent = r.status?.isolated ? 'isolated' : '';
  }
  for (const d of app.devices) {
    const t = $(`[data-sub="${d.key}"]`, svg);
    const n = (d.status?.outbox || []).length;
    if (t) t.textContent = d.conn === 'online' ? `→ ${d.region}` : (n ? `offline · ${n} pending` : 'offline');
  }
}

// pulse draws a dot travelling from one replica to another along their
// link, when a device pushes or receives changes, or a region receives
// another's.
function pulse(from, to) {
  const svg = $('#topo');
  const g = svg && $('#pulses', svg);
  if (!g || !POS[from] || !POS[to] || from === to) return;
  let d;
  const dev = app.devices.find((x) => x.key === from || x.key === to);
  if (dev && (from === dev.key || to === dev.key)) {
    const [x1, y1] = POS[dev.key];
    const [x2, y2] = POS[dev.region];
    d = `M${x1},${y1 - 17} C${x1},${y1 - 70} ${x2},${y2 + 70} ${x2},${y2 + 21}`;
    if (to === dev.key) d = `M${x2},${y2 + 21} C${x2},${y2 + 70} ${x1},${y1 - 70} ${x1},${y1 - 17}`;
  } else {
    d = `M${POS[from]} L${POS[to]}`;
  }
  const c = document.createElementNS('http://www.w3.org/2000/svg', 'circle');
  c.setAttribute('r', '5');
  c.setAttribute('fill', COLOR[from]);
  const m = document.createElementNS('http://www.w3.org/2000/svg', 'animateMotion');
  m.setAttribute('dur', '0.55s');
  m.setAttribute('fill', 'freeze');
  m.setAttribute('path', d);
  c.appendChild(m);
  g.appendChild(c);
  m.beginElement?.();
  setTimeout(() => c.remove(), 650);
}

// ---------------------------------------------------------------- timeline

function describe(c) {
  const v = c.value;
  switch (c.op) {
    case 'set': return `<code>${esc(c.field)}</code> = ${esc(show(v))}`;
    case 'resolve': return `<code>${esc(c.field)}</code> resolved → ${esc(show(v))}`;
    case 'add': return `<code>${esc(c.field)}</code> + ${esc(show(v))}`;
    case 'remove': return `<code>${esc(c.field)}</code> − ${esc(show(v))}`;
    case 'incr': return `<code>${esc(c.field)}</code> ${Number(v) >= 0 ? '+' : '−'}${Math.abs(Number(v))}`;
    case 'delete': return 'document deleted';
  }
  return esc(c.op);
}

function holders(c) {
  const out = [];
  for (const r of app.timeline.regions) {
    out.push({ name: r.name, color: COLOR[r.name], has: !!c.rseq && (r.vector?.[c.region] || 0) >= c.rseq });
  }
  for (const d of app.devices) {
    const vec = d.status?.vector || {};
    out.push({ name: d.key, label: d.label, color: COLOR[d.key], has: c.origin === d.id || (!!c.rseq && (vec[c.region] || 0) >= c.rseq) });
  }
  return out;
}

function renderTimeline() {
  const rows = [];
  for (const d of app.devices) {
    for (const c of d.status?.outbox || []) rows.push({ c, pending: d });
  }
  rows.sort((a, b) => (a.c.hlc < b.c.hlc ? 1 : -1));
  for (const c of app.timeline.changes) rows.push({ c });
  const shown = rows.slice(0, 24);
  if (!shown.length) {
    setHTML($('#timeline'), '<div class="none">No changes yet. Every write on any replica appears here.</div>');
    return;
  }
  const head = `<tr><th>HLC stamp</th><th>made at</th><th>change</th><th>document</th><th>has it</th></tr>`;
  const body = shown.map(({ c, pending }) => {
    const t = fmtHLC(c.hlc);
    const key = c.id + (pending ? 'p' : '');
    const isNew = !app.seenChanges.has(key);
    const origin = who(c.origin);
    const via = !pending && c.region && c.region !== c.origin ? ` <span class="sub">via ${esc(who(c.region).name)}</span>` : '';
    const where = pending ? `<span class="pending">only on ${esc(pending.label)} — waiting to push</span>` :
      `<div class="arrive">${holders(c).map((h) => `<span class="${h.has ? 'has' : ''}" style="--c:${h.color}" title="${esc(h.label || h.name)}">${esc(h.name)}</span>`).join('')}</div>`;
    return `<tr class="${pending ? 'pend' : ''} ${isNew ? 'new' : ''}" data-change="${esc(c.id)}"><td class="when">${esc(t.time)}<small>${esc(t.hex)}</small></td>` +
      `<td><span class="chip" style="--c:${origin.color}"><i></i>${esc(origin.name)}</span>${via}</td><td class="what">${describe(c)}</td>` +
      `<td class="doc-id">${esc(c.coll)}/${esc(c.doc)}</td><td>${where}</td></tr>`;
  }).join('');
  setHTML($('#timeline'), `<table>${head}${body}</table>`);
  for (const { c, pending } of shown) app.seenChanges.add(c.id + (pending ? 'p' : ''));
}

// ---------------------------------------------------------------- scenarios

// setFocus shows a document on every card; it is kept across reloads.
function setFocus(coll, id, field) {
  app.focus = { coll, id, field };
  app.regionDocs = {};
  try { localStorage.setItem('syncd-demo-focus', JSON.stringify({ epoch: app.info.epoch, ...app.focus })); } catch { /* private mode */ }
  changed();
  views().catch(() => {});
}

function newId(prefix) {
  return `${prefix}-${Date.now().toString(36).slice(-5)}${Math.random().toString(36).slice(2, 4)}`;
}

class Story {
  constructor(sc) {
    this.sc = sc;
    const el = $('#story');
    el.innerHTML = `<h3>${esc(sc.title)}</h3><p class="intro">${sc.intro}</p><ol class="steps"></ol><div class="result wait" hidden></div>`;
    this.steps = $('.steps', el);
    this.res = $('.result', el);
    this.t0 = now();
  }

  // step runs one step of the story; what fn returns is shown under it.
  async step(html, fn, last = false) {
    const li = document.createElement('li');
    li.className = 'active';
    li.innerHTML = `<span>${html}<span class="detail"></span></span><span class="ms"></span>`;
    this.steps.appendChild(li);
    const t = now();
    let detail;
    try {
      detail = await fn();
    } catch (e) {
      li.className = 'failed';
      throw e;
    }
    li.className = 'done';
    $('.ms', li).textContent = `+${((t - this.t0) / 1000).toFixed(2)} s`;
    if (detail) $('.detail', li).innerHTML = detail;
    if (!last) await pause(800);
    return detail;
  }

  result(kind, html) {
    this.res.hidden = false;
    this.res.className = 'result ' + (kind || '');
    this.res.innerHTML = html;
  }

  // converge waits until every replica shows the same document and pred
  // holds on it, and returns the milliseconds since from.
  async converge(pred, from = now()) {
    const f = app.focus;
    for (;;) {
      const vs = await views(f);
      const all = Object.values(vs);
      if (all.every((v) => v && pred(v)) && all.every((v) => canon(v) === canon(all[0]))) {
        const ms = Math.round(now() - from);
        refreshNow(); // show the vectors and the timeline of this moment, not of the last poll
        return ms;
      }
      if (now() - from > 20000) {
        throw new Error('not converged after 20 s: ' + Object.entries(vs).map(([k, v]) => `${k}: ${v ? JSON.stringify(v.fields) : v}`).join('; '));
      }
      await sleep(10);
    }
  }
}

// prepare puts the cluster in its normal state: every region connected,
// both devices online and caught up.
async function prepare() {
  for (const r of app.regions) if (r.status?.isolated) await r.isolate(false);
  for (const d of app.devices) d.setOnline(true);
  const t = now();
  while (!app.devices.every((d) => d.welcomed && d.status?.synced)) {
    if (now() - t > 15000) throw new Error('devices did not connect within 15 s');
    await sleep(20);
  }
}

const both = (on) => () => { for (const d of app.devices) d.setOnline(on); };

async function titleScenario(sc, story) {
  const [A, B] = app.devices;
  const id = newId('user');
  const field = 'title';
  setFocus(sc.coll, id, field);
  const set = (d, v) => d.write([{ coll: sc.coll, doc: id, field, op: 'set', value: v }]);
  await story.step(`${esc(A.label)} creates <code>${id}</code> with title “Engineer”`, async () => {
    await set(A, 'Engineer');
    return `on all 5 replicas after ${await story.converge((v) => fieldOf(v, field) === 'Engineer')} ms`;
  });
  await story.step('Both devices go offline', both(false));
  await story.step(`${esc(A.label)}, offline: title = “Senior Engineer”`, () => set(A, 'Senior Engineer'));
  await story.step(`${esc(B.label)}, offline, a moment later: title = “Staff Engineer”`, async () => { await sleep(3); await set(B, 'Staff Engineer'); });
  await story.step('Both devices come back online', both(true), true);
  if (sc.id === 'lww') {
    const ms = await story.converge((v) => fieldOf(v, field) === 'Staff Engineer' && versionsOf(v, field).some((x) => x.value === 'Senior Engineer'));
    app.results[sc.id] = { converge_ms: ms };
    const inbox = await api('GET', `/r/${app.regions[0].name}/v1/conflicts/${NS}`);
    story.result('', `<span class="big">✓ Converged on all 5 replicas ${ms} ms after the last step:</span> “Staff Engineer” everywhere.
      <p>Both devices wrote while apart. Last-write-wins keeps the write with the later hybrid-logical-clock stamp — ${esc(B.label)}'s, made a moment later —
      on every replica, with no coordination. <b>Where did “Senior Engineer” go?</b> Not silently lost: each replica keeps it in the document's conflict history
      (shown struck through on every card, and under <code>conflicts.title</code> in <code>GET /v1/docs</code>), and the conflict inbox
      <code>GET /v1/conflicts/${NS}</code> lists the document${inbox.json ? ` (${inbox.json.count} document${inbox.json.count === 1 ? '' : 's'} there now)` : ''}.</p>`);
    return;
  }
  const ms = await story.converge((v) => versionsOf(v, field).length === 2);
  app.results[sc.id] = { conflict_ms: ms };
  story.result('wait', `<span class="big">Both versions are on all 5 replicas (${ms} ms after the last step).</span>
    <p>This collection's <code>title</code> is a <b>manual</b> field: concurrent writes are all kept as siblings and every replica shows them, until someone picks one.
    Click <b>keep this</b> on any card — a device or a region. The choice is a resolve write that replaces exactly the versions it has seen, and it spreads like any other write.</p>`);
  app.phase = 'await-resolve';
  changed();
  const choice = await new Promise((resolve) => { app.resolveWaiter = resolve; });
  app.phase = 'running';
  changed();
  await story.step(`${esc(choice.by)} keeps ${esc(show(choice.value))}`, () => null, true);
  const ms2 = await story.converge((v) => versionsOf(v, field).length === 0 && JSON.stringify(fieldOf(v, field)) === JSON.stringify(choice.value), choice.at);
  app.results[sc.id].resolve_ms = ms2;
  story.result('', `<span class="big">✓ Resolved everywhere ${ms2} ms after the click:</span> ${esc(show(choice.value))} on all 5 replicas, no versions left.
    <p>The resolve carried the dots of the versions ${esc(choice.by)} had seen, so every replica drops exactly those. A version it had not seen would have stayed, to be resolved too — nothing is lost to a race.</p>`);
}

async function cartScenario(sc, story) {
  const [A, B] = app.devices;
  const id = newId('cart');
  const field = 'items';
  setFocus(sc.coll, id, field);
  const ops = (list) => list.map(([op, value]) => ({ coll: sc.coll, doc: id, field, op, value }));
  const is = (want) => (v) => JSON.stringify(fieldOf(v, field)) === JSON.stringify(want);
  await story.step(`${esc(A.label)} fills <code>${id}</code>: apple, banana`, async () => {
    await A.write(ops([['add', 'apple'], ['add', 'banana']]));
    return `on all 5 replicas after ${await story.converge(is(['apple', 'banana']))} ms`;
  });
  await story.step('Both devices go offline', both(false));
  await story.step(`${esc(A.label)}, offline: removes banana, adds milk`, () => A.write(ops([['remove', 'banana'], ['add', 'milk']])));
  await story.step(`${esc(B.label)}, offline: adds orange — and banana again`, () => B.write(ops([['add', 'orange'], ['add', 'banana']])));
  await story.step('Both devices come back online', both(true), true);
  const want = ['apple', 'banana', 'milk', 'orange'];
  const ms = await story.converge(is(want));
  app.results[sc.id] = { converge_ms: ms };
  story.result('', `<span class="big">✓ Converged on all 5 replicas ${ms} ms after the last step:</span> apple, banana, milk, orange.
    <p><b>banana stays:</b> ${esc(B.label)}'s add was concurrent with ${esc(A.label)}'s remove, and a remove takes out only the adds it has seen — so the add wins.
    milk and orange both merge in. Nothing is lost, where last-write-wins on the whole cart would have thrown one device's changes away.</p>`);
}

async function stockScenario(sc, story) {
  const [A, B] = app.devices;
  const [first, second] = app.regions;
  const id = newId('sku');
  const field = 'stock';
  setFocus(sc.coll, id, field);
  const incr = (d, n) => d.write([{ coll: sc.coll, doc: id, field, op: 'incr', value: n }]);
  const regionIncr = async (r, n) => {
    const res = await api('POST', `${r.path}/v1/docs/${NS}/${sc.coll}/${id}/ops`, { ops: [{ field, op: 'incr', value: n }] });
    if (res.status !== 200) throw new Error(`${r.name}: ${res.status} ${JSON.stringify(res.json)}`);
  };
  await story.step(`${first.name} restocks <code>${id}</code>: +10 (HTTP API)`, async () => {
    await regionIncr(first, 10);
    return `on all 5 replicas after ${await story.converge((v) => fieldOf(v, field) === 10)} ms`;
  });
  await story.step('Both devices go offline', both(false));
  await story.step(`${esc(A.label)}, offline, sells 3: −3`, () => incr(A, -3));
  await story.step(`${esc(B.label)}, offline, sells 2: −2`, () => incr(B, -2));
  await story.step(`${second.name} sells 1 at the same time: −1 (HTTP API)`, () => regionIncr(second, -1));
  await story.step('Both devices come back online', both(true), true);
  const ms = await story.converge((v) => fieldOf(v, field) === 4);
  app.results[sc.id] = { converge_ms: ms };
  story.result('', `<span class="big">✓ Converged on all 5 replicas ${ms} ms after the last step:</span> 10 − 3 − 2 − 1 = 4 everywhere.
    <p>A counter field merges increments, not values: each replica keeps a running total of its own part and merging adds the parts, so every sale counts once, in any order.
    With last-write-wins on a plain number, two of the three sales would have vanished (7, 8 or 9).</p>`);
}

async function rywScenario(sc, story) {
  const [writer, , reader] = app.regions;
  const id = newId('alice');
  const field = 'bio';
  setFocus(sc.coll, id, field);
  const url = (r) => `${r.path}/v1/docs/${NS}/${sc.coll}/${id}`;
  const before = 'Engineer in New York';
  const after = 'Just moved to Tokyo!';
  await story.step(`At ${writer.name}: <code>PATCH ${id}</code> bio = ${esc(show(before))}`, async () => {
    const r = await api('PATCH', url(writer), { [field]: before });
    if (r.status !== 200) throw new Error(`PATCH: ${r.status}`);
    return `on all 5 replicas after ${await story.converge((v) => fieldOf(v, field) === before)} ms`;
  });
  await story.step(`${reader.name} falls behind (its isolate switch: replication lag, made visible)`, async () => { await reader.isolate(true); await reader.poll(); changed(); });
  let token = '';
  await story.step(`At ${writer.name}: bio = ${esc(show(after))}`, async () => {
    const r = await api('PATCH', url(writer), { [field]: after });
    if (r.status !== 200) throw new Error(`PATCH: ${r.status}`);
    token = r.json.token;
    return `answered with session token <code>${esc(token.slice(0, 18))}…</code>`;
  });
  await story.step(`Read at ${reader.name}, no token: <code>GET …/${id}</code>`, async () => {
    const r = await api('GET', url(reader));
    const got = fieldOf(r.json, field);
    return got === after ? `${esc(show(got))}` : `<span class="bad">${esc(show(got))} — stale: “where did my update go?!”</span>`;
  });
  await story.step(`Read at ${reader.name} with the token: <code>GET …/${id}?after=token</code>`, async () => {
    const t = now();
    const read = api('GET', `${url(reader)}?after=${encodeURIComponent(token)}&timeout=10s`);
    await sleep(1200);
    await reader.isolate(false); // the lag ends
    const r = await read;
    if (r.status !== 200) throw new Error(`read with token: ${r.status} ${JSON.stringify(r.json)}`);
    return `<span class="ok">waited ${((now() - t) / 1000).toFixed(2)} s — until ${reader.name} caught up — then ${esc(show(fieldOf(r.json, field)))}</span>`;
  }, true);
  const ms = await story.converge((v) => fieldOf(v, field) === after);
  app.results[sc.id] = { converge_ms: ms };
  story.result('', `<span class="big">✓ Converged on all 5 replicas ${ms} ms after the last step.</span>
    <p>Replication between regions is asynchronous, so a read at another region can be stale. Every write answers with a <b>session token</b> — the vector of what the writer had.
    A read with <code>?after=token</code> waits (bounded by <code>timeout</code>) until that region holds it: a user reads their own writes, and never goes back in time, whichever region serves them.</p>`);
}

const SCENARIOS = [
  { id: 'lww', kicker: 'conflict', title: 'Title conflict — last write wins', coll: 'users_lww', run: titleScenario,
    desc: 'Two offline edits of one field: the later stamp wins; the loser is kept.',
    intro: 'From the replication primer: the same user record edited in two places at once. Here the <code>title</code> field is <b>lww</b>.' },
  { id: 'manual', kicker: 'conflict', title: 'Title conflict — manual resolution', coll: 'users_manual', run: titleScenario,
    desc: 'Keep both versions on every replica until someone picks one.',
    intro: 'The same conflict, but <code>title</code> is a <b>manual</b> field: the application (you) decides which version wins.' },
  { id: 'cart', kicker: 'merge', title: 'Shopping cart — add wins', coll: 'carts', run: cartScenario,
    desc: 'Concurrent add and remove of the same item: the add survives.',
    intro: 'A cart is an <b>orset</b> field, an add-wins observed-remove set: concurrent changes from both devices merge instead of overwriting each other.' },
  { id: 'stock', kicker: 'merge', title: 'Stock counter', coll: 'inventory', run: stockScenario,
    desc: 'Sales on two devices and a region: every one counts.',
    intro: '<code>stock</code> is a <b>counter</b> field: increments from every replica add up, whatever order they arrive in.' },
  { id: 'ryw', kicker: 'consistency', title: 'Read your writes across regions', coll: 'profiles', run: rywScenario,
    desc: 'Write at one region, read at another — without and with the session token.',
    intro: 'Replication lag in the primer’s words: “User sees: Nothing! Where’s my post?!” The session token fixes it.' },
];

async function runScenario(id) {
  const sc = SCENARIOS.find((s) => s.id === id);
  if (!sc || app.phase === 'running') return;
  if (app.resolveWaiter) app.resolveWaiter = null; // an unresolved manual scenario is left as it is
  app.phase = 'running';
  app.scenario = id;
  renderScenarioButtons();
  const story = new Story(sc);
  try {
    await story.step('Every region connected, both devices online and caught up', async () => { await prepare(); });
    await sc.run(sc, story);
    app.phase = 'done';
  } catch (e) {
    app.phase = 'error';
    story.result('err', `<b>Scenario stopped:</b> ${esc(e.message)}`);
    console.warn('scenario', id, e);
  }
  renderScenarioButtons();
  changed();
}

function renderScenarioButtons() {
  const busy = app.phase === 'running' || app.phase === 'loading';
  $('#scenarios').innerHTML = SCENARIOS.map((s) => {
    const r = app.results[s.id];
    const ms = r ? (r.resolve_ms ?? r.converge_ms ?? r.conflict_ms) : null;
    return `<button class="scn ${app.scenario === s.id ? 'active' : ''}" id="scn-${s.id}" data-scenario="${s.id}" ${busy ? 'disabled' : ''}>` +
      `<span class="k">${s.kicker}</span>${ms != null ? `<span class="res">✓ ${ms} ms</span>` : ''}<span class="t">${esc(s.title)}</span><span class="d">${esc(s.desc)}</span></button>`;
  }).join('');
}

function welcomeStory() {
  $('#story').innerHTML = `<h3>Every replica is a leader</h3>
    <p class="intro">Nothing here is simulated. Each region card reads its own server's API; each device card is a replica running in this tab.</p>
    <ul class="plain">
      <li><b>Switch a device offline</b>, edit on it, reload the page: the edit is still there, waiting in IndexedDB. Switch it back online and watch it spread.</li>
      <li><b>Isolate a region</b> to cut it off NATS: it keeps serving its devices, falls behind, and catches up when healed.</li>
      <li><b>Run a scenario</b> above for the classic conflicts of multi-leader replication, and how each merge policy settles them.</li>
    </ul>`;
}

// ---------------------------------------------------------------- events

function onClick(e) {
  const scn = e.target.closest('button.scn');
  if (scn && !scn.disabled) { runScenario(scn.dataset.scenario); return; }
  const btn = e.target.closest('button[data-act]');
  if (!btn) return;
  const card = btn.closest('[data-replica]');
  const rep = card?.dataset.replica;
  const f = app.focus;
  const dev = app.devices.find((d) => d.key === rep);
  const region = app.regions.find((r) => r.name === rep);
  const act = btn.dataset.act;
  // A refused write (say, a kind the device's schema does not know yet)
  // is shown on its card rather than thrown at the console.
  const fail = (err) => { console.warn(err); alertIn(card, err.message); };
  const guard = (f) => { try { Promise.resolve(f()).catch(fail); } catch (err) { fail(err); } };
  if (act === 'keep' && f) {
    const value = JSON.parse(btn.dataset.json);
    const at = now();
    const by = dev ? dev.label : region.name;
    if (dev) guard(() => dev.write([{ coll: f.coll, doc: f.id, field: f.field, op: 'resolve', value }]));
    else guard(() => api('POST', `${region.path}/v1/docs/${NS}/${f.coll}/${f.id}/resolve`, { field: f.field, value }));
    if (app.resolveWaiter) { const w = app.resolveWaiter; app.resolveWaiter = null; w({ value, at, by }); }
    return;
  }
  if (!dev || !f) return;
  const input = $('[data-input]', card);
  const text = input ? input.value.trim() : '';
  if (act === 'set' && text) { guard(() => dev.write([{ coll: f.coll, doc: f.id, field: f.field, op: 'set', value: text }])); input.value = ''; }
  if (act === 'add' && text) { guard(() => dev.write([{ coll: f.coll, doc: f.id, field: f.field, op: 'add', value: text }])); input.value = ''; }
  if (act === 'remove') guard(() => dev.write([{ coll: f.coll, doc: f.id, field: f.field, op: 'remove', value: JSON.parse(btn.dataset.json) }]));
  if (act === 'incr') guard(() => dev.write([{ coll: f.coll, doc: f.id, field: f.field, op: 'incr', value: Number(btn.dataset.n) }]));
}

function alertIn(card, msg) {
  const edit = card && $('[data-part="edit"]', card);
  if (!edit) return;
  const s = document.createElement('span');
  s.className = 'bad';
  s.textContent = msg;
  edit.appendChild(s);
  setTimeout(() => s.remove(), 4000);
}

function onChange(e) {
  const el = e.target;
  const card = el.closest('[data-replica]');
  const rep = card?.dataset.replica;
  if (el.dataset.act === 'isolate') {
    const r = app.regions.find((r) => r.name === rep);
    r.isolate(el.checked).then(() => r.poll()).then(changed);
  } else if (el.dataset.act === 'online') {
    app.devices.find((d) => d.key === rep)?.setOnline(el.checked);
  } else if (el.dataset.act === 'region') {
    app.devices.find((d) => d.key === rep)?.setRegion(el.value);
  }
}

function onKey(e) {
  if (e.key !== 'Enter' || !e.target.matches('[data-input]')) return;
  e.target.closest('.edit')?.querySelector('button[data-act]')?.click();
}

// ---------------------------------------------------------------- polling

function every(ms, f) {
  let busy = false;
  setInterval(async () => {
    if (busy) return;
    busy = true;
    try { await f(); } catch (e) { console.warn(e); } finally { busy = false; }
  }, ms);
}

async function pollTimeline() {
  const r = await api('GET', '/demo/api/timeline');
  if (r.status !== 200) return;
  const old = app.timeline.regions;
  app.timeline = r.json;
  // A region that gained another region's stamps received them over NATS.
  for (const reg of r.json.regions) {
    const prev = old.find((x) => x.name === reg.name);
    if (!prev) continue;
    for (const [id, n] of Object.entries(reg.vector || {})) {
      const src = app.regions.find((x) => x.id === id);
      if (src && src.name !== reg.name && n > (prev.vector?.[id] || 0)) pulse(src.name, reg.name);
    }
  }
  changed();
}

function refreshNow() {
  return Promise.all([...app.regions.map((r) => r.poll()), pollTimeline()]).then(changed).catch((e) => console.warn(e));
}

// settled reports whether every replica holds the same changes, nothing
// waits to be pushed, and the region cards count the connected devices.
function settled() {
  const key = (v) => JSON.stringify(Object.keys(v || {}).sort().map((k) => [k, v[k]]));
  const vecs = [...app.timeline.regions.map((r) => key(r.vector)), ...app.devices.map((d) => key(d.status?.vector))];
  const online = app.devices.filter((d) => d.conn === 'online').length;
  const clients = app.regions.reduce((n, r) => n + (r.status?.clients || 0), 0);
  return vecs.every((v) => v === vecs[0]) && app.devices.every((d) => !(d.status?.outbox || []).length) && clients === online;
}

// ---------------------------------------------------------------- start

async function main() {
  const boot = $('#boot');
  app.phase = 'loading';
  renderScenarioButtons();
  welcomeStory();
  const mark = (name) => (p) => { app.timings[name] = Math.round(now()); return p; };
  const [info] = await Promise.all([
    (window.syncdBoot?.info ?? api('GET', '/demo/api/info').then((r) => r.json)).then(mark('info')),
    loadCore().then(mark('core')),
    idb.open().then(mark('indexeddb')),
  ]);
  app.info = info;
  app.regions = info.regions.map((r) => new Region(r));
  app.devices = [new Device('A', 'Device A', 'laptop', app.regions[0].name), new Device('B', 'Device B', 'phone', app.regions[2].name)];
  const polled = Promise.all(app.regions.map((r) => r.poll()));
  await Promise.all(app.devices.map((d) => d.open(info.epoch)));
  mark('devices')();
  buildCards();
  try {
    const f = JSON.parse(localStorage.getItem('syncd-demo-focus') || 'null');
    if (f && f.epoch === info.epoch) app.focus = { coll: f.coll, id: f.id, field: f.field };
  } catch { /* nothing kept */ }
  await Promise.all([polled, app.focus ? views() : null]);
  app.phase = 'idle';
  renderScenarioButtons();
  render();
  app.interactiveMs = Math.round(now()); // since navigation started
  boot.classList.add('hide');
  for (const d of app.devices) d.connect();

  document.addEventListener('click', onClick);
  document.addEventListener('change', onChange);
  document.addEventListener('keydown', onKey);
  $('#reset-devices').addEventListener('click', resetDevices);
  setInterval(() => { for (const d of app.devices) d.tick(); }, TICK_MS);
  every(500, () => Promise.all(app.regions.map((r) => r.poll())).then(changed));
  every(400, pollTimeline);
  every(300, () => (app.focus && app.phase !== 'running' ? views() : null));
  every(15000, () => { for (const d of app.devices) if (d.ws?.readyState === WebSocket.OPEN) d.ws.send('{"type":"ping"}'); });
  pollTimeline();

  const w = info.wasm || {};
  const mb = (n) => (n / 1048576).toFixed(2) + ' MiB';
  $('#foot').innerHTML = `<span>replica core: <b>${mb(w.raw_bytes || 0)}</b> WebAssembly, <b>${mb(w.gzip_bytes || 0)}</b> over the wire (gzip), built with ${esc(w.go || '?')}</span>` +
    `<span>interactive <b>${app.interactiveMs} ms</b> after navigation</span><span>namespace <code>${NS}</code></span>` +
    app.regions.map((r) => `<span>${r.name}: <code>${r.path}/v1/…</code> · <code>syncd status --http ${esc(r.addr)}</code></span>`).join('');
}

async function resetDevices() {
  if (app.phase === 'running') return;
  for (const d of app.devices) {
    d.close();
    await idb.del('device-' + d.key);
  }
  app.devices = [new Device('A', 'Device A', 'laptop', app.regions[0].name), new Device('B', 'Device B', 'phone', app.regions[2].name)];
  await Promise.all(app.devices.map((d) => d.open(app.info.epoch)));
  buildCards();
  $('#topo').__built = false;
  for (const d of app.devices) d.connect();
  changed();
}

// The browser test reads these; a person can too, from the console.
window.syncdDemo = {
  get ready() { return app.phase !== 'loading'; },
  get phase() { return app.phase; },
  get scenario() { return app.scenario; },
  get interactiveMs() { return app.interactiveMs; },
  get timings() { return app.timings; },
  get results() { return app.results; },
  run: runScenario,
  settled,
  refresh: refreshNow,
  focus: setFocus,
  devices: () => app.devices.map((d) => ({ key: d.key, id: d.id, online: d.online, conn: d.conn, region: d.region, status: d.status })),
};

main().catch((e) => {
  const boot = $('#boot');
  boot.classList.remove('hide');
  boot.classList.add('err');
  boot.textContent = 'Could not start: ' + e.message;
  console.error(e);
});
