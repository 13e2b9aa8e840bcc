"""Dictionaries saved by other libraries, read as ours with `json` + `safetensors` alone: SAELens'
(`cfg.json` + `sae_weights.safetensors`) and EleutherAI sparsify's (`cfg.json` +
`sae.safetensors`). They act on raw activations, so each loads with the identity normaliser.

    SAELens `architecture`       ours         how
    standard                     relu
    topk (k)                     topk         rescale_acts_by_decoder_norm folded in:
                                              W_enc·‖d_i‖, b_enc·‖d_i‖, W_dec/‖d_i‖ (same codes)
    jumprelu (threshold)         jumprelu     log_threshold = log(threshold); what SAELens saves
                                              for BatchTopK, Matryoshka BatchTopK, Gemma Scope
                                              and Llama Scope (after its loader folds them)
    batchtopk (topk_threshold)   batchtopk    a BatchTopK *training* SAE's own save
    apply_b_dec_to_input false   b_enc + b_dec W_enc   (Gemma/Llama Scope encode x itself;
                                              ours encodes x − b_dec, so the bias makes up for it)
    sparsify `activation: topk`  topk         W_enc = encoder.weightᵀ, b_enc = encoder.bias

Configs from before SAELens 6 (`hook_point`, `activation_fn_kwargs.k`) are read as SAELens reads
them. Refused in one line, naming the reason: gated and other architectures with no counterpart
here, transcoders, per-row input normalisation (`layer_norm`, `constant_norm_rescale`),
hook_z reshaping, a fine-tuning scaling factor, sparsify's GroupMax.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file

from actstore.loader.delivery import Normalizer
from trainer.dictionary.dictionaries import Arch, DictionaryConfig, SparseDictionary
from trainer.dictionary.export import folded, load_with_target

Format = Literal["actstore", "saelens", "sparsify"]
#: SAELens architectures and ours (the module docstring's table).
SAELENS_ARCHS: dict[str, Arch] = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu",
                 "batchtopk": "batchtopk"}


@dataclass(frozen=True)
class Loaded:
    """A dictionary read from another library's files (or ours)."""

    sae: SparseDictionary
    norm: Normalizer
    """What its weights expect of the raw activations (identity for the peers' files)."""
    format: Format
    hook: str | None
    """The hook its files say it was trained on (sparsify's: its folder's name), else None."""
    model: str | None
    """The model its files name, if any."""


def detect(path: str | Path) -> Format:
    """Which library wrote the dictionary in `path` (a folder)."""
    p = Path(path)
    if not (p / "cfg.json").is_file():
        raise FileNotFoundError(f"{p} holds no cfg.json: pass a dictionary's folder (ours, "
                                "SAELens' or sparsify's)")
    if (p / "sae_weights.safetensors").is_file():
        return "saelens"
    if (p / "sae.safetensors").is_file():
        return "sparsify"
    if (p / "model.safetensors").is_file():
        return "actstore"
    raise FileNotFoundError(f"{p} has a cfg.json but none of sae_weights.safetensors "
                            "(SAELens), sae.safetensors (sparsify), model.safetensors (ours)")


def load_any(path: str | Path) -> Loaded:
    """The dictionary in `path`, whoever wrote it; an SAE (transcoders are refused)."""
    fmt = detect(path)
    if fmt == "saelens":
        return load_saelens(path)
    if fmt == "sparsify":
        return load_sparsify(path)
    sae, norm, _, cfg = load_with_target(path)
    if sae.cfg.kind != "sae":
        raise ValueError(f"{path} is a {sae.cfg.kind}: only SAEs load here")
    source = cfg.get("source", {})
    return Loaded(sae, norm, "actstore", source.get("hook"), source.get("model"))


