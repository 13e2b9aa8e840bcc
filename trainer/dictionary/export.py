"""Trained dictionaries on disk, loadable without the trainer.

Our format, one directory per dictionary:
    cfg.json            {"format": "actstore-dictionary", "version": 1, "dictionary": {...
                         DictionaryConfig}, "normalize": {...}, "source": {store, hook, model...}}
    model.safetensors   W_enc (d, n), W_dec (n, d), b_enc (n,), b_dec (d,), [log_threshold (n,)]
                        [threshold ()], [norm_mean (d,)] -- weights act on *normalised* inputs
                        x' = (x - norm_mean) * norm_scale; norm_scale is in cfg.json.

SAELens' on-disk format (`saelens/`: cfg.json + sae_weights.safetensors) acts on raw
activations, the normalisation folded in (as SAELens' fold_activation_norm_scaling_factor does,
plus the mean when centering):
    W_enc' = s W_enc     W_dec' = W_dec / s     b_dec' = b_dec / s + mean     b_enc' = b_enc
so (x - b_dec') W_enc' + b_enc' equals the pre-activations of x'. Architectures map as
relu -> standard, topk -> topk (k), jumprelu -> jumprelu (threshold = exp(log_threshold)),
batchtopk and matryoshka -> jumprelu with every threshold equal to the learned batch threshold
(as SAELens saves its own BatchTopK and Matryoshka BatchTopK SAEs).

EleutherAI sparsify's format (`sparsify/`: cfg.json + sae.safetensors, loaded by
`sparsify.SparseCoder.load_from_disk`), for TopK only (sparsify has no other activation that
ours map to): the same folded weights as encoder.weight = W_enc'ᵀ, encoder.bias, W_dec', b_dec'.

A transcoder normalises its input x' = (x - m) s and its target y' = (y - m_t) s_t with each
hook's own statistics (the target's in cfg.json's `normalize_target`, its mean as
`target_norm_mean`); folded onto raw activations (no pre-encoder bias: b_dec is the target's):
    W_enc' = s W_enc     b_enc' = b_enc - s m W_enc     W_dec' = W_dec / s_t
    W_skip' = (s / s_t) W_skip      b_dec' = b_dec / s_t + m_t - m W_skip'
SAELens 6 loads relu transcoders as `transcoder` / `skip_transcoder` and jumprelu (and
batchtopk, at its learned threshold) as `jumprelu_transcoder` / `jumprelu_skip_transcoder`,
W_skip stored (d_out, d_in) as it keeps it; it has no TopK transcoder. sparsify loads TopK
transcoders whose input and target have the same width (`transcode`, `skip_connection`).

A crosscoder (`save_crosscoder`, `load_crosscoder`) is an SAE over its sites side by side, in
the same two files: W_enc (Σd, n), W_dec (n, Σd), b_dec (Σd,) with site l's block at columns
[d_1 + … + d_{l-1}, + d_l) (`dictionary.sites` lists the widths), [norm_mean (Σd,)] the sites'
means side by side; `normalize.scale` is a list, one scale per site, and `source.hook` the
sites' hooks (`source.store` a list when the sites come from two stores). SAELens and sparsify
have no crosscoder format (SAELens' is an open pull request), so nothing is exported for them.

circuit-tracer's per-layer transcoder set (`export_circuit_tracer`: one directory, loaded by
`circuit_tracer.utils.caching.load_transcoders_from_cache(dir.name, cache_dir=dir.parent)`, or
`load_transcoder_set({i: dir/layer_i.safetensors}, ...)` given the hooks) is the layout
circuit-tracer writes itself (`TranscoderSet.to_safetensors` + its cache's config.yaml):
    config.yaml             model_kind: transcoder_set, feature_input_hook, feature_output_hook
                            (TransformerLens names inside a block, read at blocks.{i}.<hook>,
                            e.g. ln2.hook_normalized -> hook_mlp_out), scan, model_name
                            (written as JSON, which YAML reads)
    layer_{i}.safetensors   W_enc (n, d) -- circuit-tracer's F.linear layout, our W_enc'ᵀ --,
                            b_enc (n,), W_dec (n, d), b_dec (d,), [W_skip (d, d): it adds
                            x @ W_skipᵀ, our W_skip'ᵀ], [activation_function.threshold (n,)]
the folded raw-activation weights above, one file per layer 0..L-1 (circuit-tracer needs every
layer from 0 and one latent count across them). Its loader builds relu (no threshold) or JumpReLU
x * (x > threshold) transcoders whose input and output have the same width: relu, jumprelu
(exp(log_threshold)) and batchtopk (its learned threshold) export; TopK does not (circuit-tracer
has the activation but no loader for it).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from actstore.loader.delivery import Normalizer
from actstore.store.location import Location
from trainer.dictionary.dictionaries import DictionaryConfig, SparseDictionary

FORMAT = "actstore-dictionary"
SAELENS_ARCH = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu",
                "batchtopk": "jumprelu", "matryoshka": "jumprelu"}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically and durably, as the store publishes its objects."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    Location.from_url(str(path.parent)).put(path.name, text.encode())


def _contiguous(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu().contiguous() for k, v in t.items()}


def save_dictionary(path: str | Path, sae: SparseDictionary, norm: Normalizer,
                    source: dict[str, Any], target_norm: Normalizer | None = None) -> Path:
    """Write `path/cfg.json` and `path/model.safetensors`; returns the directory.
    `target_norm`: a transcoder's target normaliser (its input's is `norm`)."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v for k, v in sae.state_dict().items() if k != "tokens_since_fired"}
    if norm.mean is not None:
        tensors["norm_mean"] = norm.mean
    meta: dict[str, Any] = {
        "format": FORMAT, "version": 1, "dictionary": dataclasses.asdict(sae.cfg),
        "normalize": {"scale": norm.scale, "center": norm.mean is not None}, "source": source}
    if sae.cfg.kind == "transcoder":
        if target_norm is None:
            raise ValueError("a transcoder is saved with its target's normaliser")
        meta["normalize_target"] = {"scale": target_norm.scale,
                                    "center": target_norm.mean is not None}
        if target_norm.mean is not None:
            tensors["target_norm_mean"] = target_norm.mean
    save_file(_contiguous(tensors), out / "model.safetensors")
    _write_json(out / "cfg.json", meta)
    return out


