"""What each method's latents do on the held-out slice that `actstore eval` scored.

    eval.json (settings) + run/dictionaries ──▶ the same store, partition and held-out rows
    held-out rows ──sorted by (context, position)──▶ windows of `window` tokens, each inside
                                                   one context (`Windows`)
    each dictionary: its sparse codes                 ─┐
    each baseline (refitted as eval fitted it, seeded): ├─▶ per latent, the held-out contexts
      codes cut to each token's k largest in magnitude, │   it fires in ─▶ a seeded sample of
      a direction active where its kept code is > 0    ─┘   those firing in enough of them
                                                         ─▶ (rows, sampled) activations
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
import safetensors.torch
import torch

from actstore.loader import holdout
from actstore.model.device import resolve_device
from actstore.store.activation_store import ActivationStore
from trainer.evaluation.baselines import Basis
from trainer.evaluation.config import EvalConfig, Member
from trainer.evaluation.run import fit_baselines, load_run, open_slice
from trainer.interpret.config import InterpretConfig

#: Rows encoded at once.
_BATCH = 4096


@dataclass(frozen=True)
class Windows:
    """The held-out rows in (context, position) order, cut into windows of consecutive
    tokens that never cross a context."""

    tokens: np.ndarray
    """(rows,) token ids."""
    starts: np.ndarray
    """(windows + 1,) row offsets: window w is rows starts[w]:starts[w + 1]."""
    context: np.ndarray
    """(windows,) context_id of each window."""
    store_rows: np.ndarray
    """(rows,) store row of each row."""
    position: np.ndarray
    """(rows,) position of each row in its context."""

    def rows(self, w: int) -> slice:
        return slice(int(self.starts[w]), int(self.starts[w + 1]))

    def __len__(self) -> int:
        return len(self.starts) - 1


@dataclass(frozen=True)
class Method:
    """One dictionary or baseline: the latents sampled and their activations."""

    name: str
    kind: str
    """"dictionary" or "baseline"."""
    latents: list[int]
    """Sampled latent ids (sorted)."""
    total: int
    """Latents the method has."""
    eligible: int
    """Latents firing in enough held-out contexts to be explained and scored."""
    acts: np.ndarray
    """(rows, len(latents)) float32 activations, rows in `Windows` order."""


@dataclass(frozen=True)
class Corpus:
    windows: Windows
    methods: list[Method]
    store: ActivationStore
    meta: dict[str, Any]
    """Store, hook, rows, baseline k, eval report read."""


def eval_settings(cfg: InterpretConfig) -> tuple[dict[str, Any], EvalConfig]:
    """eval.json of the report, and the EvalConfig it was made with (so the slice and the
    baselines are the ones eval scored)."""
    path = Path(cfg.report_dir) / "eval.json"
    if not path.is_file():
        raise FileNotFoundError(f"no eval report at {cfg.report_dir} ({path} is missing): run "
                                f"`actstore eval --run {cfg.run} --out {cfg.report_dir}` first, "
                                "or pass --report")
    summary = json.loads(path.read_text())
    names = {f.name for f in dataclasses.fields(EvalConfig)} - {"run", "out"}
    settings: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                for k, v in summary["meta"].get("settings", {}).items() if k in names}
    return summary, EvalConfig(run=cfg.run, out=cfg.report_dir, **settings)


def cut_windows(context: np.ndarray, position: np.ndarray, tokens: np.ndarray,
                store_rows: np.ndarray, window: int) -> tuple[Windows, np.ndarray]:
    """Windows of the rows, and the order that sorts the rows as read into window order."""
    order = np.lexsort((position, context))
    ctx = context[order]
    new_ctx = np.r_[True, ctx[1:] != ctx[:-1]]
    group_start = np.maximum.accumulate(np.where(new_ctx, np.arange(len(ctx)), 0))
    rank = np.arange(len(ctx)) - group_start
    first = np.flatnonzero(new_ctx | (rank % window == 0))
    starts = np.r_[first, len(ctx)]
    return Windows(tokens[order], starts, ctx[first], store_rows[order], position[order]), order


def dictionary_codes(member: Member, x: torch.Tensor, device: torch.device
                     ) -> Iterator[tuple[torch.Tensor, ...]]:
    """(rows, cols, values) of a dictionary's non-zero codes, batch by batch."""
    sae = member.sae.to(device)
    with torch.no_grad():
        for lo in range(0, len(x), _BATCH):
            _, sel = sae.infer(member.norm.apply(x[lo:lo + _BATCH].to(device)))
            yield sel.rows.cpu() + lo, sel.cols.cpu(), sel.values.float().cpu()


