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
batchtopk -> jumprelu with every threshold equal to the learned batch threshold (as SAELens
saves its own BatchTopK SAEs).

EleutherAI sparsify's format (`sparsify/`: cfg.json + sae.safetensors, loaded by
`sparsify.SparseCoder.load_from_disk`), for TopK only (sparsify has no other activation that
ours map to): the same folded weights as encoder.weight = W_enc'ᵀ, encoder.bias, W_dec', b_dec'.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from actstore.loader.loader import Normalizer
from actstore.store.location import Location
from trainer.dictionary.dictionaries import DictionaryConfig, SparseDictionary

FORMAT = "actstore-dictionary"
SAELENS_ARCH = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu",
                "batchtopk": "jumprelu"}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically and durably, as the store publishes its objects."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    Location.from_url(str(path.parent)).put(path.name, text.encode())


def _contiguous(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu().contiguous() for k, v in t.items()}


def save_dictionary(path: str | Path, sae: SparseDictionary, norm: Normalizer,
                    source: dict[str, Any]) -> Path:
    """Write `path/cfg.json` and `path/model.safetensors`; returns the directory."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v for k, v in sae.state_dict().items() if k != "tokens_since_fired"}
    if norm.mean is not None:
        tensors["norm_mean"] = norm.mean
    save_file(_contiguous(tensors), out / "model.safetensors")
    _write_json(out / "cfg.json", {
        "format": FORMAT, "version": 1, "dictionary": dataclasses.asdict(sae.cfg),
        "normalize": {"scale": norm.scale, "center": norm.mean is not None},
        "source": source})
    return out


def load_dictionary(path: str | Path) -> tuple[SparseDictionary, Normalizer, dict[str, Any]]:
    """A saved dictionary, its input normaliser and its cfg.json."""
    path = Path(path)
    cfg = json.loads((path / "cfg.json").read_text())
    if cfg.get("format") != FORMAT:
        raise ValueError(f"{path} is not an actstore dictionary (format {cfg.get('format')!r})")
    tensors = load_file(path / "model.safetensors")
    mean = tensors.pop("norm_mean", None)
    sae = SparseDictionary(DictionaryConfig(**cfg["dictionary"]))
    state = sae.state_dict()
    state.update(tensors)
    sae.load_state_dict(state)
    return sae, Normalizer(mean, float(cfg["normalize"]["scale"])), cfg


def export_saelens(path: str | Path, sae: SparseDictionary, norm: Normalizer,
                   source: dict[str, Any]) -> Path:
    """SAELens' `cfg.json` + `sae_weights.safetensors`, acting on raw activations."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    weights = folded(sae, norm)
    arch = sae.cfg.arch
    if arch == "jumprelu":
        weights["threshold"] = sae.log_threshold.exp()
    elif arch == "batchtopk":
        weights["threshold"] = sae.threshold.expand(sae.cfg.latents)
    save_file(_contiguous(weights), out / "sae_weights.safetensors")
    _write_json(out / "cfg.json", saelens_config(sae.cfg, source))
    return out


def folded(sae: SparseDictionary, norm: Normalizer) -> dict[str, torch.Tensor]:
    """W_enc, W_dec, b_enc, b_dec acting on raw activations (the module docstring's fold)."""
    s = norm.scale
    mean = norm.mean if norm.mean is not None else torch.zeros(sae.cfg.d_model)
    return {"W_enc": sae.W_enc * s, "W_dec": sae.W_dec / s,
            "b_enc": sae.b_enc, "b_dec": sae.b_dec / s + mean.to(sae.b_dec.device)}


def export_sparsify(path: str | Path, sae: SparseDictionary, norm: Normalizer) -> Path:
    """sparsify's `cfg.json` + `sae.safetensors` for a TopK dictionary, on raw activations."""
    if sae.cfg.arch != "topk":
        raise ValueError(f"sparsify has no {sae.cfg.arch} coder: only topk exports to it")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    w = folded(sae, norm)
    save_file(_contiguous({"encoder.weight": w["W_enc"].T, "encoder.bias": w["b_enc"],
                           "W_dec": w["W_dec"], "b_dec": w["b_dec"]}), out / "sae.safetensors")
    _write_json(out / "cfg.json", {
        "activation": "topk", "expansion_factor": max(1, sae.cfg.latents // sae.cfg.d_model),
        "num_latents": sae.cfg.latents, "k": sae.cfg.k, "d_in": sae.cfg.d_model,
        # rows are not unit norm once the input scale is folded in; the flag only steers
        # sparsify's training, never a load
        "normalize_decoder": False, "multi_topk": False, "skip_connection": False,
        "transcode": False})
    return out


#: The SAELens release whose `save_model` output `saelens_config` reproduces (its loader reads
#: `metadata.sae_lens_version` to pick the format; tested by loading with that release).
SAELENS_FORMAT_VERSION = "6.54.12"


def saelens_config(cfg: DictionaryConfig, source: dict[str, Any]) -> dict[str, Any]:
    """The cfg.json SAELens 6's `SAE.save_model` writes for this architecture: the config
    dataclass's fields, `architecture`, and `metadata` (where SAELens 6 reads the model, hook
    and version from)."""
    arch = SAELENS_ARCH[cfg.arch]
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
    if arch == "topk":
        out["k"] = cfg.k
        out["rescale_acts_by_decoder_norm"] = False  # decoder rows are not unit norm after folding
    return out
