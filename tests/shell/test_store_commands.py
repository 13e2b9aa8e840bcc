"""`actstore info | verify | ls` (actstore.shell.store_commands): output contracts and
exit codes."""

from __future__ import annotations

import json

import pytest

from actstore.shell.main import main
from actstore.store import format as fmt
from tests.helpers import HOOKS, fill_store, make_spec, new_store


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_info_json_has_the_documented_keys(store_url: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    store = new_store(store_url)
    fill_store(store, shards=[0, 1])
    code, out, _ = run(["info", store_url, "--json"], capsys)
    assert code == 0
    info = json.loads(out)
    assert info["key"] == make_spec().key
    assert info["complete"] is False
    assert (info["shards_done"], info["num_shards"]) == (2, 4)
    assert info["num_rows"] == 104
    # bytes of the hook's shard objects as they lie in the store, not as the markers say
    on_disk = sum(store.location.size(fmt.shard_key(f"activations/{HOOKS[0]}", s))
                  for s in (0, 1))
    assert info["hooks"][HOOKS[0]] == {
        "array": f"activations/{HOOKS[0]}", "d_model": 12, "dtype": "bfloat16",
        "raw_bytes": 64 * 12 * 2, "compressed_bytes": on_disk,
        "compression_ratio": pytest.approx(64 * 12 * 2 / on_disk)}
    assert info["row_index"] == {"context": "index/context", "position": "index/position",
                                 "token": "index/token"}
    assert info["contexts"] == "contexts"
    code, out, _ = run(["info", store_url], capsys)
    assert code == 0
    assert "2/4 shards" in out


def test_verify_exit_codes_name_the_problem(store_url: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    store = new_store(store_url)
    fill_store(store)
    code, out, _ = run(["verify", store_url], capsys)
    assert (code, out.strip()) == (0, "OK: 4 shards, 104 rows checked")
    key = fmt.shard_key(fmt.index_path("token"), 2)
    blob = bytearray(store.location.get(key))
    blob[len(blob) // 3] ^= 0x55
    store.location.put(key, bytes(blob))
    code, _, err = run(["verify", store_url], capsys)
    assert code == 1
    assert f"shard 2: object {key} differs from what was committed" in err


def test_missing_store_exits_2_with_a_message(store_url: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["info", store_url], capsys)
    assert code == 2
    assert f"no actstore store at {store_url}" in err


def test_ls_lists_stores_under_a_root(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    a = new_store(f"{store_url}/a")
    fill_store(a, shards=[0])
    new_store(f"{store_url}/nested/b", dtype="float16")
    code, out, _ = run(["ls", store_url, "--json"], capsys)
    assert code == 0
    listed = {s["url"].rstrip("/").rsplit("/", 1)[-1]: s for s in json.loads(out)}
    assert set(listed) == {"a", "b"}
    assert listed["a"]["shards_done"] == 1
    assert listed["b"]["spec"]["dtype"] == "float16"


def test_verify_reports_every_problem_and_keeps_going(store_url: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    store = new_store(store_url)
    fill_store(store)
    store.location.delete(fmt.shard_key(f"activations/{HOOKS[0]}", 1))  # a missing object
    key = fmt.shard_key(f"activations/{HOOKS[1]}", 2)  # and a corrupt chunk elsewhere
    blob = bytearray(store.location.get(key))
    blob[5] ^= 0xFF
    store.location.put(key, bytes(blob))
    code, out, err = run(["verify", store_url], capsys)
    assert code == 1
    assert "4 shards, 104 rows checked" in out  # every shard was looked at
    assert f"shard 1: object activations/{HOOKS[0]}/c/1/0 is missing" in err
    assert f"shard 1: {store_url}: shard object activations/{HOOKS[0]}/c/1/0 does not exist" in err
    assert f"shard 2: object {key} differs from what was committed" in err
    assert "shard 2:" in err
    assert "crc32c" in err


def test_ls_flags_a_bad_store_and_lists_the_others(store_url: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    fill_store(new_store(f"{store_url}/good"))
    bad = new_store(f"{store_url}/bad")
    bad.location.put("zarr.json", b"{not json")
    code, out, err = run(["ls", store_url], capsys)
    assert code == 0
    assert "/good" in out
    assert "/bad" not in out
    assert f"BAD STORE {store_url}/bad: JSONDecodeError" in err
