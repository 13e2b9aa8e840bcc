"""Fixtures of the generation tests: a Ray session and tiny random causal LMs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import ray
import torch

from tests.gen_fixtures import LAYERS, save_tiny


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    gpus = torch.cuda.device_count()
    ray.init(num_cpus=4, num_gpus=gpus, include_dashboard=False, logging_level="ERROR",
             log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("models")
    return {kind: save_tiny(kind, root) for kind in LAYERS}