def save_crosscoder(path: str | Path, cc: SparseDictionary, norms: list[Normalizer],
                    source: dict[str, Any]) -> Path:
    """Write a crosscoder's `path/cfg.json` and `path/model.safetensors` (`norms`: one per
    site, in the order of its blocks)."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v for k, v in cc.state_dict().items() if k != "tokens_since_fired"}
    center = norms[0].mean is not None
    if center:
        tensors["norm_mean"] = torch.cat([n.mean for n in norms if n.mean is not None])
    save_file(_contiguous(tensors), out / "model.safetensors")
    _write_json(out / "cfg.json", {
        "format": FORMAT, "version": 1, "dictionary": dataclasses.asdict(cc.cfg),
        "normalize": {"scale": [n.scale for n in norms], "center": center}, "source": source})
    return out


def load_crosscoder(path: str | Path
                    ) -> tuple[SparseDictionary, list[Normalizer], dict[str, Any]]:
    """A saved crosscoder, its per-site normalisers and its cfg.json."""
    path = Path(path)
    cfg = json.loads((path / "cfg.json").read_text())
    if cfg.get("format") != FORMAT or cfg["dictionary"].get("kind") != "crosscoder":
        raise ValueError(f"{path} is not an actstore crosscoder")
    tensors = load_file(path / "model.safetensors")
    mean = tensors.pop("norm_mean", None)
    cc = SparseDictionary(DictionaryConfig.from_saved(cfg["dictionary"]))
    state = cc.state_dict()
    state.update(tensors)
    cc.load_state_dict(state)
    starts = list(itertools.accumulate(cc.cfg.sites, initial=0))
    norms = [Normalizer(None if mean is None else mean[a:b], float(s))
             for a, b, s in zip(starts[:-1], starts[1:], cfg["normalize"]["scale"],
                                strict=True)]
    return cc, norms, cfg


def load_dictionary(path: str | Path) -> tuple[SparseDictionary, Normalizer, dict[str, Any]]:
    """A saved dictionary, its input normaliser and its cfg.json (a transcoder's target
    normaliser: `target_normalizer`)."""
    sae, norm, _, cfg = load_with_target(path)
    return sae, norm, cfg


def target_normalizer(path: str | Path) -> Normalizer:
    """How a saved dictionary's target was normalised (an SAE's target is its input)."""
    _, norm, target, _ = load_with_target(path)
    return target or norm


def load_with_target(path: str | Path
                     ) -> tuple[SparseDictionary, Normalizer, Normalizer | None, dict[str, Any]]:
    """A saved dictionary, its input normaliser, a transcoder's target normaliser (None for an
    SAE) and its cfg.json, from one read of its files."""
    path = Path(path)
    cfg = json.loads((path / "cfg.json").read_text())
    if cfg.get("format") != FORMAT:
        raise ValueError(f"{path} is not an actstore dictionary (format {cfg.get('format')!r})")
    if cfg["dictionary"].get("kind") == "crosscoder":
        raise ValueError(f"{path} is a crosscoder: load it with load_crosscoder")
    tensors = load_file(path / "model.safetensors")
    mean = tensors.pop("norm_mean", None)
    target_mean = tensors.pop("target_norm_mean", None)
    sae = SparseDictionary(DictionaryConfig.from_saved(cfg["dictionary"]))
    state = sae.state_dict()
    state.update(tensors)
    sae.load_state_dict(state)
    target = cfg.get("normalize_target")
    return (sae, Normalizer(mean, float(cfg["normalize"]["scale"])),
            Normalizer(target_mean, float(target["scale"])) if target else None, cfg)


def export_saelens(path: str | Path, sae: SparseDictionary, norm: Normalizer,
                   source: dict[str, Any], target_norm: Normalizer | None = None) -> Path:
    """SAELens' `cfg.json` + `sae_weights.safetensors`, acting on raw activations."""
    if sae.cfg.kind == "transcoder" and sae.cfg.arch == "topk":
        raise ValueError("SAELens has no TopK transcoder: export it to sparsify or ours")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    weights = folded(sae, norm, target_norm)
    if "W_skip" in weights:
        weights["W_skip"] = weights["W_skip"].T  # SAELens keeps it (d_out, d_in)
    arch = sae.cfg.arch
    if arch == "jumprelu":
        weights["threshold"] = sae.log_threshold.exp()
    elif arch in ("batchtopk", "matryoshka"):
        weights["threshold"] = sae.threshold.expand(sae.cfg.latents)
    save_file(_contiguous(weights), out / "sae_weights.safetensors")
    _write_json(out / "cfg.json", saelens_config(sae.cfg, source))
    return out


