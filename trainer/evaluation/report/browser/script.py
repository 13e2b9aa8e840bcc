"""The browser's script and style inside index.html: the data files of `shards` are loaded by
<script> elements (file:// allows them where it refuses fetch()), each calling the registry
`window.actstore`. Routes: `#dict=NAME&latent=ID` (a latent's page) and `#search=TEXT`
(latents firing on or promoting the token TEXT, and explanations containing it). Text goes in
through `textContent` only, so contexts and explanations cannot inject markup."""

from __future__ import annotations

STYLE = """
.ex { font-family: ui-monospace, monospace; white-space: pre-wrap; margin: 2px 0;
      padding: 2px 4px; border-bottom: 1px solid #eee; }
.tok { background: #fc6; font-weight: bold; }
.val { color: #666; display: inline-block; width: 5em; }
.band { color: #555; margin: 10px 0 2px; font-size: 13px; }
.logits { display: flex; gap: 40px; }
.logits td { font-family: ui-monospace, monospace; white-space: pre; }
svg.hist text { font-size: 10px; fill: #333; }
.results a { margin-right: 10px; }
"""

#: Before the data scripts: the registry they call.
REGISTRY = """
window.actstore = {
  meta: null, interp: null, cache: {}, waiting: {},
  index(d) { this.meta = d; },
  interpret(d) { this.interp = d; },
  shard(dir, k, recs) { this.done(dir + '/' + k, recs); },
  tokens(b, map) { this.done('tokens/' + b, map); },
  done(key, value) {
    this.cache[key] = value;
    const w = this.waiting[key];
    if (w) { delete this.waiting[key]; w.resolve(value); }
  },
  load(key) {  // one <script> per file, once; resolved when the file calls back
    if (key in this.cache) return Promise.resolve(this.cache[key]);
    if (this.waiting[key]) return this.waiting[key].promise;
    const w = {};
    w.promise = new Promise((resolve, reject) => { w.resolve = resolve; w.reject = reject; });
    this.waiting[key] = w;
    const s = document.createElement('script');
    s.src = 'latents/' + key + '.js';
    s.onerror = () => { delete this.waiting[key]; w.reject(new Error('no file ' + s.src)); };
    document.head.appendChild(s);
    return w.promise;
  },
};
"""

