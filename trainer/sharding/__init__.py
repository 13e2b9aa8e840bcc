"""Latent sharding: a dictionary's latents split over tp ranks, combined with data
parallelism over dp (a dp × tp mesh)."""
