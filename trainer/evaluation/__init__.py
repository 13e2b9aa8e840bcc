"""Evaluating dictionaries as the seed paper did: ground-truth recovery (MMCS) on toy data,
and (to come) baselines, the FVU-vs-L0 frontier and top-activating contexts."""
