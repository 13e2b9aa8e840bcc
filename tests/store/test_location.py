"""Location (actstore.store.location), the store's one door to a backend: a contract suite in
the shape of zarr-python's `StoreTests`.

`LocationTests` exercises every public operation against expectations of its own (the bytes put
are the bytes got, a range is the slice of those bytes, a listing names what was put); each
subclass runs it on one backend, through `tests/conftest.py`'s `store_url` (memory://, a
local folder, S3 through s3fs against moto's server on 127.0.0.1, GCS through gcsfs against
an emulator on 127.0.0.1), and adds what only that backend has. A new backend passes when a
subclass of `LocationTests` for it does.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import zarr

from actstore import ActivationStore, JobLock, StoreAccessError
from actstore.store.errors import StoreError, StoreNotFoundError
from actstore.store.location import Location, access_errors
from tests.helpers import fill_store, new_store

BLOB = bytes(range(256)) * 5
"""Every byte value, 1280 bytes: what most objects of the suite hold."""

RANGES = [(0, 1), (0, len(BLOB)), (17, 300), (len(BLOB) - 1, len(BLOB)), (100, None),
          (1200, 5000), (-1, None), (-300, None), (-len(BLOB), None), (5, 5), (9, 3),
          (len(BLOB), len(BLOB) + 10), (5000, 6000), (2, -3), (-10, -2)]
"""[start, end) of `Location.get_range`: whole, inner, last byte, open end, an end past the
object (cut there, as a slice is), negative starts (counted from the end) and empty ranges
(s3fs alone would answer `start == end` with the whole object) and negative ends (counted
from the end too, as fsspec does)."""


class LocationTests:
    """Every public operation of `Location`; a subclass names the backend in `store_url`."""

    local: ClassVar[bool] = False
    """Whether the backend is the local filesystem (`Location.is_local`)."""

    @pytest.fixture
    def loc(self, store_url: str) -> Location:
        return Location.from_url(store_url)

    @staticmethod
    def other_view(loc: Location) -> Location:
        """The same root through a filesystem instance of its own, as another process has."""
        fs = type(loc.fs)(**{**loc.fs.storage_options, "skip_instance_cache": True})
        return Location(url=loc.url, fs=fs, root=loc.root)

    # --- put and get -------------------------------------------------------------------------

    def test_put_then_get_returns_the_same_bytes(self, loc: Location) -> None:
        loc.put("obj", BLOB)
        loc.put("nested/deeper/obj", b"at depth")
        loc.put("empty", b"")
        assert loc.get("obj") == BLOB
        assert loc.get("nested/deeper/obj") == b"at depth"
        assert loc.get("empty") == b""
        assert loc.size("empty") == 0

    def test_put_replaces_an_object_whole(self, loc: Location) -> None:
        loc.put("obj", BLOB)
        loc.put("obj", b"short")
        assert loc.get("obj") == b"short"
        assert loc.size("obj") == len(b"short")
        loc.put("obj", BLOB[::-1])
        assert loc.get("obj") == BLOB[::-1]

    @pytest.mark.parametrize(("start", "end"), RANGES)
    def test_ranges_equal_slices_of_the_object(self, loc: Location, start: int,
                                               end: int | None) -> None:
        loc.put("obj", BLOB)
        assert loc.get_range("obj", start, end) == BLOB[start:end]

    def test_get_json_parses_what_put_stored(self, loc: Location) -> None:
        doc = {"zarr_format": 3, "node_type": "group",
               "attributes": {"name": "ünïcode ✓", "rows": [0, 32], "none": None, "x": 2.5}}
        loc.put("zarr.json", json.dumps(doc).encode())
        assert loc.get_json("zarr.json") == doc
        loc.put("broken.json", b'{"unterminated": ')
        with pytest.raises(json.JSONDecodeError):
            loc.get_json("broken.json")

    def test_a_missing_object_is_file_not_found(self, loc: Location) -> None:
        loc.put("present", BLOB)
        for read in (loc.get, loc.get_json, loc.size, lambda rel: loc.get_range(rel, 0, 4)):
            with pytest.raises(FileNotFoundError):
                read("absent")
            with pytest.raises(FileNotFoundError):
                read("no/such/folder/absent")
        assert not loc.exists("absent")
        assert loc.list("no/such/folder") == []
        assert loc.du("no/such/folder") == 0

    def test_put_many_writes_each_object(self, loc: Location) -> None:
        objects = {"a": BLOB, "b/c": b"c", "b/d/e": b"e" * 1000, "b/empty": b""}
        loc.put_many(objects)
        assert {rel: loc.get(rel) for rel in objects} == objects
        assert loc.list("b") == ["c", "d", "empty"]
        loc.put_many({"a": b"again", "b/c": b"again"})  # replaces, like put
        assert (loc.get("a"), loc.get("b/c"), loc.get("b/d/e")) == (b"again", b"again",
                                                                    b"e" * 1000)

    # --- exclusive creation ------------------------------------------------------------------

    def test_put_exclusive_creates_once_and_never_overwrites(self, loc: Location) -> None:
        loc.put_exclusive("leases/shard-000001/zarr.json", b"first")
        with pytest.raises(FileExistsError):
            loc.put_exclusive("leases/shard-000001/zarr.json", b"second")
        assert loc.get("leases/shard-000001/zarr.json") == b"first"
        assert loc.list("leases/shard-000001") == ["zarr.json"]  # nothing of the loser left
        loc.delete("leases/shard-000001/zarr.json")
        loc.put_exclusive("leases/shard-000001/zarr.json", b"third")  # free again
        assert loc.get("leases/shard-000001/zarr.json") == b"third"

    def test_put_exclusive_refuses_an_object_that_put_wrote(self, loc: Location) -> None:
        loc.put("marker", BLOB)
        with pytest.raises(FileExistsError):
            loc.put_exclusive("marker", b"other")
        assert loc.get("marker") == BLOB

    def test_simultaneous_exclusive_creations_let_exactly_one_win(self, loc: Location,
                                                                  store_url: str) -> None:
        won: list[int] = []
        refused: list[int] = []
        start = threading.Barrier(8)

        def create(i: int) -> None:
            mine = Location.from_url(store_url)  # each contender with its own Location
            start.wait()
            try:
                mine.put_exclusive("commits/shard-000000/zarr.json", f"writer {i}".encode())
                won.append(i)
            except FileExistsError:
                refused.append(i)
        threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1, won
        assert sorted(won + refused) == list(range(8))
        assert loc.get("commits/shard-000000/zarr.json") == f"writer {won[0]}".encode()

    # --- exists, delete ----------------------------------------------------------------------

    def test_exists_follows_put_and_delete(self, loc: Location) -> None:
        assert not loc.exists("obj")
        loc.put("obj", BLOB)
        assert loc.exists("obj")
        loc.delete("obj")
        assert not loc.exists("obj")
        with pytest.raises(FileNotFoundError):
            loc.get("obj")

    def test_deleting_what_is_not_there_is_no_error(self, loc: Location) -> None:
        loc.delete("never/there")
        loc.put("once", b"1")
        loc.delete("once")
        loc.delete("once")
        assert loc.list("") == []

    def test_deleting_a_folders_last_object_leaves_no_folder(self, loc: Location) -> None:
        loc.put("keep", b"k")
        loc.put("folder/only", b"o")
        loc.put("other/a", b"a")
        loc.put("other/b", b"b")
        loc.delete("folder/only")
        loc.delete("other/a")
        assert loc.list("") == ["keep", "other"]
        assert loc.list("other") == ["b"]

    # --- listing and sizes -------------------------------------------------------------------

    def test_list_names_what_is_directly_under_a_path_sorted(self, loc: Location) -> None:
        for rel in ("d/b", "d/a", "d/sub/y", "d/sub/x", "top", "d/sub/deeper/z"):
            loc.put(rel, rel.encode())
        assert loc.list("") == ["d", "top"]
        assert loc.list("d") == ["a", "b", "sub"]
        assert loc.list("d/sub") == ["deeper", "x", "y"]
        assert loc.list("d/sub/deeper") == ["z"]
        assert loc.list("nowhere") == []

    def test_size_and_du_count_the_bytes(self, loc: Location) -> None:
        objects = {"d/a": BLOB, "d/sub/b": b"b" * 77, "e": b"eee"}
        loc.put_many(objects)
        for rel, data in objects.items():
            assert loc.size(rel) == len(data)
        assert loc.du("d") == len(BLOB) + 77
        assert loc.du("d/sub") == 77
        assert loc.du("") == len(BLOB) + 77 + 3
        assert loc.du("nowhere") == 0

    def test_invalidate_shows_what_another_writer_did(self, loc: Location) -> None:
        loc.put("d/a", b"a")
        assert loc.list("d") == ["a"]
        other = self.other_view(loc)
        other.put("d/b", b"from the other")
        loc.invalidate()
        assert loc.list("d") == ["a", "b"]
        assert loc.get("d/b") == b"from the other"
        other.delete("d/a")
        loc.invalidate()
        assert not loc.exists("d/a")
        assert loc.list("d") == ["b"]

    # --- addressing --------------------------------------------------------------------------

    def test_paths_and_children_address_the_same_objects(self, loc: Location,
                                                         store_url: str) -> None:
        assert not loc.root.endswith("/")
        assert loc.url == store_url
        assert Location.from_url(f"{store_url}/").root == loc.root
        assert loc.path("") == loc.root
        assert loc.path("a/b") == f"{loc.root}/a/b"
        child = loc.child("sub")
        assert child.url == f"{store_url}/sub"
        assert child.root == loc.path("sub")
        assert child.is_local == loc.is_local
        child.put("x", b"from the child")
        assert loc.get("sub/x") == b"from the child"
        assert loc.list("sub") == ["x"]
        assert child.list("") == ["x"]
        assert loc.child("sub").child("deeper").root == loc.path("sub/deeper")

    def test_is_local_only_on_the_local_filesystem(self, loc: Location) -> None:
        assert loc.is_local is self.local

    # --- zarr --------------------------------------------------------------------------------

    def test_zarr_reads_what_the_location_wrote_and_back(self, loc: Location) -> None:
        group = {"zarr_format": 3, "node_type": "group", "attributes": {"actstore": {"k": 1}}}
        loc.put("zarr.json", json.dumps(group).encode())
        opened = zarr.open_group(store=loc.zarr_store(), mode="r+")
        assert opened.attrs["actstore"] == {"k": 1}
        values = np.arange(30, dtype=np.float32).reshape(10, 3)
        array = opened.create_array("x", shape=(10, 3), chunks=(5, 3), dtype="float32")
        array[:] = values
        assert loc.get_json("x/zarr.json")["shape"] == [10, 3]
        assert "x" in loc.list("")
        read_only = zarr.open_array(store=loc.zarr_store(read_only=True), path="x", mode="r")
        assert np.array_equal(np.asarray(read_only[:]), values)
        with pytest.raises(ValueError, match="read-only"):
            read_only[0] = 1.0
        assert np.array_equal(np.asarray(read_only[:]), values)

    # --- preflight ---------------------------------------------------------------------------

    def test_preflight_accepts_a_fresh_root_and_leaves_nothing(self, loc: Location) -> None:
        loc.preflight("--out")
        assert loc.list("") == []  # no probe left behind
        loc.put("after", b"ok")
        loc.preflight("--out")  # a root holding objects is fine too
        assert loc.list("") == ["after"]


@pytest.mark.parametrize("store_url", ["memory"], indirect=True)
class TestMemoryLocation(LocationTests):
    """fsspec's memory filesystem (exclusive creation by its `xb` mode)."""

    def test_preflight_checks_nothing_and_makes_nothing(self, store_url: str) -> None:
        loc = Location.from_url(store_url)
        loc.preflight("--out")
        assert not loc.fs.exists(loc.root)


