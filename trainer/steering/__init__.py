"""Steering: a causal LM continues a prompt with a dictionary latent's decoder direction
added at its hook (`actstore steer`).

    cli.py: flags ──▶ steer.SteerConfig ──▶ steer.steer
      ──▶ steer.direction(dictionary folder, latent): W_dec[latent] / s, in raw activation units
      ──▶ the dictionary's model (or `--model`; actstore.model) generates twice, same seed:
          plain, and with `scale` × the direction added at the hook (actstore.model.hooks.added)
      ──▶ (unsteered text, steered text)
"""
