"""Run by SAELens' own environment (not actstore's): load every exported SAE in a folder with
`SAE.load_from_disk`, write its codes and reconstructions of the given inputs, and save it
again with SAELens' `save_model` (to compare the files).

    python tests/saelens_load.py DIR     # DIR/<name>/saelens/ + DIR/<name>/inputs.safetensors
"""

import json
import sys
from pathlib import Path

import torch
from sae_lens import SAE
from safetensors.torch import load_file, save_file


def main(root: Path) -> None:
    loaded = {}
    for case in sorted(p for p in root.iterdir() if (p / "saelens").is_dir()):
        sae = SAE.load_from_disk(case / "saelens", device="cpu")
        x = load_file(case / "inputs.safetensors")["x"]
        with torch.no_grad():
            z = sae.encode(x)
            x_hat = sae(x)  # the whole forward: a skip transcoder's skip included
        save_file({"z": z.contiguous(), "x_hat": x_hat.contiguous()},
                  case / "saelens_outputs.safetensors")
        sae.save_model(case / "resaved")  # what SAELens itself writes for this SAE
        loaded[case.name] = {"class": type(sae).__name__, "k": getattr(sae.cfg, "k", None),
                             "hook_name": sae.cfg.metadata.hook_name}
    print(json.dumps(loaded))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
