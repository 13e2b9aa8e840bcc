"""Run by circuit-tracer's own environment (not actstore's): load every exported transcoder set
or cross-layer transcoder in a folder with circuit-tracer's loader (`load_transcoders_from_cache`,
which reads the config.yaml and the layer files), write each layer's codes and predictions of the
given inputs, through the dense path (encode/decode) and the attribution path
(`compute_attribution_components`: sparse codes, lazily read decoder rows), and save the set
again with circuit-tracer's `to_safetensors` (to compare the files).

    python tests/circuit_tracer_load.py DIR
    # DIR/<name>/circuit_tracer/ (the export) + DIR/<name>/inputs.safetensors (x: layers, n, d)
"""

import json
import sys
from pathlib import Path

import torch
from circuit_tracer.transcoder.activation_functions import JumpReLU
from circuit_tracer.transcoder.cross_layer_transcoder import CrossLayerTranscoder
from circuit_tracer.utils.caching import load_transcoders_from_cache
from safetensors.torch import load_file, save_file


def main(root: Path) -> None:
    loaded = {}
    for case in sorted(p for p in root.iterdir() if (p / "circuit_tracer").is_dir()):
        tset, config = load_transcoders_from_cache(
            "circuit_tracer", cache_dir=case, device=torch.device("cpu"), dtype=torch.float32)
        x = load_file(case / "inputs.safetensors")["x"]  # (layers, positions, d)
        with torch.no_grad():
            z = tset.encode(x)
            y_hat = tset.decode(z, x)  # the skip included, when the set has one
            parts = tset.compute_attribution_components(x, zero_positions=slice(0, 0))
        save_file({"z": z.contiguous(), "y_hat": y_hat.contiguous(),
                   "z_sparse": parts["activation_matrix"].to_dense().contiguous(),
                   "y_hat_sparse": parts["reconstruction"].contiguous()},
                  case / "circuit_tracer_outputs.safetensors")
        tset.to_safetensors(str(case / "resaved"))  # what circuit-tracer itself writes
        clt = isinstance(tset, CrossLayerTranscoder)  # one activation for every layer
        layers = tset.n_layers if clt else len(tset)
        loaded[case.name] = {
            "layers": layers, "d_transcoder": tset.d_transcoder, "clt": clt,
            "skip": tset.skip_connection, "input_hook": tset.feature_input_hook,
            "output_hook": tset.feature_output_hook, "scan": tset.scan,
            "model_name": config.get("model_name"),
            "activations": [_name(t.activation_function)
                            for t in ([tset] * layers if clt else tset)]}
    print(json.dumps(loaded))


def _name(activation: object) -> str:
    return ("jumprelu" if isinstance(activation, JumpReLU)
            else getattr(activation, "__name__", "?"))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
