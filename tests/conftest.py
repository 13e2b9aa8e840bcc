"""Fixtures: one store URL per backend (memory, local disk, S3 on a real moto server, GCS on
an emulator; gs:// only where a test asks for it), and a filled local store for the trainer's
tests."""

from __future__ import annotations

import logging
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

# Tests never reach the network: a model or dataset that is not on disk fails at once instead
# of after Hugging Face's retries (set before anything imports huggingface_hub).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import fsspec
import pytest

from tests.helpers import fill_store, new_store


@pytest.fixture(scope="session", autouse=True)
def digest_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The weights' and corpus files' digest cache, kept out of the user's ~/.cache."""
    path = tmp_path_factory.mktemp("digests")
    saved = os.environ.get("ACTSTORE_CACHE_DIR")
    os.environ["ACTSTORE_CACHE_DIR"] = str(path)
    yield path
    if saved is None:
        os.environ.pop("ACTSTORE_CACHE_DIR", None)
    else:
        os.environ["ACTSTORE_CACHE_DIR"] = saved


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 endpoint on 127.0.0.1 (moto's server), reached through s3fs.

    Credentials and endpoint go through the standard AWS environment variables, the same way a
    user points actstore at MinIO or another S3-compatible service.
    """
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    from moto.server import ThreadedMotoServer  # here: the GPU machine runs tests without moto

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in
             ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_ENDPOINT_URL_S3=endpoint)
    fsspec.filesystem("s3").mkdir("actstore-test")
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def gcs_endpoint() -> Iterator[str]:
    """A GCS server on 127.0.0.1 (gcp-storage-emulator, patched where it differs from GCS:
    tests/gcs.py), reached through gcsfs by the standard STORAGE_EMULATOR_HOST variable, so
    processes started by a test reach it too."""
    from tests.gcs import GcsServer  # here: the GPU machine runs tests without the emulator

    server = GcsServer("actstore-test")
    saved = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = server.endpoint
    yield server.endpoint
    server.stop()
    if saved is None:
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
    else:
        os.environ["STORAGE_EMULATOR_HOST"] = saved


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A complete local store of the helpers' layout (12- and 5-wide hooks), one per module."""
    url = str(tmp_path_factory.mktemp("train") / "store")
    fill_store(new_store(url))
    return url


@pytest.fixture(params=["memory", "local", "s3"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty store URL on each backend (and on GCS where a test names "gs")."""
    name = uuid.uuid4().hex[:12]
    if request.param == "memory":
        url = f"memory://actstore-tests/{name}"
        yield url
        fs = fsspec.filesystem("memory")
        if fs.exists(f"/actstore-tests/{name}"):
            fs.rm(f"/actstore-tests/{name}", recursive=True)
    elif request.param == "local":
        yield str(tmp_path / name)
    elif request.param == "gs":
        request.getfixturevalue("gcs_endpoint")
        yield f"gs://actstore-test/{name}"
    else:
        request.getfixturevalue("s3_endpoint")
        yield f"s3://actstore-test/{name}"


class TmpFs:
    """A real small filesystem (tmpfs), so writes fail with ENOSPC like a full disk."""

    def __init__(self, mount: Path) -> None:
        self.path = mount

    def resize(self, size: str) -> None:
        """Make room (or take it away) without touching what is stored."""
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[TmpFs]:
    """A 192 KiB tmpfs; `resize` changes its size. Skips where mounting is not allowed."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(mount)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield TmpFs(mount)
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def tiny_disk(tmpfs: TmpFs) -> Path:
    return tmpfs.path
