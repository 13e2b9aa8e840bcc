"""`actstore eval` on dictionaries that read or write more than one hook: transcoders (an
MLP's input to its output, `transcoders.py`, which also sends every run to its evaluator),
cross-layer transcoders (`clt.py`) and crosscoders (`crosscoder.py`: per-site scores and the
relative decoder norms of model diffing). Each scores on the held-out slice as `run.py` does
for SAEs and returns the same `Evaluation` for the report."""