def folded(sae: SparseDictionary, norm: Normalizer,
           target_norm: Normalizer | None = None) -> dict[str, torch.Tensor]:
    """W_enc, W_dec, b_enc, b_dec (and W_skip) acting on raw activations (the module
    docstring's folds)."""
    s = norm.scale
    mean = (norm.mean if norm.mean is not None
            else torch.zeros(sae.cfg.d_model)).to(sae.b_dec.device)
    if sae.cfg.kind == "sae":
        return {"W_enc": sae.W_enc * s, "W_dec": sae.W_dec / s,
                "b_enc": sae.b_enc, "b_dec": sae.b_dec / s + mean}
    if target_norm is None:
        raise ValueError("a transcoder folds with its target's normaliser too")
    t = target_norm.scale
    t_mean = (target_norm.mean if target_norm.mean is not None
              else torch.zeros(sae.cfg.out_width)).to(sae.b_dec.device)
    out = {"W_enc": sae.W_enc * s, "b_enc": sae.b_enc - s * (mean @ sae.W_enc),
           "W_dec": sae.W_dec / t, "b_dec": sae.b_dec / t + t_mean}
    if sae.cfg.skip:
        out["W_skip"] = sae.W_skip * (s / t)
        out["b_dec"] = out["b_dec"] - mean @ out["W_skip"]
    return out


