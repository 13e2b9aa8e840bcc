"""Steering: a causal LM continues a prompt with a dictionary latent's decoder direction
added at its hook (`actstore steer`).
"""