def _saelens_fields(cfg: dict[str, Any], path: Path) -> tuple[str, int | None, str | None]:
    """(architecture, k, hook) of a SAELens cfg.json of any version."""
    arch = cfg.get("architecture")
    k = cfg.get("k")
    if arch is None:  # before SAELens 6: standard, or topk by its activation function
        kwargs = cfg.get("activation_fn_kwargs") or {}
        topk = cfg.get("activation_fn", cfg.get("activation_fn_str")) == "topk"
        arch, k = ("topk", kwargs.get("k")) if topk and kwargs.get("k") else ("standard", k)
    meta = cfg.get("metadata") or {}
    hook = meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    if "transcoder" in arch:
        raise ValueError(f"{path} is a SAELens {arch}: --dictionary scores SAEs, not "
                         "transcoders")
    if arch not in SAELENS_ARCHS:
        raise ValueError(f"{path}: SAELens architecture {arch!r} has no counterpart here "
                         f"(these load: {', '.join(SAELENS_ARCHS)})")
    norm = cfg.get("normalize_activations") or "none"
    if norm not in ("none", "expected_average_only_in"):
        raise ValueError(f"{path} normalises each input row ({norm}), which a fixed normaliser "
                         "cannot express: fold it or save the SAE without it")
    if norm == "expected_average_only_in":  # SAELens' load_from_disk scales nothing either
        print(f"actstore: warning: {path} expects inputs scaled to an average norm of "
              "sqrt(d_in) and its files hold no factor: it acts on raw activations, as "
              "SAELens' load_from_disk has it", file=sys.stderr)
    if (cfg.get("reshape_activations") or "none") != "none":
        raise ValueError(f"{path} reshapes its input ({cfg['reshape_activations']}): store "
                         "rows are flat, so it does not apply")
    if cfg.get("finetuning_scaling_factor"):
        raise ValueError(f"{path} has a fine-tuning scaling factor, which SAELens 6 no longer "
                         "reads: load and save it with SAELens first")
    return str(arch), None if k is None else int(k), hook


def load_saelens(path: str | Path) -> Loaded:
    """A SAELens SAE (`cfg.json` + `sae_weights.safetensors`) as ours, on raw activations."""
    p = Path(path)
    cfg = json.loads((p / "cfg.json").read_text())
    arch, k, hook = _saelens_fields(cfg, p)
    t = _tensors(p / "sae_weights.safetensors", ["W_enc", "W_dec", "b_enc", "b_dec"] + (
        ["threshold"] if SAELENS_ARCHS[arch] == "jumprelu" else
        ["topk_threshold"] if arch == "batchtopk" else []))
    scale = t.pop("scaling_factor", None)
    if scale is not None and not bool((scale == 1).all()):
        raise ValueError(f"{p} has a fine-tuning scaling factor: fold it into W_dec first")
    w_enc, w_dec, b_enc, b_dec = t["W_enc"], t["W_dec"], t["b_enc"], t["b_dec"]
    if cfg.get("rescale_acts_by_decoder_norm"):
        # SAELens ranks pre · ‖d_i‖ and decodes codes / ‖d_i‖: the same function with
        # unit-norm rows and the norms moved into the encoder
        norms = w_dec.norm(dim=-1)
        w_enc, b_enc, w_dec = w_enc * norms, b_enc * norms, w_dec / norms[:, None]
    if not cfg.get("apply_b_dec_to_input", True):
        b_enc = b_enc + b_dec @ w_enc
    ours = SAELENS_ARCHS[arch]
    d, n = w_enc.shape
    sae = SparseDictionary(DictionaryConfig(ours, d, n, k=k if ours in ("topk", "batchtopk")
                                            else None))
    tensors = {"W_enc": w_enc, "W_dec": w_dec, "b_enc": b_enc, "b_dec": b_dec}
    if ours == "jumprelu":
        # a zero threshold is a ReLU; log(0) would make the parameter -inf
        tensors["log_threshold"] = t["threshold"].clamp(min=torch.finfo(torch.float32).tiny).log()
    if ours == "batchtopk":
        tensors["threshold"] = t["topk_threshold"].reshape(())
    _assign(sae, tensors, p)
    meta = cfg.get("metadata") or {}
    return Loaded(sae, Normalizer(None, 1.0), "saelens", hook,
                  meta.get("model_name") or cfg.get("model_name"))


def load_sparsify(path: str | Path) -> Loaded:
    """A sparsify TopK SAE (`cfg.json` + `sae.safetensors`) as ours, on raw activations."""
    p = Path(path)
    cfg = json.loads((p / "cfg.json").read_text())
    if cfg.get("transcode") or cfg.get("skip_connection"):
        raise ValueError(f"{p} is a sparsify transcoder: --dictionary scores SAEs")
    if cfg.get("activation", "topk") != "topk":
        raise ValueError(f"{p}: sparsify's {cfg['activation']} activation has no counterpart "
                         "here (topk loads)")
    t = _tensors(p / "sae.safetensors", ["encoder.weight", "encoder.bias", "W_dec", "b_dec"])
    w_enc = t["encoder.weight"].T
    d, n = w_enc.shape
    sae = SparseDictionary(DictionaryConfig("topk", d, n, k=int(cfg.get("k", 32))))
    _assign(sae, {"W_enc": w_enc, "W_dec": t["W_dec"], "b_enc": t["encoder.bias"],
                  "b_dec": t["b_dec"]}, p)
    # sparsify's trainer saves one folder per hookpoint, named after it
    return Loaded(sae, Normalizer(None, 1.0), "sparsify", p.name, None)


