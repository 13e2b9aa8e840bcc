"""The browser's data: every latent of every dictionary in shards of `SHARD` latents, and an
index of the tokens they fire on and promote, written as `.js` files beside index.html.

    latents/index.js          actstore.index({shard, buckets, edges, methods: {name: {dir,
                              latents, tokens, shards, ...}}, logit_lens, quantiles})
    latents/d<i>/<k>.js       actstore.shard("d<i>", k, [record of latent k·SHARD + j, ...])
    latents/tokens/<b>.js     actstore.tokens(b, {token: [[dir, latent, count, kind], ...]})
    latents/interpret.js      actstore.interpret({...}): written by `actstore interpret`

Why `.js` and not `.json`: browsers refuse fetch() of file:// URLs, and a report must open
from disk; a <script> element may load a file:// script, which hands its data to a
registered function (JSONP's trick). Only the index, the shard of the latent shown and the
token bucket searched are loaded.

A record: {"f": firings, "h": histogram counts, "top": top examples, "q": a random sample of
firings, largest first, "up"/"down": [tokens, logits] promoted / suppressed}; an example is
[value, store row, left text, token, right text]. Token keys are the activating token's text,
stripped and lower-cased, bucketed by FNV-1a of its UTF-16 code units (the page hashes a query
alike); kind "a": the latent fires on it (count: among its top examples), "p": promotes it.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.evaluation.config import EvalConfig
from trainer.evaluation.examples import HIST_EDGES, Decode, render
from trainer.evaluation.logit_lens import TokenEffects
from trainer.evaluation.run import Evaluation

#: Latents per shard: the page loads one shard (about a megabyte of examples) per latent shown.
SHARD = 256
#: Token index entries per bucket, about: the number of buckets follows.
_PER_BUCKET = 8192

Entry = list[Any]
"""[dir, latent, count, kind] of the token index."""


def bucket(text: str, buckets: int) -> int:
    """FNV-1a (32 bits) over UTF-16 code units, as the page's script computes it."""
    h = 0x811C9DC5
    data = text.encode("utf-16-le")
    for i in range(0, len(data), 2):
        h = ((h ^ (data[i] | data[i + 1] << 8)) * 0x01000193) & 0xFFFFFFFF
    return h % buckets


def token_key(text: str) -> str:
    return text.strip().lower()


def _call(path: Path, fn: str, *args: Any) -> int:
    """Write `actstore.fn(args...)` as one line of JSON-compatible JS; returns its size."""
    text = f"actstore.{fn}({','.join(json.dumps(a, separators=(',', ':')) for a in args)});\n"
    path.write_text(text)
    return len(text.encode())


def _texts(ev: Evaluation, store: Any, decode: Decode, window: int
           ) -> dict[int, tuple[int, str, str, str]]:
    """Every shown row's (row, left, token, right), each rendered once (an example is a
    held-out row, so there are at most --rows of them however many latents); rows without a
    context (toy stores) are left out."""
    rows: set[int] = set()
    for top in ev.tops.values():
        for t in (top.rows, top.sample_rows):
            if t is not None:
                rows.update(np.unique(t.numpy()).tolist())
    ordered = sorted(rows - {-1})  # -1: no row (fewer firings than kept)
    return {e.row: (e.row, e.left, e.token, e.right)
            for e in render(store, ordered, [0.0] * len(ordered), decode, window)
            if not (e.token == f"(row {e.row})" and not e.left and not e.right)}


def _rounded(values: torch.Tensor) -> list[list[float]]:
    """Values to 4 significant digits (shorter JSON), as nested lists."""
    v = values.double().numpy()
    scale = 10.0 ** (3 - np.floor(np.log10(np.maximum(np.abs(v), 1e-30))))
    return (np.round(v * scale) / scale).tolist()  # type: ignore[no-any-return]


def _examples(rows: list[int], values: list[float], texts: dict[int, tuple[Any, ...]]
              ) -> list[tuple[Any, ...]]:
    out = []
    for r, v in zip(rows, values, strict=True):
        if r < 0:
            break
        out.append((v, *(texts.get(r) or (r, "", f"(row {r})", ""))))
    return out


def _effects(fx: TokenEffects | None, lo: int, hi: int, pieces: np.ndarray
             ) -> list[dict[str, Any]]:
    """Per latent of lo:hi, {"up": [tokens, logits], "down": [...]} (nothing without)."""
    if fx is None:
        return [{} for _ in range(lo, hi)]
    parts = [(key, pieces[ids[lo:hi].numpy()].tolist(), _rounded(vals[lo:hi]))
             for key, ids, vals in (("up", fx.up_ids, fx.up_values),
                                    ("down", fx.down_ids, fx.down_values))]
    return [{key: [toks[j], vals[j]] for key, toks, vals in parts} for j in range(hi - lo)]


