"""What `actstore interpret` writes, each file whole (written aside, then renamed):

    <out>/interpret.json   meta, per method (score summaries, malformed and unsent answers),
                           per latent (explanation, detection, fuzzing, simulation, counts)
    <out>/interpret.md     the per-method table
    <out>/scores.svg       the score distributions per method (the seed paper's figure)
    <report>/latents.json  eval's latent pages, each interpreted latent's explanation and
                           scores added (and a page for those eval's sample lacked)
    <report>/latents/interpret.js  the browser's overlay: per method, per interpreted latent,
                           its explanation and scores and a page (baselines have no shards)
    <report>/index.html    eval's page again, with the distributions, loading the overlay
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from trainer.evaluation.report.html import page
from trainer.evaluation.report.writer import _whole
from trainer.evaluation.run import dump
from trainer.interpret.config import InterpretConfig
from trainer.interpret.pipeline import TASKS, Interpretation

LABELS = {"detection": "detection (balanced accuracy)", "fuzzing": "fuzzing (balanced accuracy)",
          "simulation": "simulation (Pearson r)"}


def scores_svg(result: Interpretation) -> str:
    """The score distributions as one SVG (hand-written: matplotlib took seconds for it): a
    panel per score, a column per method, each latent a dot, the median a bar, the
    quartiles a box; chance (0.5) dashed on the accuracies."""
    tasks = [t for t in TASKS if any(m[t]["n"] for m in result.methods.values())] or ["detection"]
    names = list(result.methods)
    col, top, height, width = 56, 28, 180, 56 * max(len(names), 1) + 50
    parts = []
    for p, task in enumerate(tasks):
        x0, lo = 40 + p * width, -1.0 if task == "simulation" else 0.0

        def y(v: float, lo: float = lo) -> float:
            return top + height * (1 - (v - lo) / (1 - lo))

        parts.append(f'<text x="{x0}" y="16" font-size="12">{LABELS[task]}</text>')
        parts.append(f'<rect x="{x0}" y="{top}" width="{col * len(names)}" height="{height}" '
                     'fill="none" stroke="#999"/>')
        for v in (lo, (lo + 1) / 2, 1.0):
            parts.append(f'<text x="{x0 - 4}" y="{y(v) + 4:.1f}" font-size="10" '
                         f'text-anchor="end">{v:g}</text>')
        if task != "simulation":
            parts.append(f'<line x1="{x0}" x2="{x0 + col * len(names)}" y1="{y(0.5):.1f}" '
                         f'y2="{y(0.5):.1f}" stroke="#999" stroke-dasharray="4 3"/>')
        for i, name in enumerate(names):
            cx, s = x0 + col * i + col / 2, result.methods[name][task]
            parts.append(f'<text x="{cx}" y="{top + height + 14}" font-size="10" '
                         f'text-anchor="middle">{_escape(name)}</text>')
            if s["n"]:
                parts.append(f'<rect x="{cx - 14}" y="{y(s["q3"]):.1f}" width="28" '
                             f'height="{max(y(s["q1"]) - y(s["q3"]), 1):.1f}" fill="#cde" '
                             'stroke="#48c"/>')
                parts.append(f'<line x1="{cx - 14}" x2="{cx + 14}" y1="{y(s["median"]):.1f}" '
                             f'y2="{y(s["median"]):.1f}" stroke="#036" stroke-width="2"/>')
            for k, r in enumerate(result.latents[name].values()):
                if r.get(task) is not None:
                    jitter = ((k * 7919) % 17 - 8) * 1.2
                    parts.append(f'<circle cx="{cx + jitter:.1f}" cy="{y(r[task]):.1f}" r="2" '
                                 'fill="#000" fill-opacity="0.5"/>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width * len(tasks) + 20}" '
            f'height="{top + height + 24}" font-family="sans-serif">' + "".join(parts)
            + "</svg>")


def _cell(s: dict[str, Any]) -> str:
    return "-" if not s["n"] else f"{s['mean']:.3f} ({s['median']:.3f}, n={s['n']})"


def markdown(result: Interpretation) -> str:
    m = result.meta
    lines = [f"# Automated interpretability with {m['llm']}", "",
             f"Held-out windows of {m['store']} (hook `{m['hook']}`); baselines at "
             f"k = {m['baseline_k']} codes per token. Mean (median, latents scored).", "",
             "| method | latents | eligible | explained | detection | fuzzing | simulation "
             "| malformed (expl/det/fuzz/sim) | unsent |", "|---" * 9 + "|"]
    for name, s in result.methods.items():
        bad = "/".join(str(s["malformed"][t]) for t in ("explanation", *TASKS))
        lines.append(f"| {name} | {s['latents']} | {s['eligible']} of {s['total']} | "
                     f"{s['explained']} | {_cell(s['detection'])} | {_cell(s['fuzzing'])} | "
                     f"{_cell(s['simulation'])} | {bad} | {s['unsent']} |")
    if not m["simulation"]:
        lines += ["", "No simulation: the backend returned no token log-probs."]
    if not m["complete"]:
        lines += ["", f"**Incomplete**: {m['requests']['unsent']} requests were not sent "
                  "(--max-requests); rerun to continue from the cache."]
    lines += ["", "![score distributions](scores.svg)", ""]
    return "\n".join(lines)


def _extra_html(result: Interpretation) -> str:
    """The section index.html gets: the figure and interpret.md's table as text."""
    rows = "".join(
        f"<tr><td>{_escape(name)}</td><td>{s['latents']}</td><td>{s['explained']}</td>"
        + "".join(f"<td>{_cell(s[t])}</td>" for t in TASKS)
        + f"<td>{sum(s['malformed'].values())}</td></tr>"
        for name, s in result.methods.items())
    return ("<h2>Automated interpretability</h2>"
            f"<p>explainer and scorer: {_escape(str(result.meta['llm']))}</p>"
            "<table><tr><th>method</th><th>latents</th><th>explained</th><th>detection</th>"
            "<th>fuzzing</th><th>simulation</th><th>malformed</th></tr>"
            f"{rows}</table>"
            f"{scores_svg(result)}")


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def browser_data(result: Interpretation, latents: dict[str, Any]) -> dict[str, Any]:
    """eval's latents.json with each interpreted latent's explanation and scores."""
    books = latents.setdefault("dictionaries", {})
    for method, found in result.latents.items():
        book = books.setdefault(method, {"latents": result.methods[method]["total"],
                                         "tokens": result.meta["rows"],
                                         "fired_on_slice": None, "pages": {}})
        for latent, r in found.items():
            shown = book["pages"].setdefault(latent, result.pages[method][latent])
            shown["interpret"] = {k: r.get(k) for k in ("explanation", *TASKS)}
    return latents