def _tensors(path: Path, needed: list[str]) -> dict[str, torch.Tensor]:
    """The file's tensors in float32; one missing is named with the file."""
    t = {name: v.float() for name, v in load_file(path).items()}
    if missing := [n for n in needed if n not in t]:
        raise ValueError(f"{path} lacks {', '.join(missing)} (it holds {', '.join(sorted(t))})")
    return t


def _assign(sae: SparseDictionary, tensors: dict[str, torch.Tensor], path: Path) -> None:
    state = sae.state_dict()
    for name, v in tensors.items():
        if v.shape != state[name].shape:
            raise ValueError(f"{path}: {name} has shape {tuple(v.shape)}, its config says "
                             f"{tuple(state[name].shape)}")
        state[name] = v.contiguous()
    sae.load_state_dict(state)


_TL_RESID = re.compile(r"blocks\.(\d+)\.hook_resid_(post|pre)$")
_HF_BLOCK = re.compile(r"(?:^|\.)(?:h|layers|layer|blocks)\.(\d+)$")


def same_hook(recorded: str, hook: str) -> bool:
    """Whether a hook name another library recorded names the store's `hook` (a module path):
    the same name; a path inside the model's base module, as sparsify names hookpoints
    (`layers.6` for `gpt_neox.layers.6`); TransformerLens' residual stream after block L
    (`blocks.L.hook_resid_post`, or before block L+1) for block L's output."""
    if recorded == hook or hook.endswith("." + recorded):
        return True
    tl, hf = _TL_RESID.fullmatch(recorded), _HF_BLOCK.search(hook)
    if tl is None or hf is None:
        return False
    block = int(tl.group(1)) - (tl.group(2) == "pre")
    return block == int(hf.group(1))


def fold_decoder_norms(sae: SparseDictionary) -> None:
    """Rescale decoder rows to unit norm and the encoder (and a JumpReLU's thresholds) to
    match, as training keeps them: the same codes up to each latent's scale, the same
    reconstructions, for relu and jumprelu exactly (TopK then ranks latents by pre · ‖d_i‖)."""
    with torch.no_grad():
        norms = sae.W_dec.norm(dim=-1).clamp(min=1e-12)
        sae.W_dec.div_(norms[:, None])
        sae.W_enc.mul_(norms)
        sae.b_enc.mul_(norms)
        if sae.cfg.arch == "jumprelu":
            sae.log_threshold.add_(norms.log())
        if not math.isfinite(float(sae.W_enc.abs().sum())):
            raise ValueError("the dictionary has a zero decoder row or non-finite weights")


def start_from(path: str | Path, members: list[SparseDictionary], norm: Normalizer) -> None:
    """`actstore train --init-from PATH`: the dictionary in `path` (any format `load_any`
    reads) copied into each fresh member (or its latent slice), moved from the space it acts
    on into the run's normalised one (the inverse of export's folds: W_enc / s, W_dec · s,
    b_dec' = (b_dec − mean) · s) and its decoder rows rescaled to unit norm, as training keeps
    them. A different architecture, width or latent count is refused in one line."""
    got = load_any(path)
    raw = folded(got.sae, got.norm)
    for m in members:
        have, want = got.sae.cfg, m.cfg
        if (have.d_model, have.latents) != (want.d_model, want.latents):
            raise ValueError(f"--init-from {path} is {have.d_model} wide with {have.latents} "
                             f"latents; this run trains {want.d_model} wide with "
                             f"{want.latents} latents")
        if have.arch != want.arch:
            raise ValueError(f"--init-from {path} is a {have.arch} dictionary; this run "
                             f"trains --arch {want.arch}")
        s = norm.scale
        mean = norm.mean if norm.mean is not None else torch.zeros(want.d_model)
        whole = {"W_enc": raw["W_enc"] / s, "W_dec": raw["W_dec"] * s, "b_enc": raw["b_enc"],
                 "log_threshold": getattr(got.sae, "log_threshold", None)}
        with torch.no_grad():
            for name, t in whole.items():
                if t is not None:  # this member's latents: a slice under --tp
                    part = t[..., m.start:m.stop] if name == "W_enc" else t[m.start:m.stop]
                    getattr(m, name).copy_(part.to(getattr(m, name).device))
            m.b_dec.copy_(((raw["b_dec"] - mean.to(raw["b_dec"])) * s).to(m.b_dec.device))
            m.threshold.copy_(got.sae.threshold)
        fold_decoder_norms(m)