def export_sparsify(path: str | Path, sae: SparseDictionary, norm: Normalizer,
                    target_norm: Normalizer | None = None) -> Path:
    """sparsify's `cfg.json` + `sae.safetensors` for a TopK dictionary or transcoder, on raw
    activations."""
    if sae.cfg.arch != "topk":
        raise ValueError(f"sparsify has no {sae.cfg.arch} coder: only topk exports to it")
    if sae.cfg.out_width != sae.cfg.d_model:
        raise ValueError("sparsify's transcoders predict a target as wide as their input: "
                         f"{sae.cfg.d_model} -> {sae.cfg.out_width} does not export to it")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    w = folded(sae, norm, target_norm)
    tensors = {"encoder.weight": w["W_enc"].T, "encoder.bias": w["b_enc"], "W_dec": w["W_dec"],
               "b_dec": w["b_dec"]}
    if "W_skip" in w:
        tensors["W_skip"] = w["W_skip"].T  # sparsify adds x @ W_skip.mT
    save_file(_contiguous(tensors), out / "sae.safetensors")
    _write_json(out / "cfg.json", {
        "activation": "topk", "expansion_factor": max(1, sae.cfg.latents // sae.cfg.d_model),
        "num_latents": sae.cfg.latents, "k": sae.cfg.k, "d_in": sae.cfg.d_model,
        # rows are not unit norm once the input scale is folded in; the flag only steers
        # sparsify's training, never a load
        "normalize_decoder": False, "multi_topk": False, "skip_connection": sae.cfg.skip,
        "transcode": sae.cfg.kind == "transcoder"})
    return out


#: The SAELens release whose `save_model` output `saelens_config` reproduces (its loader reads
#: `metadata.sae_lens_version` to pick the format; tested by loading with that release).
SAELENS_FORMAT_VERSION = "6.54.12"


def saelens_config(cfg: DictionaryConfig, source: dict[str, Any]) -> dict[str, Any]:
    """The cfg.json SAELens 6's `SAE.save_model` writes for this architecture: the config
    dataclass's fields, `architecture`, and `metadata` (where SAELens 6 reads the model, hook
    and version from)."""
    arch = SAELENS_ARCH[cfg.arch]
    if cfg.kind == "transcoder":
        arch = ("jumprelu_" if arch == "jumprelu" else "") + (
            "skip_transcoder" if cfg.skip else "transcoder")
    metadata: dict[str, Any] = {
        "sae_lens_version": SAELENS_FORMAT_VERSION, "sae_lens_training_version": None,
        "model_name": source.get("model"), "hook_name": source.get("hook"),
        "context_size": source.get("context_length"),
        "prepend_bos": source.get("bos_policy") != "none",
        "dataset_path": source.get("dataset"), "trained_with": "actstore",
        "training_architecture": cfg.arch}
    out: dict[str, Any] = {
        "architecture": arch, "d_in": cfg.d_model, "d_sae": cfg.latents, "dtype": "float32",
        "device": "cpu", "apply_b_dec_to_input": True, "normalize_activations": "none",
        "reshape_activations": "none", "metadata": metadata}
    if cfg.kind == "transcoder":  # SAELens reads no pre-encoder bias for them
        out.update(apply_b_dec_to_input=False, d_out=cfg.out_width)
        metadata["hook_name_out"] = source.get("target_hook")
    if arch == "topk":
        out["k"] = cfg.k
        out["rescale_acts_by_decoder_norm"] = False  # decoder rows are not unit norm after folding
    return out


#: What circuit-tracer's loader (`load_relu_transcoder`) builds: F.relu, or JumpReLU given a
#: threshold; batchtopk is a JumpReLU at its learned threshold.
CIRCUIT_TRACER_ARCHS = ("relu", "jumprelu", "batchtopk", "matryoshka")


def export_circuit_tracer(path: str | Path,
                          layers: dict[int, tuple[SparseDictionary, Normalizer, Normalizer]],
                          *, feature_input_hook: str, feature_output_hook: str,
                          model_name: str | None = None, scan: str | None = None) -> Path:
    """circuit-tracer's transcoder set: `config.yaml` + `layer_{i}.safetensors` for layers
    0..L-1, each (transcoder, input normaliser, target normaliser), on raw activations. The
    hooks are circuit-tracer's (TransformerLens names within a block, as `hook_mlp_out`)."""
    if sorted(layers) != list(range(len(layers))) or not layers:
        raise ValueError("circuit-tracer needs a transcoder for every layer from 0, got "
                         f"layers {sorted(layers)}")
    first = layers[0][0].cfg
    for i, (tc, _, _) in sorted(layers.items()):
        cfg = tc.cfg
        if cfg.kind != "transcoder":
            raise ValueError(f"layer {i} is an SAE: circuit-tracer loads transcoders")
        if cfg.arch not in CIRCUIT_TRACER_ARCHS:
            raise ValueError(f"circuit-tracer loads relu, jumprelu and batchtopk transcoders, "
                             f"not {cfg.arch} (layer {i})")
        if cfg.out_width != cfg.d_model:
            raise ValueError(f"circuit-tracer's transcoders predict a target as wide as their "
                             f"input: layer {i} is {cfg.d_model} -> {cfg.out_width}")
        if (cfg.latents, cfg.skip) != (first.latents, first.skip):
            raise ValueError("circuit-tracer's layers share one latent count and skip: layer "
                             f"{i} has {cfg.latents} latents, skip {cfg.skip}; layer 0 "
                             f"{first.latents}, skip {first.skip}")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    for i, (tc, norm, target_norm) in sorted(layers.items()):
        w = folded(tc, norm, target_norm)
        tensors = {"W_enc": w["W_enc"].T, "b_enc": w["b_enc"], "W_dec": w["W_dec"],
                   "b_dec": w["b_dec"]}
        if "W_skip" in w:
            tensors["W_skip"] = w["W_skip"].T  # circuit-tracer adds x @ W_skip.T
        if tc.cfg.arch == "jumprelu":
            tensors["activation_function.threshold"] = tc.log_threshold.exp()
        elif tc.cfg.arch in ("batchtopk", "matryoshka"):
            tensors["activation_function.threshold"] = tc.threshold.expand(tc.cfg.latents)
        save_file(_contiguous(tensors), out / f"layer_{i}.safetensors")
    config = {"model_kind": "transcoder_set", "feature_input_hook": feature_input_hook,
              "feature_output_hook": feature_output_hook, "scan": scan or out.name,
              "model_name": model_name}
    _write_json(out / "config.yaml", config)  # JSON is YAML: circuit-tracer's yaml.safe_load
    return out
