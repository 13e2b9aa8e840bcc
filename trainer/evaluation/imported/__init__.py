"""Dictionaries from elsewhere in `actstore eval` (`--dictionary PATH`):

    SAELens / sparsify / our files ──trainer.dictionary.foreign──▶ SparseDictionary (raw units)
      ──members.imported: width and hook checked against the store's──▶ config.Member
      ──▶ run.evaluate, beside the run's own dictionaries, on the same rows and baselines
"""
