"""A generation request's identity: the `StoreSpec` (what is hashed into the store's key)
and the store's URL, from the model's config and tokenizer and the digests of its weights and
corpus (hashed, not loaded)."""

from __future__ import annotations

import torch
from torch import nn

from actstore.generate import corpus
from actstore.generate.config import GenerateConfig, device_and_dtype
from actstore.generate.fingerprint import model_fingerprint
from actstore.model.capture import (
    Capture,
    load_config,
    load_tokenizer,
    model_path,
    resolve_hooks,
    skeleton,
)
from actstore.store.activation_store import ActivationStore, read_root_attrs
from actstore.store.errors import StoreError
from actstore.store.location import Location
from actstore.store.spec import StoreSpec


class ModelNotFoundError(StoreError, ValueError):
    """The model named by --model cannot be loaded."""


def make_spec(cfg: GenerateConfig) -> StoreSpec:
    """The spec, from the model's config and tokenizer and the digests of its weights and
    corpus files (hashed, not loaded; cached while the files are unchanged)."""
    try:
        config = load_config(cfg.model, cfg.revision)
    except (OSError, ValueError) as e:  # transformers' "not a folder nor a model id" family
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelNotFoundError(
            f"--model {cfg.model}: cannot load its config ({first}). Pass a local folder "
            "holding config.json or a Hugging Face model name (offline, it must be in the "
            "cache)") from None
    model = skeleton(config)  # on the meta device: no weights
    hooks = resolve_hooks(model, cfg.hooks)
    hook_widths(model, hooks)  # a hook without one row per token fails here
    tokenizer = load_tokenizer(cfg.model, cfg.revision)
    _, model_dtype = device_and_dtype(cfg)
    return StoreSpec(
        model=cfg.model, model_revision=cfg.revision,
        model_weights=model_fingerprint(model_path(cfg.model), cfg.revision), hooks=hooks,
        dataset=cfg.dataset,
        dataset_revision=dataset_identity(cfg), split=cfg.split, text_column=cfg.text_column,
        context_length=cfg.context_length, tokenizer=cfg.model,
        tokenizer_hash=corpus.tokenizer_hash(tokenizer), bos_policy=cfg.bos,
        context_policy=cfg.context_policy, max_tokens=cfg.max_tokens, dtype=cfg.store_dtype,
        model_dtype=model_dtype)


def dataset_identity(cfg: GenerateConfig) -> str | None:
    """The spec's dataset revision: the one given for a hub dataset, the content's digest for
    files, local folders and the embedded corpus (whose text changes with Python's version)."""
    content = corpus.fingerprint(cfg.dataset)
    if content is not None and cfg.dataset_revision is not None:
        raise ValueError(f"--dataset-revision names a Hugging Face hub dataset's revision; "
                         f"{cfg.dataset} is identified by its content instead: drop the flag")
    return cfg.dataset_revision or content


def store_url(cfg: GenerateConfig, spec: StoreSpec) -> str:
    """`<out>/<key>`, or `out` itself when it already is a store (whose spec must match)."""
    if read_root_attrs(Location.from_url(cfg.out, cfg.storage_options)) is not None:
        ActivationStore.open(cfg.out, spec, cfg.storage_options)  # SpecMismatchError if not
        return cfg.out
    return f"{cfg.out.rstrip('/')}/{spec.key}"


def hook_widths(model: nn.Module, hooks: tuple[str, ...]) -> dict[str, int]:
    """d_model of each hook, from a probe pass of the model's skeleton (meta device: no
    weights, no compute), which also refuses a hook that does not give one row per token."""
    with Capture(model, hooks) as cap:
        out = cap.run(torch.zeros(1, 2, dtype=torch.long, device="meta"))
    return {h: int(v.shape[-1]) for h, v in out.items()}
