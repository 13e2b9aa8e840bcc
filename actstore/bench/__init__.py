"""`actstore bench`: every stage of the pipeline on the machine at hand, each beside the
ceiling that bounds it, measured in the same run.

    generation   bare forward pass stopped after the hook  vs  capture + compress + commit
    store        write / read of the stored bytes          vs  plain files of the same bytes
    loader       shuffled epochs (cold, warm)              vs  sequential reads, decode alone
    trainer      dense and sparse steps, n = a ladder      vs  the same steps fed from memory

No Ray anywhere (generation runs in this process), so it runs on a bare GPU machine.
"""
