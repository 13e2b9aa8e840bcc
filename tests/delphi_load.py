"""Run by delphi's own environment (not actstore's; scripts/install_delphi.sh): load a cache
folder written by `actstore interpret --delphi-export` with delphi's `LatentDataset` and print,
per module and latent, delphi's per-token frequency and the examples it built (tokens and
activations), as JSON.

    python tests/delphi_load.py DIR TOKENIZER_DIR
"""

import json
import sys

from delphi.config import ConstructorConfig, SamplerConfig
from delphi.latents import LatentDataset
from transformers import AutoTokenizer


def main(root: str, tokenizer: str) -> None:
    tok = AutoTokenizer.from_pretrained(tokenizer, local_files_only=True)
    dataset = LatentDataset(
        root, SamplerConfig(n_examples_train=4, n_examples_test=4, n_quantiles=2),
        ConstructorConfig(example_ctx_len=8, min_examples=1, n_non_activating=2,
                          non_activating_source="random"), tokenizer=tok)
    out: dict[str, dict[str, object]] = {}
    for record in dataset:
        examples = list(record.train) + list(record.test)
        out.setdefault(record.latent.module_name, {})[str(record.latent.latent_index)] = {
            "frequency": record.per_token_frequency,
            "examples": [[e.tokens.tolist(), e.activations.tolist()] for e in examples]}
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