def _pieces(ev: Evaluation, decode: Decode) -> np.ndarray:
    """Each promoted or suppressed token's text, decoded alone, at its id (object array)."""
    ids: set[int] = set()
    for fx in ev.token_effects.values():
        ids.update(np.unique(fx.up_ids.numpy()).tolist())
        ids.update(np.unique(fx.down_ids.numpy()).tolist())
    out = np.full(max(ids, default=-1) + 1, "", dtype=object)
    for i in ids:
        out[i] = decode([i])
    return out


def write_dictionary(folder: Path, name: str, n: int, ev: Evaluation, *,
                     texts: dict[int, tuple[Any, ...]], pieces: np.ndarray,
                     index: dict[str, list[Entry]]) -> dict[str, Any]:
    """One dictionary's shards; its tokens added to `index`; returns its entry of index.js."""
    top, fx = ev.tops[name], ev.token_effects.get(name)
    d = f"d{n}"
    (folder / d).mkdir(parents=True)
    latents, size = top.fired.numel(), 0
    fired, hist = top.fired.tolist(), top.histogram.tolist()
    keys = {r: token_key(t[2]) for r, t in texts.items()}
    for k in range(0, latents, SHARD):
        hi = min(k + SHARD, latents)
        rows, values = top.rows[k:hi].tolist(), _rounded(top.values[k:hi])
        sample = (top.sample_rows[k:hi].tolist(), _rounded(top.sample_values[k:hi])) \
            if top.sample_rows is not None and top.sample_values is not None else None
        records = []
        for j, effects in enumerate(_effects(fx, k, hi, pieces)):
            i = k + j
            rec: dict[str, Any] = {"f": fired[i]} | effects
            if fired[i]:
                rec |= {"h": hist[i], "top": _examples(rows[j], values[j], texts)}
                if sample is not None:
                    rec["q"] = _examples(sample[0][j], sample[1][j], texts)
                counts = Counter(keys[r] for r in rows[j] if r in keys)
                for tok, c in counts.items():
                    index[tok].append([d, i, c, "a"])
            for tok in effects.get("up", [[]])[0]:
                index[token_key(tok)].append([d, i, 0, "p"])
            records.append(rec)
        size += _call(folder / d / f"{k // SHARD}.js", "shard", d, k // SHARD, records)
    return {"dir": d, "kind": "dictionary", "latents": latents, "tokens": top.tokens,
            "fired_on_slice": sum(f > 0 for f in fired), "shards": -(-latents // SHARD),
            "effects": fx is not None, "bytes": size}


def write_browser(ev: Evaluation, store: Any, cfg: EvalConfig, out: Path, decode: Decode
                  ) -> dict[str, Any]:
    """Write out/latents/ (the module's docstring); returns what index.js holds."""
    folder = out / "latents"
    shutil.rmtree(folder, ignore_errors=True)  # an older report's shards, or interpret's
    folder.mkdir(parents=True)
    texts = _texts(ev, store, decode, cfg.window)
    pieces = _pieces(ev, decode)
    index: dict[str, list[Entry]] = defaultdict(list)
    methods = {name: write_dictionary(folder, name, n, ev, texts=texts, pieces=pieces,
                                      index=index)
               for n, name in enumerate(ev.tops)}
    entries = sum(len(v) for v in index.values())
    buckets = max(1, min(4096, -(-entries // _PER_BUCKET)))
    parts: list[dict[str, list[Entry]]] = [{} for _ in range(buckets)]
    for tok, found in index.items():
        # fired on most first, then the promoters
        found.sort(key=lambda e: (e[3] != "a", -e[2], e[0], e[1]))
        parts[bucket(tok, buckets)][tok] = found
    (folder / "tokens").mkdir()
    token_bytes = sum(_call(folder / "tokens" / f"{b}.js", "tokens", b, part)
                      for b, part in enumerate(parts))
    meta = {"shard": SHARD, "buckets": buckets, "edges": HIST_EDGES.tolist(),
            "methods": methods, "logit_lens": ev.meta.get("logit_lens", ""),
            "quantiles": cfg.quantiles, "window": cfg.window, "token_bytes": token_bytes}
    _call(folder / "index.js", "index", meta)
    return meta
