"""Run by the peers' environment (not actstore's): load every exported sparsify coder in a
folder with `SparseCoder.load_from_disk` and write its top-k codes and reconstructions.

    python tests/sparsify_load.py DIR     # DIR/<name>/sparsify/ + DIR/<name>/inputs.safetensors
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from sparsify import SparseCoder


def main(root: Path) -> None:
    loaded = {}
    for case in sorted(p for p in root.iterdir() if (p / "sparsify").is_dir()):
        sae = SparseCoder.load_from_disk(case / "sparsify", device="cpu")
        x = load_file(case / "inputs.safetensors")["x"]
        with torch.no_grad():
            enc = sae.encode(x)
            x_hat = sae(x).sae_out  # the whole forward: a skip transcoder's skip included
        z = torch.zeros(len(x), sae.num_latents).scatter_(1, enc.top_indices, enc.top_acts)
        save_file({"z": z.contiguous(), "x_hat": x_hat.contiguous()},
                  case / "sparsify_outputs.safetensors")
        loaded[case.name] = {"k": sae.cfg.k, "latents": sae.num_latents, "d_in": sae.d_in}
    print(json.dumps(loaded))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
