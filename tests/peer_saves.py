"""Run by SAELens' and sparsify's own environment (not actstore's): build a dictionary of each
architecture with random weights, save it with the library's own code, and write what that
library computes for the given rows (codes z, reconstructions x_hat).

    python tests/peer_saves.py DIR   # DIR/inputs.safetensors (x) -> DIR/<case>/ + outputs
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def _randomise(sae: torch.nn.Module, gen: torch.Generator, threshold: float = 0.0) -> None:
    """Weights of the sizes real ones have, decoder rows not unit norm, biases non-zero."""
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.4 if name != "threshold" else 0.0))
            if name == "threshold":
                p.copy_(threshold + 0.2 * torch.rand(p.shape, generator=gen))


def saelens_cases(root: Path, x: torch.Tensor) -> dict[str, str]:
    from sae_lens import (
        SAE,
        JumpReLUSAE,
        JumpReLUSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
    )
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig

    d, n, gen = x.shape[1], 40, torch.Generator().manual_seed(0)
    made: dict[str, SAE] = {
        "standard": StandardSAE(StandardSAEConfig(d_in=d, d_sae=n)),
        "topk": TopKSAE(TopKSAEConfig(d_in=d, d_sae=n, k=5)),
        "topk_rescaled": TopKSAE(TopKSAEConfig(d_in=d, d_sae=n, k=5,
                                               rescale_acts_by_decoder_norm=True)),
        "jumprelu": JumpReLUSAE(JumpReLUSAEConfig(d_in=d, d_sae=n)),
        # Gemma Scope as SAELens loads and saves it: JumpReLU on x itself (no b_dec at the input)
        "gemma_scope": JumpReLUSAE(JumpReLUSAEConfig(d_in=d, d_sae=n,
                                                     apply_b_dec_to_input=False)),
    }
    for sae in made.values():
        _randomise(sae, gen, threshold=0.3)
    # Llama Scope as SAELens' loader builds it: one threshold, inputs expected at norm
    # sqrt(d_in), the dataset's norm factor folded in, then saved
    llama = JumpReLUSAE(JumpReLUSAEConfig(d_in=d, d_sae=n, apply_b_dec_to_input=False,
                                          normalize_activations="expected_average_only_in"))
    _randomise(llama, gen)
    with torch.no_grad():
        llama.threshold.fill_(0.4)
    llama.fold_activation_norm_scaling_factor(d ** 0.5 / 6.0)
    made["llama_scope"] = llama
    for name, sae in made.items():
        # the hook as each library names it: TransformerLens' residual stream after block 1
        # is the store's encoder.layer.1
        sae.cfg.metadata.hook_name = ("blocks.1.hook_resid_post" if "scope" in name
                                      else "encoder.layer.1")
        sae.save_model(root / name)
    # BatchTopK: SAELens saves it for inference as a JumpReLU at its learned threshold; its
    # training save (architecture batchtopk) loads too
    btk = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=d, d_sae=n, k=5,
                                                          rescale_acts_by_decoder_norm=True))
    _randomise(btk, gen)
    btk.topk_threshold = torch.tensor(0.35, dtype=torch.double)
    btk.save_inference_model(root / "batchtopk")
    btk.save_model(root / "batchtopk_training")
    loaded = {}
    for name in [*made, "batchtopk"]:
        sae = SAE.load_from_disk(root / name, device="cpu")
        with torch.no_grad():
            z = sae.encode(x)
            save_file({"z": z.contiguous(), "x_hat": sae.decode(z).contiguous()},
                      root / name / "outputs.safetensors")
        loaded[name] = type(sae).__name__
    save_file(load_file(root / "batchtopk" / "outputs.safetensors"),
              root / "batchtopk_training" / "outputs.safetensors")
    loaded["batchtopk_training"] = "BatchTopKTrainingSAE"
    return loaded


def sparsify_case(root: Path, x: torch.Tensor) -> dict[str, str]:
    from sparsify import SparseCoder, SparseCoderConfig

    gen = torch.Generator().manual_seed(1)
    coder = SparseCoder(x.shape[1], SparseCoderConfig(num_latents=40, k=5))
    _randomise(coder, gen)
    folder = root / "sparsify" / "encoder.layer.1"  # its trainer names folders by hookpoint
    coder.save_to_disk(folder)
    coder = SparseCoder.load_from_disk(folder)
    with torch.no_grad():
        acts, idx, _ = coder.encode(x)
        z = torch.zeros(len(x), coder.num_latents).scatter_(1, idx, acts)
        x_hat = coder.decode(acts, idx)
    save_file({"z": z, "x_hat": x_hat.contiguous()}, folder / "outputs.safetensors")
    return {"sparsify/encoder.layer.1": type(coder).__name__}


def main(root: Path) -> None:
    x = load_file(root / "inputs.safetensors")["x"]
    print(json.dumps(saelens_cases(root, x) | sparsify_case(root, x)))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
