"""Where LastFM comes from without --data-dir: a folder named by $LLARA_LASTFM_DIR, a checked and converted copy in
the cache, or a download (allowed only when asked for); a downloaded file that is not the release is refused before
anything is unpickled."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from llara.checkpoint import sha256_file
from llara.data import DatasetUnavailable, load_dataset
from llara.data import release_source as rs

from .conftest import write_toy_dataset
from .test_data import SHARED_LASTFM
from .test_security import _Payload


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("LLARA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LLARA_LASTFM_DIR", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.setenv("LLARA_DOWNLOAD", "0")


def _pickled_release(folder: Path) -> dict[str, str]:
    """The toy dataset as the release ships it (pandas pickles + id2name.txt); returns the files' SHA-256."""
    import pandas as pd

    for split, name in rs.PICKLE_FILES.items():
        rows = [json.loads(line) for line in (folder / f"{split}.jsonl").read_text().splitlines() if line.strip()]
        pd.DataFrame(rows).to_pickle(folder / name)
        (folder / f"{split}.jsonl").unlink()
    return {name: sha256_file(folder / name) for name in ["id2name.txt", *rs.PICKLE_FILES.values()]}


def test_without_a_source_the_error_names_every_way(offline):
    with pytest.raises(DatasetUnavailable) as err:
        load_dataset("lastfm")
    message = str(err.value)
    assert "not on any package registry" in message and "--data-dir" in message and "LLARA_LASTFM_DIR" in message
    assert "LLARA_DOWNLOAD=1" in message and "joyliao7777/LLaRA" in message and "SHA-256" in message


def test_a_named_folder_wins(offline, monkeypatch, tmp_path):
    folder = write_toy_dataset(tmp_path / "lastfm")
    monkeypatch.setenv("LLARA_LASTFM_DIR", str(folder))
    assert rs.release_dir("lastfm") == folder.resolve()
    monkeypatch.setenv("LLARA_LASTFM_DIR", str(tmp_path / "missing"))
    with pytest.raises(DatasetUnavailable, match="is not a folder"):
        load_dataset("lastfm")


def test_a_download_is_checked_converted_once_and_then_read_from_the_cache(offline, monkeypatch, tmp_path):
    hub = tmp_path / "hub"
    folder = write_toy_dataset(hub / "data" / "lastfm")
    want = {s: [json.loads(x) for x in (folder / f"{s}.jsonl").read_text().splitlines() if x.strip()] for s in rs.PICKLE_FILES}
    hashes = _pickled_release(folder)
    monkeypatch.setitem(rs.RELEASES["lastfm"], "sha256", hashes)
    fetched = []
    monkeypatch.setattr(rs, "hub_snapshot", lambda repo, what, allow_patterns: fetched.append(repo) or hub)
    monkeypatch.setenv("LLARA_DOWNLOAD", "1")
    target = rs.release_dir("lastfm")
    assert fetched == ["joyliao7777/LLaRA"] and (target / rs.MARKER).is_file()
    for split in rs.PICKLE_FILES:
        assert [json.loads(x) for x in (target / f"{split}.jsonl").read_text().splitlines()] == want[split]
    monkeypatch.setenv("LLARA_DOWNLOAD", "0")  # converted once: no download, no pickle needed any more
    assert rs.release_dir("lastfm") == target and fetched == ["joyliao7777/LLaRA"]


def test_a_download_that_is_not_the_release_is_never_unpickled(offline, monkeypatch, tmp_path):
    hub = tmp_path / "hub"
    folder = write_toy_dataset(hub / "lastfm")
    hashes = _pickled_release(folder)
    marker = tmp_path / "pwned"
    (folder / "Test_data.df").write_bytes(pickle.dumps(_Payload(marker)))  # swapped after the hashes were taken
    monkeypatch.setitem(rs.RELEASES["lastfm"], "sha256", hashes)
    monkeypatch.setattr(rs, "hub_snapshot", lambda repo, what, allow_patterns: hub)
    monkeypatch.setenv("LLARA_DOWNLOAD", "1")
    with pytest.raises(DatasetUnavailable, match="Test_data.df is not the released file .* nothing was unpickled"):
        rs.release_dir("lastfm")
    assert not marker.exists()
    assert not list((tmp_path / "cache").glob("datasets/lastfm*"))  # nothing half-converted left behind


@pytest.mark.skipif(not SHARED_LASTFM.is_dir(), reason="the shared LastFM release is not available")
def test_the_real_release_converts_to_the_rows_of_its_jsonl(offline, tmp_path):
    target = rs.convert_release(SHARED_LASTFM, tmp_path / "lastfm", rs.RELEASES["lastfm"]["sha256"])
    ours, theirs = load_dataset("lastfm", data_dir=target), load_dataset("lastfm", data_dir=SHARED_LASTFM)
    assert ours.fingerprint() == theirs.fingerprint()
