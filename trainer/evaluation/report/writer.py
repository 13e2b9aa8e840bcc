"""The report folder of `actstore eval`:

    eval.json      meta, the frontier ({"method", "k", "l0", "fvu"} rows), per-dictionary
                   and per-baseline scores, MMCS between dictionary sizes
    latents.json   per dictionary, for a sample of latents: firing, histogram, top examples
    latents/       the browser's data: every latent of every dictionary in .js shards
                   (`browser.shards`), and an index of the tokens they fire on and promote
    report.md      the same as tables
    frontier.png   FVU against L0 for every method
    index.html     the scores, and the browser of latents/ (opens from disk, no server)
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import transformers

from actstore.loader.ground_truth import TOY_MODEL
from actstore.model.capture import model_path
from actstore.store.activation_store import ActivationStore
from trainer.evaluation.config import EvalConfig
from trainer.evaluation.examples import (
    HIST_EDGES,
    Decode,
    render,
    sample_latents,
    token_ids_text,
)
from trainer.evaluation.report.browser import write_browser
from trainer.evaluation.report.html import page
from trainer.evaluation.run import Evaluation, dump

BASELINES = ("pca", "ica", "neurons", "random")


def decoder_of(store: ActivationStore) -> Decode:
    """Token ids to text with the store's tokenizer (from local files only: a report never
    downloads); ids as numbers when it cannot load."""
    if store.spec.model == TOY_MODEL:
        return token_ids_text
    try:
        tok = transformers.AutoTokenizer.from_pretrained(model_path(store.spec.tokenizer),
                                                         local_files_only=True)
    except Exception:
        return token_ids_text
    return lambda ids: str(tok.decode(list(ids)))


def latent_pages(ev: Evaluation, store: ActivationStore, cfg: EvalConfig, decode: Decode
                 ) -> dict[str, Any]:
    """latents.json: for each dictionary, a sample of latents with their examples as text
    (every example of a dictionary rendered in one call: one read of the contexts table)."""
    out: dict[str, Any] = {"histogram_edges": HIST_EDGES.tolist(), "dictionaries": {}}
    for name, top in ev.tops.items():
        # and the latents an evaluation asks to show (a crosscoder's groups)
        wanted = ev.meta.get("show_latents", {}).get(name, [])
        ids = sorted({*sample_latents(top, cfg.show, cfg.seed), *wanted})
        kept = [top.rows[i] >= 0 for i in ids]
        rows = [r for i, k in zip(ids, kept, strict=True) for r in top.rows[i][k].tolist()]
        values = [v for i, k in zip(ids, kept, strict=True) for v in top.values[i][k].tolist()]
        shown = iter(render(store, rows, values, decode, cfg.window))
        pages = {}
        for i, k in zip(ids, kept, strict=True):
            pages[str(i)] = {
                "fired": int(top.fired[i]), "density": float(top.fired[i]) / max(top.tokens, 1),
                "histogram": top.histogram[i].tolist(),
                "examples": [dataclasses.asdict(next(shown)) for _ in range(int(k.sum()))]}
        out["dictionaries"][name] = {
            "latents": top.fired.numel(), "tokens": top.tokens,
            "fired_on_slice": int((top.fired > 0).sum()), "pages": pages}
    return out


def plot_frontier(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """FVU against L0, log-log: a line per baseline, a point per dictionary."""
    import matplotlib as mpl  # here: pyplot's import is ~2 s of every command that imports this

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    methods = sorted({r["method"] for r in rows}, key=lambda m: (m not in BASELINES, m))
    for m in methods:
        pts = sorted((r["l0"], r["fvu"]) for r in rows if r["method"] == m)
        style = "-o" if m in BASELINES else "*"
        ax.plot([p[0] for p in pts], [max(p[1], 1e-6) for p in pts], style, label=m,
                markersize=4 if m in BASELINES else 12)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("L0 (active codes per token)")
    ax.set_ylabel("FVU on the held-out slice")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(ev: Evaluation) -> str:
    """report.md: the scores and the frontier as tables."""
    m = ev.meta
    slice_ = ("held-out contexts (never trained on)" if m["held_out"]
              else "**rows the dictionaries trained on** (the run held nothing out)")
    lines = [f"# Evaluation of {m['run'] or 'dictionaries from elsewhere'}", "",
             f"Store `{m['store']}` (hook `{m['hook']}`, model `{m['model']}`); scored on "
             f"{m['rows']} rows of {slice_}.", "", *imported_lines(m),
             "## Dictionaries", "", "| dictionary | L0 | FVU | fired on slice | MMCS |",
             "| --- | --- | --- | --- | --- |"]
    for name, s in ev.dictionaries.items():
        mm = f"{s['mmcs']:.3f}" if "mmcs" in s else "-"
        lines.append(f"| {name} | {s['l0']:.2f} | {s['fvu']:.4f} | "
                     f"{s['fired_fraction']:.1%} | {mm} |")
    ks = sorted({r["k"] for r in ev.frontier if r["method"] in BASELINES})
    bases = [b for b in BASELINES if b in ev.baselines]
    lines += ["", "## Baselines at equal L0 (FVU; codes cut to their k largest by magnitude)",
              "", "| k | " + " | ".join(bases) + " |", "|---" * (len(bases) + 1) + "|"]
    fvu = {(r["method"], r["k"]): r["fvu"] for r in ev.frontier}
    for k in ks:
        lines.append(f"| {k} | " + " | ".join(f"{fvu[(b, k)]:.4f}" for b in bases) + " |")
    if any(ev.baselines.values()):
        lines += ["", "MMCS of the baselines with the ground truth: " + ", ".join(
            f"{b} {s['mmcs']:.3f}" for b, s in ev.baselines.items() if s)]
    lines += spliced_table(ev) + crosscoder_table(ev)
    if ev.mmcs_between:
        lines += ["", "## MMCS between dictionary sizes", "", "| smaller | larger | MMCS |",
                  "| --- | --- | --- |"]
        lines += [f"| {r['smaller']} | {r['larger']} | {r['mmcs']:.3f} |"
                  for r in ev.mmcs_between]
    lines += ["", "![FVU against L0](frontier.png)", "",
              "Open `index.html` for the examples of each latent.", ""]
    return "\n".join(lines)


def imported_lines(m: dict[str, Any]) -> list[str]:
    """What report.md says of dictionaries from elsewhere (`--dictionary`), and of the slice
    when no run of ours gave one."""
    found = m.get("imported") or {}
    if not found:
        return []
    lines = ["Dictionaries from elsewhere, loaded from their own files: " + "; ".join(
        f"{name} ({i['format']}, `{i['path']}`, trained on hook `{i['trained_on'] or '?'}`)"
        for name, i in found.items()) + ".", ""]
    if m["run"] is None:
        lines += ["No held-out slice: these dictionaries never saw this store, so every row "
                  "is new to them. The baselines were fitted on the store's first shards; "
                  f"everything was scored on the last {len(m['held_out_shards'])}.", ""]
    else:
        lines += ["They are scored on the run's held-out rows, as its own dictionaries are; "
                  "they never saw this store.", ""]
    return lines


def spliced_table(ev: Evaluation) -> list[str]:
    """report.md's loss-recovered section: a row per k, a column per method."""
    lines = ["", f"## Loss recovered, the reconstruction spliced into the model "
             f"({ev.meta.get('spliced', 'skipped')})"]
    if not ev.spliced:
        return lines
    lm = "loss_recovered" in ev.spliced[0]
    lines += ["", "Fraction of the " + ("cross-entropy" if lm else "final hidden state's "
              "squared error") + " that zero-ablating the hook loses and the reconstruction "
              "recovers (1 = the clean model)" + (", and KL(clean ‖ spliced) per token." if lm
                                                  else "."), ""]
    methods = list(dict.fromkeys(r["method"] for r in ev.spliced))
    ks = sorted({r["k"] for r in ev.spliced})
    cell = {(r["method"], r["k"]): r for r in ev.spliced}
    lines += ["| k | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for k in ks:
        row = [f"{cell[m, k]['recovered']:.4f}" + (f" (KL {cell[m, k]['kl']:.4f})" if lm else "")
               if (m, k) in cell else "-" for m in methods]
        lines.append(f"| {k} | " + " | ".join(row) + " |")
    return lines


def crosscoder_table(ev: Evaluation) -> list[str]:
    """report.md's section on a crosscoder's sites: FVU per site, where its latents live."""
    details = ev.meta.get("crosscoder")
    if not details:
        return []
    sites, cuts = ev.meta["sites"], ev.meta["cuts"]
    lines = ["", "## Crosscoder sites", "", "Sites: " + ", ".join(
        f"{i}: `{s['hook']}` of `{s['store']}`" for i, s in enumerate(sites)) + ". A latent is "
        f"site l's only when its decoder holds ≥ {cuts['only']} of its norm there (‖d_l‖ / "
        f"Σ‖d‖), shared when every site holds ≥ {cuts['shared']} / {len(sites)}.", "",
        "| dictionary | " + " | ".join(f"FVU site {i} | only site {i}" for i in
                                        range(len(sites))) + " | shared |",
        "|---" * (2 * len(sites) + 2) + "|"]
    notes = [""]
    for name, d in details.items():
        s = ev.dictionaries[name]
        lines.append(f"| {name} | " + " | ".join(
            f"{s[f'fvu_site_{i}']:.4f} | {len(d['groups'][f'only_site_{i}'])}"
            for i in range(len(sites))) + f" | {len(d['groups']['shared'])} |")
        notes.append(f"- {name}, latents shown per group (most firing first): " + "; ".join(
            f"{g}: {ids}" for g, ids in d["shown"].items()))
    return lines + notes


def write_report(ev: Evaluation, store: ActivationStore, cfg: EvalConfig) -> Path:
    """Write the report folder; returns it. Each file appears whole (written aside, then
    renamed), and eval.json and index.html, which say a report is there, go first and come
    back last: a report cut short (Ctrl-C) never looks complete, nor mixes with an older one."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("index.html", "eval.json"):
        (out / name).unlink(missing_ok=True)
    summary = {"meta": ev.meta, "frontier": ev.frontier, "dictionaries": ev.dictionaries,
               "baselines": ev.baselines, "mmcs_between": ev.mmcs_between,
               "spliced": ev.spliced}
    decode = decoder_of(store)
    latents = latent_pages(ev, store, cfg, decode)
    with _whole(out / "latents.json") as f:
        dump(f, latents)
    write_browser(ev, store, cfg, out, decode)
    with _whole(out / "report.md") as f:
        f.write_text(markdown(ev))
    with _whole(out / "frontier.png") as f:
        plot_frontier(ev.frontier, f)
    png = base64.b64encode((out / "frontier.png").read_bytes()).decode()
    with _whole(out / "eval.json") as f:
        dump(f, summary)
    with _whole(out / "index.html") as f:
        f.write_text(page(json.dumps(summary), png))
    return out


@contextlib.contextmanager
def _whole(path: Path) -> Iterator[Path]:
    """A temporary file beside `path`, renamed to it once written (removed if not)."""
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