def basis_codes(basis: Basis, x: torch.Tensor, k: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """(rows, cols, values) of a baseline's positive codes among each row's k largest in
    magnitude (its top-k code, as eval cuts it, read as one feature per direction)."""
    for lo in range(0, len(x), _BATCH):
        codes = (x[lo:lo + _BATCH].float() - basis.mean) @ basis.encoder
        top = torch.topk(codes.abs(), min(k, codes.shape[1]), dim=1)
        values = codes.gather(1, top.indices)
        keep = values > 0
        rows = torch.arange(len(codes)).unsqueeze(1).expand_as(values)
        yield rows[keep] + lo, top.indices[keep], values[keep]


def sample_method(name: str, kind: str, total: int,
                  parts: Iterator[tuple[torch.Tensor, ...]], *, windows: Windows,
                  row_context: np.ndarray, cfg: InterpretConfig) -> Method:
    """Latents firing in at least explain_examples + quantiles held-out contexts, a seeded
    sample of them, and their activations."""
    triples = [tuple(t.numpy() for t in p) for p in parts]
    rows = np.concatenate([t[0] for t in triples]) if triples else np.zeros(0, np.int64)
    cols = np.concatenate([t[1] for t in triples]) if triples else np.zeros(0, np.int64)
    vals = np.concatenate([t[2] for t in triples]) if triples else np.zeros(0, np.float32)
    pairs = np.unique(row_context[rows].astype(np.int64) * total + cols)
    contexts = np.bincount(pairs % total, minlength=total)
    eligible = np.flatnonzero(contexts >= cfg.explain_examples + cfg.quantiles)
    rng = np.random.default_rng([cfg.seed, zlib.crc32(name.encode())])
    chosen = np.sort(rng.choice(eligible, min(cfg.latents, len(eligible)), replace=False))
    acts = np.zeros((len(windows.tokens), len(chosen)), np.float32)
    slot = np.full(total, -1)
    slot[chosen] = np.arange(len(chosen))
    keep = slot[cols] >= 0
    acts[rows[keep], slot[cols[keep]]] = vals[keep]
    return Method(name, kind, chosen.tolist(), total, len(eligible), acts)


def fitted_baselines(fit: EvalConfig, store: ActivationStore, hook: str,
                     part: holdout.Partition, device: torch.device, *, cache: Path
                     ) -> list[Basis]:
    """eval's baselines, refitted as eval fitted them (same rows, same seed) the first time
    and kept in `cache` (FastICA takes a minute on a CPU), keyed by the store and settings."""
    what = {"store": store.key, "hook": hook, "train": list(part.train),
            "settings": {k: v for k, v in vars(fit).items() if k not in ("run", "out")}}
    key = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]
    path = cache / f"baselines-{key}.safetensors"
    if path.exists():
        tensors = safetensors.torch.load_file(str(path))
        names = sorted({k.split(".")[0] for k in tensors})
        return [Basis(n, tensors[f"{n}.encoder"], tensors[f"{n}.decoder"], tensors[f"{n}.mean"])
                for n in names]
    bases = fit_baselines(fit, store, hook, part, device)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    safetensors.torch.save_file({f"{b.name}.{part_}": getattr(b, part_).contiguous().clone()
                                 for b in bases for part_ in ("encoder", "decoder", "mean")},
                                str(tmp))
    os.replace(tmp, path)
    return bases


def load_corpus(cfg: InterpretConfig) -> Corpus:
    """The held-out windows and every method's sampled latents (see the module's docstring),
    kept in OUT/cache/corpus-<key>.safetensors: a rerun reads them instead of the store's slice and
    every method's codes (the key is everything they depend on)."""
    summary, ecfg = eval_settings(cfg)
    members = load_run(cfg.run)
    if any(m.sae.cfg.kind != "sae" for m in members):
        raise ValueError(f"{cfg.run} holds {members[0].sae.cfg.kind}s: interpret explains the "
                         "latents of SAEs (a run of actstore train --kind sae)")
    store, part, held_out = open_slice(ecfg, members[0])
    path = Path(cfg.out) / "cache" / f"corpus-{corpus_key(cfg, ecfg, store, part)}.safetensors"
    if path.exists():
        corpus = read_corpus(path, store)
        return dataclasses.replace(corpus, meta=corpus.meta | {"report": cfg.report_dir})
    corpus = build_corpus(cfg, summary, ecfg, members, (store, part, held_out))
    save_corpus(corpus, path)
    return corpus


#: The settings of `InterpretConfig` the corpus depends on.
_CORPUS_FIELDS = ("window", "latents", "baselines", "baseline_k", "explain_examples",
                  "quantiles", "seed")


