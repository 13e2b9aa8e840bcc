"""A cross-layer transcoder on disk: ours, and circuit-tracer's CLT files.

Ours (`save_clt`, read back by `load_clt`), one directory, readable without our code:
    cfg.json            {"format": "actstore-dictionary", "version": 1, "dictionary": {...
                         DictionaryConfig, kind "clt", layers L}, "normalize": {"scale": [s_0 …
                         s_{L-1}], "center": bool}, "normalize_target": {same, per target},
                         "source": {store, hook: [IN_0 …], target_hook: [OUT_0 …], model …}}
    model.safetensors   per layer l = 0 … L-1:
                           W_enc_{l} (d_in, n)  b_enc_{l} (n,)  W_dec_{l} (n, L - l, d_out)
                           [log_threshold_{l} (n,), jumprelu]
                        b_dec (L, d_out), [threshold (L,), batchtopk's per layer]
                        [norm_mean (L, d_in)], [target_norm_mean (L, d_out)]
The weights act on normalised activations, x_l' = (x_l - norm_mean[l]) * s_l, and predict
normalised targets y_j' = (y_j - target_norm_mean[j]) * t_j:
    z_l = act(x_l' @ W_enc_{l} + b_enc_{l})
    y_j' = Σ_{l ≤ j} z_l @ W_dec_{l}[:, j - l] + b_dec[j]

circuit-tracer's CLT (`export_circuit_tracer_clt`, loaded by circuit-tracer's `load_clt(dir)` or
`load_transcoders_from_cache(dir.name, cache_dir=dir.parent)`), the files its
`CrossLayerTranscoder.to_safetensors` writes, with the normalisation folded in (raw
activations in and out, as the transcoder export's folds, layer by layer):
    config.yaml              model_kind: cross_layer_transcoder, feature_input_hook,
                             feature_output_hook, scan, model_name (JSON, which YAML reads)
    W_enc_{l}.safetensors    W_enc_{l} (n, d) -- F.linear's layout --, b_enc_{l} (n,),
                             b_dec_{l} (d,), [threshold_{l} (n,)]
    W_dec_{l}.safetensors    W_dec_{l} (n, L - l, d)
circuit-tracer builds relu or JumpReLU CLTs whose inputs and targets share one width: relu,
jumprelu (exp(log_threshold)) and batchtopk (each layer's learned threshold) export; TopK does
not.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from actstore.loader.delivery import Normalizer
from trainer.dictionary.clt import CrossLayerTranscoder
from trainer.dictionary.dictionaries import DictionaryConfig
from trainer.dictionary.export import CIRCUIT_TRACER_ARCHS, FORMAT, _contiguous, _write_json

__all__ = ["export_circuit_tracer_clt", "folded_clt", "load_clt", "save_clt"]


def _norm_meta(norms: list[Normalizer]) -> dict[str, Any]:
    return {"scale": [n.scale for n in norms], "center": norms[0].mean is not None}


def _means(norms: list[Normalizer], width: int) -> torch.Tensor:
    return torch.stack([n.mean if n.mean is not None else torch.zeros(width) for n in norms])


def save_clt(path: str | Path, clt: CrossLayerTranscoder, norms: list[Normalizer],
             target_norms: list[Normalizer], source: dict[str, Any]) -> Path:
    """Write `path/cfg.json` and `path/model.safetensors` (the module docstring's layout)."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    cfg, layers = clt.cfg, clt.layers
    tensors: dict[str, torch.Tensor] = {"b_dec": clt.b_dec}
    for i in range(layers):
        tensors[f"W_enc_{i}"] = clt.W_encs[i]
        tensors[f"b_enc_{i}"] = clt.b_encs[i]
        tensors[f"W_dec_{i}"] = clt.W_decs[i].view(cfg.latents, layers - i, cfg.out_width)
        if cfg.arch == "jumprelu":
            tensors[f"log_threshold_{i}"] = clt.log_thresholds[i]
    if cfg.arch == "batchtopk":
        tensors["threshold"] = clt.threshold
    if norms[0].mean is not None:
        tensors["norm_mean"] = _means(norms, cfg.d_model)
    if target_norms[0].mean is not None:
        tensors["target_norm_mean"] = _means(target_norms, cfg.out_width)
    save_file(_contiguous(tensors), out / "model.safetensors")
    _write_json(out / "cfg.json", {
        "format": FORMAT, "version": 1, "dictionary": dataclasses.asdict(cfg),
        "normalize": _norm_meta(norms), "normalize_target": _norm_meta(target_norms),
        "source": source})
    return out


def load_clt(path: str | Path) -> tuple[CrossLayerTranscoder, list[Normalizer],
                                        list[Normalizer], dict[str, Any]]:
    """A saved CLT, its input normalisers, its target normalisers (per layer), its cfg.json."""
    path = Path(path)
    meta = json.loads((path / "cfg.json").read_text())
    if meta.get("format") != FORMAT or meta["dictionary"].get("kind") != "clt":
        raise ValueError(f"{path} is not an actstore cross-layer transcoder")
    cfg = DictionaryConfig.from_saved(meta["dictionary"])
    t = load_file(path / "model.safetensors")
    clt = CrossLayerTranscoder(cfg, torch.Generator().manual_seed(0))
    state = {"b_dec": t["b_dec"], "threshold": t.get("threshold", clt.threshold),
             "tokens_since_fired": clt.tokens_since_fired}
    for i in range(cfg.layers):
        state[f"W_encs.{i}"] = t[f"W_enc_{i}"]
        state[f"b_encs.{i}"] = t[f"b_enc_{i}"]
        state[f"W_decs.{i}"] = t[f"W_dec_{i}"].flatten(1)
        if cfg.arch == "jumprelu":
            state[f"log_thresholds.{i}"] = t[f"log_threshold_{i}"]
    clt.load_state_dict(state)

    def norms(key: str, mean: str) -> list[Normalizer]:
        means = t.get(mean)
        return [Normalizer(None if means is None else means[i], float(s))
                for i, s in enumerate(meta[key]["scale"])]
    return clt, norms("normalize", "norm_mean"), norms("normalize_target", "target_norm_mean"), meta


def folded_clt(clt: CrossLayerTranscoder, norms: list[Normalizer],
               target_norms: list[Normalizer]) -> dict[str, torch.Tensor]:
    """Per layer W_enc_{l} (d, n), b_enc_{l}, W_dec_{l} (n, L - l, d_out), and b_dec (L, d_out),
    acting on raw activations."""
    cfg, layers = clt.cfg, clt.layers
    t_scale = torch.tensor([n.scale for n in target_norms], dtype=clt.b_dec.dtype)
    out = {"b_dec": clt.b_dec / t_scale[:, None] + _means(target_norms, cfg.out_width)}
    for i, norm in enumerate(norms):
        mean = norm.mean if norm.mean is not None else torch.zeros(cfg.d_model)
        w = clt.W_encs[i]
        out[f"W_enc_{i}"] = w * norm.scale
        out[f"b_enc_{i}"] = clt.b_encs[i] - norm.scale * (mean @ w)
        dec = clt.W_decs[i].view(cfg.latents, layers - i, cfg.out_width)
        out[f"W_dec_{i}"] = dec / t_scale[i:, None]
    return out


def export_circuit_tracer_clt(path: str | Path, clt: CrossLayerTranscoder,
                              norms: list[Normalizer], target_norms: list[Normalizer], *,
                              feature_input_hook: str = "ln2.hook_normalized",
                              feature_output_hook: str = "hook_mlp_out",
                              model_name: str | None = None, scan: str | None = None) -> Path:
    """circuit-tracer's CLT files (the module docstring's layout), on raw activations."""
    cfg = clt.cfg
    if cfg.arch not in CIRCUIT_TRACER_ARCHS:
        raise ValueError(f"circuit-tracer loads relu, jumprelu and batchtopk CLTs, not "
                         f"{cfg.arch}")
    if cfg.out_width != cfg.d_model:
        raise ValueError("circuit-tracer's CLTs predict targets as wide as their inputs: "
                         f"{cfg.d_model} -> {cfg.out_width} does not export to it")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    w = folded_clt(clt, norms, target_norms)
    for i in range(clt.layers):
        enc = {f"W_enc_{i}": w[f"W_enc_{i}"].T, f"b_enc_{i}": w[f"b_enc_{i}"],
               f"b_dec_{i}": w["b_dec"][i]}
        if cfg.arch == "jumprelu":
            enc[f"threshold_{i}"] = clt.log_thresholds[i].exp()
        elif cfg.arch == "batchtopk":
            enc[f"threshold_{i}"] = clt.threshold[i].expand(cfg.latents)
        save_file(_contiguous(enc), out / f"W_enc_{i}.safetensors")
        save_file(_contiguous({f"W_dec_{i}": w[f"W_dec_{i}"]}), out / f"W_dec_{i}.safetensors")
    _write_json(out / "config.yaml", {
        "model_kind": "cross_layer_transcoder", "feature_input_hook": feature_input_hook,
        "feature_output_hook": feature_output_hook, "scan": scan or out.name,
        "model_name": model_name})
    return out