@pytest.mark.parametrize("store_url", ["local"], indirect=True)
class TestLocalLocation(LocationTests):
    """A local folder (rename, link and fsync)."""

    local = True

    def test_preflight_creates_the_folder(self, store_url: str) -> None:
        assert not os.path.exists(store_url)
        Location.from_url(store_url).preflight("--out")
        assert os.path.isdir(store_url)

    def test_preflight_refuses_a_file_in_one_line(self, store_url: str) -> None:
        Path(store_url).write_text("")
        with pytest.raises(StoreAccessError) as err:
            Location.from_url(store_url).preflight("--out")
        assert str(err.value) == f"--out {store_url} is a file, not a folder"

    def test_preflight_refuses_a_folder_that_cannot_be_made(self, store_url: str) -> None:
        Path(store_url).write_text("")
        root = f"{store_url}/store"  # below a file: no folder can be made there
        with pytest.raises(StoreAccessError) as err:
            Location.from_url(root).preflight("--store")
        assert str(err.value) == f"--store {root} is not writable: Not a directory"

    def test_puts_leave_no_temporary_files(self, loc: Location, store_url: str) -> None:
        loc.put("d/a", BLOB)
        loc.put_many({"d/b": b"b", "d/c": b"c"})
        loc.put_exclusive("d/e", b"e")
        with pytest.raises(FileExistsError):
            loc.put_exclusive("d/e", b"again")
        assert sorted(os.listdir(Path(store_url) / "d")) == ["a", "b", "c", "e"]

    def test_reading_a_folder_fails_naming_it(self, loc: Location) -> None:
        # local reads go through os.pread: a folder must not read as an empty object
        loc.put("d/a", BLOB)
        for read in (loc.get, lambda rel: loc.get_range(rel, 0, 4)):
            with pytest.raises(IsADirectoryError, match=r"not a file: .*/d."):
                read("d")