def corpus_key(cfg: InterpretConfig, ecfg: EvalConfig, store: ActivationStore,
               part: holdout.Partition) -> str:
    """A hash of what the corpus is made from: the store, its partition, eval's settings,
    interpret's, and the bytes of every dictionary's files."""
    h = hashlib.sha256(json.dumps({
        "store": store.key, "train": list(part.train), "held_out": list(part.held_out),
        "eval": {k: v for k, v in vars(ecfg).items() if k not in ("run", "out")},
        "interpret": {k: getattr(cfg, k) for k in _CORPUS_FIELDS}},
        sort_keys=True, default=str).encode())
    for folder in sorted((Path(cfg.run) / "dictionaries").glob("*/cfg.json")):
        for f in sorted(folder.parent.iterdir()):
            if f.is_file():
                h.update(f"{folder.parent.name}/{f.name}".encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


def save_corpus(corpus: Corpus, path: Path) -> None:
    w = corpus.windows
    arrays = {"tokens": w.tokens, "starts": w.starts, "context": w.context,
              "store_rows": w.store_rows, "position": w.position}
    methods = []
    for i, m in enumerate(corpus.methods):
        arrays[f"acts{i}"] = m.acts
        methods.append({"name": m.name, "kind": m.kind, "latents": m.latents,
                        "total": m.total, "eligible": m.eligible})
    arrays["json"] = np.frombuffer(json.dumps({"methods": methods, "meta": corpus.meta}
                                              ).encode(), np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()},
                                str(tmp))
    os.replace(tmp, path)


def read_corpus(path: Path, store: ActivationStore) -> Corpus:
    data = safetensors.numpy.load_file(str(path))
    info = json.loads(data["json"].tobytes())
    windows = Windows(data["tokens"], data["starts"], data["context"], data["store_rows"],
                      data["position"])
    methods = [Method(m["name"], m["kind"], m["latents"], m["total"], m["eligible"],
                      data[f"acts{i}"]) for i, m in enumerate(info["methods"])]
    return Corpus(windows, methods, store, info["meta"])


def build_corpus(cfg: InterpretConfig, summary: dict[str, Any], ecfg: EvalConfig,
                 members: list[Member],
                 opened: tuple[ActivationStore, holdout.Partition, bool]) -> Corpus:
    """The corpus, from the store's held-out slice and every method's codes."""
    store, part, held_out = opened
    hook = members[0].source["hook"]
    held = list(holdout.held_out_batches(store, hook, part, ecfg.rows, _BATCH))
    if not held:
        raise ValueError(f"the held-out slice of {store.url} has no row of a whole context")
    x = torch.cat([h.x for h in held])
    store_rows = torch.cat([h.rows for h in held]).numpy()
    lo = int(store_rows.min())
    index = store.read_index(lo, int(store_rows.max()) + 1)
    windows, order = cut_windows(index.context[store_rows - lo], index.position[store_rows - lo],
                                 index.token[store_rows - lo], store_rows, cfg.window)
    x = x[torch.from_numpy(order)]
    row_context = np.repeat(np.arange(len(windows)), np.diff(windows.starts))
    _, row_context = np.unique(windows.context[row_context], return_inverse=True)
    device = torch.device(resolve_device(ecfg.device))

    def sample(name: str, kind: str, total: int, parts: Iterator[tuple[torch.Tensor, ...]]
               ) -> Method:
        return sample_method(name, kind, total, parts, windows=windows,
                             row_context=row_context, cfg=cfg)

    methods = [sample(m.name, "dictionary", m.sae.cfg.latents, dictionary_codes(m, x, device))
               for m in members]
    k = cfg.baseline_k or max(1, round(float(np.median(
        [summary["dictionaries"][m.name]["l0"] for m in members]))))
    meta = {"store": store.url, "hook": hook, "rows": len(x), "windows": len(windows),
            "held_out": held_out, "baseline_k": k, "report": cfg.report_dir, "skipped": {}}
    wanted = cfg.chosen_baselines
    if wanted:
        fit = dataclasses.replace(ecfg, ica=ecfg.ica if "ica" in wanted else "none")
        bases = {b.name: b for b in fitted_baselines(fit, store, hook, part, device,
                                                     cache=Path(cfg.out) / "cache")}
        for name in wanted:
            if name not in bases:
                meta["skipped"][name] = "eval ran with --ica none, so no ICA was fitted"
                continue
            b = bases[name].to(torch.device("cpu"))
            methods.append(sample(name, "baseline", b.encoder.shape[1], basis_codes(b, x, k)))
    return Corpus(windows, methods, store, meta)


def page_stats(method: Method) -> list[dict[str, Any]]:
    """Each sampled latent's firing and histogram over the held-out rows, as eval's latent
    pages show them (log10 activation bins of `HIST_EDGES`), all columns at once."""
    from trainer.evaluation.examples import HIST_EDGES

    a = torch.from_numpy(method.acts)
    rows, n, nb = a.shape[0], a.shape[1], len(HIST_EDGES) - 1
    live = a > 0
    cols = live.nonzero()[:, 1]  # row-major, as a[live] is
    bins = torch.bucketize(a[live].clamp_min(1e-30).log10(), HIST_EDGES[1:-1])
    hist = torch.bincount(cols * nb + bins, minlength=n * nb).reshape(n, nb).tolist()
    fired = live.sum(0).tolist()
    return [{"fired": f, "density": f / max(rows, 1), "histogram": h}
            for f, h in zip(fired, hist, strict=True)]
