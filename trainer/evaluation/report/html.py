"""index.html of an eval report: no server, no network. The scores travel inside it as JSON;
a little script renders the metrics and the frontier, and the browser (`browser.script`) a page
per latent from the files under latents/ (`browser.shards`), addressable as
`index.html#dict=NAME&latent=ID`, searchable by token and explanation (`#search=TEXT`). Text
goes in through `textContent` only, so activations' contexts cannot inject markup."""

from __future__ import annotations

from trainer.evaluation.report.browser.script import REGISTRY, SCRIPT, STYLE

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1100px;
       color: #222; }
table { border-collapse: collapse; margin: 8px 0 16px; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
"""

_SCRIPT = """
const S = JSON.parse(document.getElementById('summary').textContent);
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
metrics();
"""


def _embed(json_text: str) -> str:
    """JSON that cannot end its <script> element early ("<" only occurs inside strings)."""
    return json_text.replace("<", "\\u003c")


def page(summary_json: str, frontier_png_b64: str, extra: str = "",
         interpreted: bool = False) -> str:
    """The whole index.html; `extra` is HTML put before the latents (actstore interpret's
    section, made of escaped text); `interpreted`: load latents/interpret.js too."""
    data = '<script src="latents/index.js"></script>' + (
        '<script src="latents/interpret.js"></script>' if interpreted else "")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>actstore eval</title>
<style>{_STYLE}{STYLE}</style></head><body>
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
<p><select id="dict"></select> latent id, or a token or words of an explanation:
<input id="search" size="24"> <button id="go">show</button></p>
<div id="results"></div>
<div id="latent"></div>
<script type="application/json" id="summary">{_embed(summary_json)}</script>
<script>{REGISTRY}</script>
{data}
<script>{_SCRIPT}</script>
<script>{SCRIPT}</script>
</body></html>
"""
