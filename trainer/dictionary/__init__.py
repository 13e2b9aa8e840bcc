"""Sparse dictionaries: the model (`dictionaries.SparseDictionary`: relu, topk, batchtopk,
jumprelu), its kernels (top-k selection, the sparse decoder), its initialisation, its files
(`export`: cfg.json + safetensors, SAELens and sparsify formats) and its latent slices across
tensor-parallel ranks (`slices`, `gather`).

    x (B, d), normalised ──▶ dictionaries.SparseDictionary (DictionaryConfig)
        dense step: (B, n) pre-activations ──▶ relu | top-k | batch top-k | jump relu
                    (kernels/jumprelu.py: its straight-through estimators)
        sparse step (topk, batchtopk): kernels/ selects tile by tile, decodes the selection
      ──▶ Output: reconstruction, codes, loss terms (MSE, sparsity, AuxK)
    initialisation.py: decoder directions in seeded blocks, b_dec at the data's centre
    clt.CrossLayerTranscoder (kind "clt"): an encoder per layer, decoders into every later
        layer, the same steps layer by layer; clt_export.py: its files, circuit-tracer's CLT
    slices.SlicedDictionary (SlicedCLT): the same passes on this tp rank's latents (parallel.ops)
      ──▶ gather.gathered: the whole dictionary on rank 0
      ──▶ export.py: save_dictionary / load_dictionary, export_saelens, export_sparsify,
                 export_circuit_tracer
"""
