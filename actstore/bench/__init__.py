"""`actstore bench`: every stage of the pipeline on the machine at hand, each beside the
ceiling that bounds it, measured in the same run.

    generation   bare forward pass stopped after the hook  vs  capture + compress + commit
    store        write / read of the stored bytes          vs  plain files of the same bytes
    loader       shuffled epochs (cold, warm)              vs  sequential reads, decode alone
    trainer      dense and sparse steps, n = a ladder      vs  the same steps fed from memory

    config.BenchConfig ──▶ run.bench: config.resolve (the BenchSetup for this machine)
      ──▶ generation.py ──▶ storage.py (store, loader) ──▶ the trainer stage, which the trainer
          registers as an `actstore.bench_stages` entry point (trainer/training/bench.py)
      ──▶ report.py: bench.json, bench.md, opening with machine.py's description
    io.py: timing, cold page cache, the raw-disk ceiling, peak memory (also for benchmarks/)

No Ray anywhere (generation runs in this process), so it runs on a bare GPU machine. Measured
results: benchmarks/README.md, section `actstore bench`.
"""
