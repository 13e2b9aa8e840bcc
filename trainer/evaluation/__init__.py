"""Evaluating dictionaries as the seed paper did and as researchers do now (`actstore eval`).

    config.EvalConfig ──▶ run.evaluate: a run's dictionaries (config.Member), those from
      elsewhere (imported/: SAELens', sparsify's, `--dictionary`) and the baselines
      (baselines.py: PCA, neurons, random; ica.py: FastICA) on the store's held-out slice
      ──▶ FVU vs L0 frontier, firing, MMCS (mmcs.py), top activations (examples.py)
      ──▶ loss_recovered.py: the model run with each reconstruction spliced in (splicer.py)
      ──▶ logit_lens.py: the tokens each latent promotes and suppresses (causal LMs)
      ──▶ report/writer.py + html.py: eval.json, latents.json, report.md, frontier.png,
          index.html; report/browser/: every latent in .js shards under latents/
      ──▶ report/tracked.py (`--log`): the same to the run's TensorBoard / W&B run
"""
