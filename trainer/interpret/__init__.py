"""Automated interpretability of a scored run (`actstore interpret`): an LM explains sampled
latents of every dictionary and baseline from their top-activating held-out windows, then
scores each explanation on windows it never saw.

    config.InterpretConfig ──▶ corpus.py: eval's slice, windows, each method's sampled latents
      ──▶ plans.py: explainer's windows | scored windows (disjoint contexts)
      ──▶ prompts.py ──▶ client.py (cache, budget, concurrency) ──▶ llm.py (HTTP) | local.py
      ──▶ scores.py: detection, fuzzing (balanced accuracy), simulation (Pearson)
      ──▶ pipeline.py ──▶ results.py: interpret.json, interpret.md, scores.svg, the report
"""
