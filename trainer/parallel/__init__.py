"""Processes working together: the torch.distributed world (`distributed`: setup, rank,
collectives), the data x tensor-parallel mesh (`mesh`) and the autograd collectives that
latent slicing uses (`ops`).
"""