SCRIPT = r"""
const A = window.actstore;
const SVG = 'http://www.w3.org/2000/svg';
function methods() {  // eval's dictionaries, then what interpret added (baselines)
  const out = {};
  if (A.meta) for (const [n, m] of Object.entries(A.meta.methods)) out[n] = m;
  if (A.interp) for (const [n, m] of Object.entries(A.interp.methods)) {
    if (!(n in out)) out[n] = {dir: null, kind: m.kind, latents: m.total, tokens: m.tokens};
  }
  return out;
}
function overlay(name, id) {
  const l = A.interp && A.interp.latents[name];
  return l ? l[String(id)] : undefined;
}
function fromPage(p) {  // a page of interpret's (eval gave that method no shards)
  return {f: p.fired, h: p.histogram,
          top: p.examples.map(e => [e.value, e.row, e.left, e.token, e.right])};
}
function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function histogram(counts, edges, rows) {
  const W = 520, H = 170, L = 56, R = 64, T = 10, B = 40;
  const s = svg('svg', {width: W, height: H, class: 'hist'});
  const most = Math.max(1, ...counts);
  const lo = edges[0], hi = edges[edges.length - 1];
  const x = v => L + (W - L - R) * (v - lo) / (hi - lo);
  const y = c => T + (H - T - B) * (1 - c / most);
  counts.forEach((c, i) => {
    const r = svg('rect', {x: x(edges[i]) + 0.5, y: y(c), width: x(edges[i + 1]) - x(edges[i]) - 1,
                           height: y(0) - y(c), fill: '#48c'});
    r.appendChild(svg('title', {}, `${Math.pow(10, edges[i]).toPrecision(2)} .. ` +
      `${Math.pow(10, edges[i + 1]).toPrecision(2)}: ${c} rows`));
    s.appendChild(r);
  });
  s.appendChild(svg('line', {x1: L, x2: W - R, y1: y(0), y2: y(0), stroke: '#333'}));
  s.appendChild(svg('line', {x1: L, x2: L, y1: T, y2: y(0), stroke: '#333'}));
  s.appendChild(svg('line', {x1: W - R, x2: W - R, y1: T, y2: y(0), stroke: '#333'}));
  for (let p = Math.ceil(lo); p <= hi; p++) {
    s.appendChild(svg('line', {x1: x(p), x2: x(p), y1: y(0), y2: y(0) + 4, stroke: '#333'}));
    s.appendChild(svg('text', {x: x(p), y: y(0) + 15, 'text-anchor': 'middle', class: 'xtick'},
                      String(Math.pow(10, p))));
  }
  for (const c of [0, most / 2, most]) {
    s.appendChild(svg('text', {x: L - 4, y: y(c) + 3, 'text-anchor': 'end', class: 'ytick'},
                      String(Math.round(c))));
    s.appendChild(svg('text', {x: W - R + 4, y: y(c) + 3, class: 'dtick'},
                      (c / Math.max(rows, 1)).toExponential(1)));
  }
  s.appendChild(svg('text', {x: (L + W - R) / 2, y: H - 4, 'text-anchor': 'middle'},
                    'activation (log scale)'));
  s.appendChild(svg('text', {x: 12, y: (T + y(0)) / 2, 'text-anchor': 'middle',
                             transform: `rotate(-90 12 ${(T + y(0)) / 2})`}, 'rows'));
  s.appendChild(svg('text', {x: W - 8, y: (T + y(0)) / 2, 'text-anchor': 'middle',
                             transform: `rotate(90 ${W - 8} ${(T + y(0)) / 2})`},
                    'density (of slice rows)'));
  return s;
}
function example(e) {
  const line = el('div', undefined, 'ex');
  line.dataset.row = e[1];
  line.appendChild(el('span', e[0].toFixed(3), 'val'));
  line.appendChild(el('span', e[2]));
  line.appendChild(el('span', e[3], 'tok'));
  line.appendChild(el('span', e[4]));
  return line;
}
function logits(box, rec) {
  if (!rec.up) {  // why not: not a causal LM, no weights on disk, a toy store
    if (A.meta && A.meta.logit_lens) box.appendChild(el('p', 'Tokens it promotes and ' +
      'suppresses: ' + A.meta.logit_lens, 'missing'));
    return;
  }
  const wrap = el('div', undefined, 'logits');
  for (const [key, title] of [['up', 'promotes'], ['down', 'suppresses']]) {
    const t = el('table', undefined, 'tokens-' + key);
    t.appendChild(row([title, 'logit'], true));
    rec[key][0].forEach((tok, j) => t.appendChild(row([JSON.stringify(tok),
      rec[key][1][j].toFixed(3)])));
    wrap.appendChild(t);
  }
  box.appendChild(el('h4', 'Tokens it promotes and suppresses: ' + A.meta.logit_lens));
  box.appendChild(wrap);
}
function bands(box, rec) {
  const q = rec.q || [], n = (A.meta && A.meta.quantiles) || 4;
  if (!q.length) return;
  box.appendChild(el('h4', `Across its activations: ${q.length} of its firings at random, ` +
    `sorted and cut into ${n} bands (the firings' quantiles), highest first`));
  for (let b = 0; b < n; b++) {
    const part = q.slice(Math.floor(b * q.length / n), Math.floor((b + 1) * q.length / n));
    if (!part.length) continue;
    box.appendChild(el('p', `quantile band ${b + 1} of ${n} (activations ` +
      `${part[part.length - 1][0].toFixed(3)} .. ${part[0][0].toFixed(3)})`, 'band'));
    for (const e of part) box.appendChild(example(e));
  }
}
function interpretation(box, ov) {
  if (!ov || !ov.interpret) return;
  const i = ov.interpret;
  box.appendChild(el('p', 'explanation: ' + (i.explanation === null ?
    '(none: the explainer gave no usable answer)' : i.explanation), 'explanation'));
  const fmt = v => v === null || v === undefined ? '-' : v.toFixed(3);
  box.appendChild(el('p', `detection ${fmt(i.detection)}, fuzzing ${fmt(i.fuzzing)}, ` +
    `simulation ${fmt(i.simulation)}`));
}
async function show(name, id) {
  const box = document.getElementById('latent');
  box.replaceChildren();
  document.getElementById('results').replaceChildren();
  const m = methods()[name];
  if (!m) { box.appendChild(el('p', 'no dictionary ' + name, 'missing')); return; }
  const n = Number(id);
  if (!Number.isInteger(n) || n < 0 || n >= m.latents) {
    box.appendChild(el('p', `latent ${id} of ${name} has no page: it has ${m.latents} ` +
      `latents, 0 to ${m.latents - 1}`, 'missing'));
    return;
  }
  const ov = overlay(name, n);
  let rec = null;
  try {
    const k = Math.floor(n / (A.meta ? A.meta.shard : 1));
    if (m.dir !== null) rec = (await A.load(`${m.dir}/${k}`))[n % A.meta.shard];
  } catch (err) { box.appendChild(el('p', String(err), 'missing')); }
  if (!rec && ov && ov.page) rec = fromPage(ov.page);
  if (!rec) {
    box.appendChild(el('p', `latent ${n} of ${name} has no page: interpret gave pages only ` +
      'to the latents it explained', 'missing'));
    return;
  }
  box.appendChild(el('h3', `${name} latent ${n}`));
  const nav = el('p');
  for (const [t, j] of [['previous', n - 1], ['next', n + 1]]) {
    if (j < 0 || j >= m.latents) continue;
    const a = el('a', t + ' '); a.href = `#dict=${encodeURIComponent(name)}&latent=${j}`;
    nav.appendChild(a);
  }
  box.appendChild(nav);
  interpretation(box, ov);
  box.appendChild(el('p', `fired on ${rec.f} of ${m.tokens} rows (density ` +
    `${(rec.f / Math.max(m.tokens, 1)).toExponential(2)})`));
  if (!rec.f) { box.appendChild(el('p', 'it never fired on the slice', 'missing')); }
  if (rec.h) box.appendChild(histogram(rec.h, A.meta ? A.meta.edges : [-3, 3], m.tokens));
  logits(box, rec);
  if (rec.top && rec.top.length) {
    box.appendChild(el('h4', `Top ${rec.top.length} activations`));
    for (const e of rec.top) box.appendChild(example(e));
  }
  bands(box, rec);
}
function fnv(text) {  // as shards.bucket: FNV-1a over UTF-16 code units
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 16777619) >>> 0;
  return h;
}
function link(name, id, note) {
  const a = el('a', `${name} ${id}` + (note ? ` (${note})` : ''));
  a.href = `#dict=${encodeURIComponent(name)}&latent=${id}`;
  return a;
}
async function search(q) {
  const box = document.getElementById('results');
  box.replaceChildren();
  document.getElementById('latent').replaceChildren();
  const key = q.trim().toLowerCase();
  const byDir = {};
  for (const [n, m] of Object.entries(methods())) if (m.dir !== null) byDir[m.dir] = n;
  let found = [];
  if (A.meta && key) {
    try { found = (await A.load('tokens/' + (fnv(key) % A.meta.buckets)))[key] || []; }
    catch (err) { box.appendChild(el('p', String(err), 'missing')); }
  }
  box.appendChild(el('h3', `token ${JSON.stringify(key)}: ${found.length} latents`));
  const list = el('p', undefined, 'results tokens');
  for (const [dir, id, c, kind] of found.slice(0, 500)) {
    list.appendChild(link(byDir[dir], id, kind === 'a' ? `${c} of its top` : 'promotes'));
  }
  if (found.length > 500) list.appendChild(el('span', `and ${found.length - 500} more`));
  box.appendChild(list);
  const hits = el('div', undefined, 'results explanations');
  let count = 0;
  if (A.interp && key) for (const [n, ls] of Object.entries(A.interp.latents)) {
    for (const [id, o] of Object.entries(ls)) {
      const ex = o.interpret && o.interpret.explanation;
      if (!ex || !ex.toLowerCase().includes(key)) continue;
      const p = el('p'); p.appendChild(link(n, id)); p.appendChild(el('span', ex));
      hits.appendChild(p); count++;
    }
  }
  box.appendChild(el('h3', `explanations containing ${JSON.stringify(key)}: ${count}` +
    (A.interp ? '' : ' (actstore interpret has not run)')));
  box.appendChild(hits);
}
function browser() {
  const pick = document.getElementById('dict');
  const all = methods();
  if (!Object.keys(all).length) {
    document.getElementById('latent').appendChild(el('p', 'no latents: latents/index.js ' +
      'did not load (was the report folder moved without its latents/ folder?)', 'missing'));
    return;
  }
  for (const [name, m] of Object.entries(all)) {
    const o = el('option', `${name} (${m.latents} latents)`); o.value = name;
    pick.appendChild(o);
  }
  function route() {
    const q = new URLSearchParams(location.hash.slice(1));
    if (q.get('search') !== null) { document.getElementById('search').value = q.get('search');
      return search(q.get('search')); }
    if (q.get('dict') && q.get('dict') in all) pick.value = q.get('dict');
    const id = q.get('latent') !== null ? q.get('latent') : '0';
    document.getElementById('search').value = id;
    return show(pick.value, id);
  }
  document.getElementById('go').onclick = () => {
    const v = document.getElementById('search').value.trim();
    location.hash = /^[0-9]+$/.test(v) ?
      `dict=${encodeURIComponent(pick.value)}&latent=${v}` : 'search=' + encodeURIComponent(v);
  };
  pick.onchange = () => { location.hash = `dict=${encodeURIComponent(pick.value)}`; };
  window.onhashchange = route;
  // when the first view is done, in ms since navigation began (benchmarks/browser.py)
  route().then(() => { document.body.dataset.openMs = performance.now().toFixed(0); });
}
browser();
"""
