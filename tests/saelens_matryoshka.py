"""Run by SAELens' own environment (not actstore's): SAELens' Matryoshka BatchTopK training SAE
on given weights and batch, its loss and gradients written back for comparison.

    python tests/saelens_matryoshka.py DIR
    # DIR/inputs.safetensors (W_enc, W_dec, b_enc, b_dec, x) + DIR/meta.json (k, widths)
    # -> DIR/saelens.safetensors (loss, mse, inner, grads, feature_acts)
"""

import json
import sys
from pathlib import Path

import torch
from sae_lens.saes.matryoshka_batchtopk_sae import (
    MatryoshkaBatchTopKTrainingSAE,
    MatryoshkaBatchTopKTrainingSAEConfig,
)
from sae_lens.saes.sae import TrainStepInput
from safetensors.torch import load_file, save_file

NAMES = ("W_enc", "W_dec", "b_enc", "b_dec")


def main(root: Path) -> None:
    t = load_file(root / "inputs.safetensors")
    meta = json.loads((root / "meta.json").read_text())
    d_in, d_sae = t["W_enc"].shape
    cfg = MatryoshkaBatchTopKTrainingSAEConfig(
        d_in=d_in, d_sae=d_sae, k=meta["k"], matryoshka_widths=list(meta["widths"]),
        rescale_acts_by_decoder_norm=False, apply_b_dec_to_input=True, dtype="float64",
        device="cpu")
    sae = MatryoshkaBatchTopKTrainingSAE(cfg)
    with torch.no_grad():
        for name in NAMES:
            getattr(sae, name).copy_(t[name])
    out = sae.training_forward_pass(TrainStepInput(
        sae_in=t["x"], coefficients={}, dead_neuron_mask=None, n_training_steps=0,
        is_logging_step=False))
    out.loss.backward()
    inner = sum(v for k, v in out.losses.items() if k.startswith("inner_mse_loss"))
    save_file({"loss": out.loss.detach(), "mse": out.losses["mse_loss"].detach(),
               "inner": torch.as_tensor(inner).detach(),
               "feature_acts": out.feature_acts.detach().contiguous(),
               **{f"grad_{n}": getattr(sae, n).grad.contiguous() for n in NAMES}},
              root / "saelens.safetensors")
    print(json.dumps({"levels": len(cfg.matryoshka_widths)}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
