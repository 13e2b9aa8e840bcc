"""Sparse dictionaries: the model (`dictionaries.SparseDictionary`: relu, topk, batchtopk,
jumprelu), its kernels (top-k selection, the sparse decoder), its initialisation, its files
(`export`: cfg.json + safetensors, SAELens and sparsify formats) and its latent slices across
tensor-parallel ranks (`slices`, `gather`).
"""
