"""index.html of an eval report: one file, no server, no network. The data travel inside it
as JSON; a little script renders the metrics, the frontier and a page per latent (searchable by
id, addressable as `index.html#dict=NAME&latent=ID`). Text goes in through `textContent`
only, so activations' contexts cannot inject markup."""

from __future__ import annotations

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1100px;
       color: #222; }
table { border-collapse: collapse; margin: 8px 0 16px; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.ex { font-family: ui-monospace, monospace; white-space: pre-wrap; margin: 2px 0;
      padding: 2px 4px; border-bottom: 1px solid #eee; }
.tok { background: #fc6; font-weight: bold; }
.val { color: #666; display: inline-block; width: 5em; }
.bar { display: inline-block; width: 14px; background: #48c; vertical-align: bottom;
       margin-right: 1px; }
#hist { height: 60px; display: flex; align-items: flex-end; }
.ids { display: flex; flex-wrap: wrap; gap: 2px 8px; }
"""

_SCRIPT = """
const S = JSON.parse(document.getElementById('summary').textContent);
const L = JSON.parse(document.getElementById('latents').textContent);
function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}
function row(cells, head) {
  const tr = el('tr');
  for (const c of cells) tr.appendChild(el(head ? 'th' : 'td', String(c)));
  return tr;
}
function metrics() {
  const t = document.getElementById('metrics');
  t.appendChild(row(['dictionary', 'L0', 'FVU', 'fired on slice', 'MMCS'], true));
  for (const [name, s] of Object.entries(S.dictionaries)) {
    t.appendChild(row([name, s.l0.toFixed(2), s.fvu.toFixed(4),
      (100 * s.fired_fraction).toFixed(1) + '%', s.mmcs === undefined ? '-' : s.mmcs.toFixed(3)]));
  }
  const f = document.getElementById('frontier');
  const bases = ['pca', 'ica', 'neurons', 'random'].filter(b => b in S.baselines);
  f.appendChild(row(['k'].concat(bases), true));
  const ks = [...new Set(S.frontier.filter(r => bases.includes(r.method)).map(r => r.k))];
  ks.sort((a, b) => a - b);
  for (const k of ks) {
    const cells = [k];
    for (const b of bases) {
      const r = S.frontier.find(r => r.method === b && r.k === k);
      cells.push(r ? r.fvu.toFixed(4) : '-');
    }
    f.appendChild(row(cells));
  }
  const sp = document.getElementById('spliced');
  document.getElementById('splicedwhat').textContent = S.meta.spliced || 'skipped';
  if (S.spliced.length) {
    const methods = [...new Set(S.spliced.map(r => r.method))];
    const sks = [...new Set(S.spliced.map(r => r.k))].sort((a, b) => a - b);
    sp.appendChild(row(['k'].concat(methods), true));
    for (const k of sks) {
      sp.appendChild(row([k].concat(methods.map(mt => {
        const r = S.spliced.find(r => r.method === mt && r.k === k);
        return r ? r.recovered.toFixed(4) : '-';
      }))));
    }
  }
  const m = S.meta;
  document.getElementById('meta').textContent = `store ${m.store}, hook ${m.hook}, ` +
    `model ${m.model}; ${m.rows} rows of ` + (m.held_out ? 'held-out contexts' :
    'contexts the dictionaries TRAINED ON (nothing was held out)');
}
function show(dict, id) {
  const box = document.getElementById('latent');
  box.replaceChildren();
  const d = L.dictionaries[dict];
  if (!d) { box.appendChild(el('p', 'no dictionary ' + dict, 'missing')); return; }
  const p = d.pages[String(id)];
  if (!p) {
    box.appendChild(el('p', `latent ${id} of ${dict} has no page: it is not in the ` +
      `sample of ${Object.keys(d.pages).length} latents (rerun actstore eval with a larger ` +
      `--show), or it never fired on the slice`, 'missing'));
    return;
  }
  box.appendChild(el('h3', `${dict} latent ${id}`));
  box.appendChild(el('p', `fired on ${p.fired} of ${d.tokens} rows (density ` +
    `${p.density.toExponential(2)})`));
  const h = el('div'); h.id = 'hist';
  const most = Math.max(1, ...p.histogram);
  p.histogram.forEach((c, i) => {
    const b = el('span', undefined, 'bar');
    b.style.height = (60 * c / most) + 'px';
    const e = L.histogram_edges;
    b.title = `10^${e[i].toFixed(2)}..10^${e[i + 1].toFixed(2)}: ${c}`;
    h.appendChild(b);
  });
  box.appendChild(h);
  if (p.interpret) {  // actstore interpret's explanation and scores
    const i = p.interpret;
    box.appendChild(el('p', 'explanation: ' + (i.explanation === null ?
      '(none: the explainer gave no usable answer)' : i.explanation), 'explanation'));
    const fmt = v => v === null || v === undefined ? '-' : v.toFixed(3);
    box.appendChild(el('p', `detection ${fmt(i.detection)}, fuzzing ${fmt(i.fuzzing)}, ` +
      `simulation ${fmt(i.simulation)}`));
  }
  for (const e of p.examples) {
    const line = el('div', undefined, 'ex');
    line.dataset.row = e.row;
    line.appendChild(el('span', e.value.toFixed(3), 'val'));
    line.appendChild(el('span', e.left));
    line.appendChild(el('span', e.token, 'tok'));
    line.appendChild(el('span', e.right));
    box.appendChild(line);
  }
}
function browser() {
  const pick = document.getElementById('dict');
  for (const name of Object.keys(L.dictionaries)) pick.appendChild(el('option', name));
  const ids = document.getElementById('ids');
  function list() {
    ids.replaceChildren();
    for (const id of Object.keys(L.dictionaries[pick.value].pages)) {
      const a = el('a', id); a.href = `#dict=${encodeURIComponent(pick.value)}&latent=${id}`;
      ids.appendChild(a);
    }
  }
  function route() {
    const q = new URLSearchParams(location.hash.slice(1));
    if (q.get('dict') && q.get('dict') in L.dictionaries) pick.value = q.get('dict');
    list();
    const pages = L.dictionaries[pick.value] ? L.dictionaries[pick.value].pages : {};
    const first = Object.keys(pages)[0];
    const id = q.get('latent') !== null ? q.get('latent') : first;
    if (id !== undefined) { document.getElementById('search').value = id; show(pick.value, id); }
  }
  document.getElementById('go').onclick = () => {
    location.hash = `dict=${encodeURIComponent(pick.value)}&latent=` +
      document.getElementById('search').value.trim();
  };
  pick.onchange = () => { location.hash = `dict=${encodeURIComponent(pick.value)}`; };
  window.onhashchange = route;
  if (Object.keys(L.dictionaries).length) route();
}
metrics();
browser();
"""


def _embed(json_text: str) -> str:
    """JSON that cannot end its <script> element early ("<" only occurs inside strings)."""
    return json_text.replace("<", "\\u003c")


def page(summary_json: str, latents_json: str, frontier_png_b64: str, extra: str = "") -> str:
    """The whole index.html; `extra` is HTML put before the latents (actstore interpret's
    section, made of escaped text)."""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>actstore eval</title>
<style>{_STYLE}</style></head><body>
<h1>actstore eval</h1>
<p id="meta"></p>
<h2>Dictionaries on the slice</h2><table id="metrics"></table>
<h2>Frontier: FVU against L0</h2>
<img alt="FVU against L0" src="data:image/png;base64,{frontier_png_b64}">
<h3>Baselines at equal L0 (FVU)</h3><table id="frontier"></table>
<h2>Loss recovered, spliced into the model</h2><p id="splicedwhat"></p>
<table id="spliced"></table>
{extra}
<h2>Latents</h2>
<p><select id="dict"></select> latent <input id="search" size="8">
<button id="go">show</button></p>
<p class="ids" id="ids"></p>
<div id="latent"></div>
<script type="application/json" id="summary">{_embed(summary_json)}</script>
<script type="application/json" id="latents">{_embed(latents_json)}</script>
<script>{_SCRIPT}</script>
</body></html>
"""