def overlay(result: Interpretation) -> dict[str, Any]:
    """latents/interpret.js's data (trainer.evaluation.report.browser.script reads it)."""
    return {"methods": {name: {"kind": m["kind"], "total": m["total"],
                               "tokens": result.meta["rows"]}
                        for name, m in result.methods.items()},
            "latents": {method: {latent: {"interpret": {k: r.get(k) for k in
                                                        ("explanation", *TASKS)},
                                          "page": result.pages.get(method, {}).get(latent)}
                                 for latent, r in found.items()}
                        for method, found in result.latents.items()}}


def write_results(result: Interpretation, cfg: InterpretConfig) -> Path:
    """Write the files above; returns --out."""
    out, report = Path(cfg.out), Path(cfg.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    with _whole(out / "scores.svg") as f:
        f.write_text(scores_svg(result))
    with _whole(out / "interpret.md") as f:
        f.write_text(markdown(result))
    with _whole(out / "interpret.json") as f:
        dump(f, {"meta": result.meta, "methods": result.methods, "latents": result.latents})
    summary = json.loads((report / "eval.json").read_text())
    pages_path = report / "latents.json"
    latents = json.loads(pages_path.read_text()) if pages_path.exists() else {}
    latents = browser_data(result, latents)
    with _whole(pages_path) as f:
        dump(f, latents)
    (report / "latents").mkdir(exist_ok=True)
    with _whole(report / "latents" / "interpret.js") as f:
        f.write_text(f"actstore.interpret({json.dumps(overlay(result))});\n")
    frontier = report / "frontier.png"
    png = base64.b64encode(frontier.read_bytes()).decode() if frontier.exists() else ""
    with _whole(report / "index.html") as f:
        f.write_text(page(json.dumps(summary), png, extra=_extra_html(result), interpreted=True))
    return out
