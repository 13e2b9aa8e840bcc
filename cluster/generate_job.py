"""Entry point that `ray job submit` runs: `actstore generate` inside a Ray job.

    ray job submit --address http://HEAD:8265 -- python -m cluster.generate_job \\
        --model gpt2 --hook transformer.h.6 --dataset Skylion007/openwebtext \\
        --context-length 1024 --max-tokens 100000000 --out s3://bucket/stores

Inside a job Ray sets RAY_ADDRESS, so the workers are placed on the cluster (and the job
asks for Ray workers explicitly, `--executor ray`, unless told otherwise); the flags are
exactly those of `actstore generate`. The exit code is the command's (0, 1 when --verify finds
a problem, 2 for bad input), so the job's status says how it went.
"""

from __future__ import annotations

import sys

from actstore.shell.main import main


def run(argv: list[str]) -> int:
    given = any(a == "--executor" or a.startswith("--executor=") for a in argv)
    return main(["generate", *([] if given else ["--executor", "ray"]), *argv])


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