@pytest.mark.parametrize("store_url", ["s3"], indirect=True)
class TestS3Location(LocationTests):
    """S3 through s3fs, against moto's server on 127.0.0.1 (exclusive creation by
    If-None-Match)."""

    def test_preflight_refuses_a_missing_bucket_in_one_line(self, store_url: str) -> None:
        bucket = f"no-such-bucket-{uuid.uuid4().hex[:8]}"
        url = store_url.replace("s3://actstore-test/", f"s3://{bucket}/")
        with pytest.raises(StoreAccessError) as err:
            Location.from_url(url).preflight("--out")
        assert str(err.value) == (f"bucket '{bucket}' of --out {url} does not exist (or these "
                                  "credentials cannot see it); create it first")


@pytest.mark.parametrize("store_url", ["gs"], indirect=True)
class TestGcsLocation(LocationTests):
    """GCS through gcsfs, against gcp-storage-emulator on 127.0.0.1 (exclusive creation by
    ifGenerationMatch=0; tests/gcs.py adds it, and suffix ranges, where the emulator lacks
    them)."""

    def test_preflight_refuses_a_missing_bucket_in_one_line(self, store_url: str) -> None:
        bucket = f"no-such-bucket-{uuid.uuid4().hex[:8]}"
        url = store_url.replace("gs://actstore-test/", f"gs://{bucket}/")
        with pytest.raises(StoreAccessError) as err:
            Location.from_url(url).preflight("--out")
        assert str(err.value) == (f"bucket '{bucket}' of --out {url} does not exist (or these "
                                  "credentials cannot see it); create it first")


@pytest.mark.parametrize("store_url", ["s3", "gs"], indirect=True)
def test_an_exclusive_create_retried_after_a_lost_answer_is_ours(
        store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A network fault that loses the answer to a create makes the client send it again, and
    the second attempt finds the object the first made: that is ours (same bytes), while an
    object with other bytes still refuses (the failure an outage test met under load: a
    writer refused its own lease)."""
    loc = Location.from_url(store_url)
    real = loc.fs.pipe_file
    sent: list[str] = []

    def answer_lost(path: str, data: bytes, **kw: object) -> None:
        sent.append(path)
        real(path, data, **kw)  # the server made it; the client never heard
        real(path, data, **kw)  # its retry: FileExistsError
    monkeypatch.setattr(loc.fs, "pipe_file", answer_lost)
    loc.put_exclusive("leases/shard-000002/zarr.json", b"writer a, 12:00:00.123456")
    assert len(sent) == 1
    with pytest.raises(FileExistsError):
        loc.put_exclusive("leases/shard-000002/zarr.json", b"writer b, 12:00:00.654321")
    assert loc.get("leases/shard-000002/zarr.json") == b"writer a, 12:00:00.123456"


# --- access_errors: a backend's credential or permission failure as one clear error ---------

def test_permission_and_credential_failures_become_a_store_access_error() -> None:
    class NoCredentialsError(Exception):  # botocore's, matched by its name
        pass

    for error in (PermissionError("access denied"), NoCredentialsError("no keys found")):
        with pytest.raises(StoreAccessError) as caught, access_errors("s3://bucket/store"):
            raise error
        message = str(caught.value)
        assert message.startswith(f"cannot access s3://bucket/store: {type(error).__name__}: "
                                  f"{error}. Check the credentials")
        assert "AWS_ACCESS_KEY_ID" in message
        assert caught.value.__cause__ is error


def test_other_errors_pass_through_access_errors_unchanged() -> None:
    for error in (ValueError("bad value"), FileNotFoundError("gone"),
                  StoreNotFoundError("no actstore store at x")):
        with pytest.raises(type(error)) as caught, access_errors("s3://bucket/store"):
            raise error
        assert caught.value is error
        assert isinstance(caught.value, StoreError) == isinstance(error, StoreNotFoundError)


# --- what the store gets from its Location ----------------------------------------------------

@pytest.mark.usefixtures("s3_endpoint")
def test_missing_s3_credentials_name_the_url_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # A storage option no other test uses gives a fresh s3fs instance, which looks the (now
    # missing) credentials up again; cached instances keep theirs.
    opts = {"config_kwargs": {"user_agent_extra": "no-credentials-test"}}
    url = "s3://actstore-test/no-credentials"
    with pytest.raises(StoreAccessError, match=r"cannot access s3://actstore-test/no-cr.*"
                                               r"AWS_ACCESS_KEY_ID"):
        ActivationStore.open(url, storage_options=opts)
    with pytest.raises(StoreAccessError, match="NoCredentialsError"):
        JobLock(Location.from_url(url, opts), "job").acquire()


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_local_store_files_follow_the_umask(tmp_path: Path, mask: int) -> None:
    """Published objects get the modes a plain open() would, so a store on a shared
    filesystem is readable by the users the umask lets in (mkstemp alone gives 0600)."""
    old = os.umask(mask)
    try:
        store = new_store(str(tmp_path / "s"))
        fill_store(store)
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "s").rglob("*") if p.is_file()]
    assert len(files) > 10
    modes = {oct(p.stat().st_mode & 0o777) for p in files}
    assert modes == {oct(0o666 & ~mask)}
