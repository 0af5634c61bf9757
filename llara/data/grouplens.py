"""MovieLens-100K in its original GroupLens form: the ``ml-100k`` folder of ``ml-100k.zip``.

Two files are read, as the dataset's README describes them:
- ``u.data``: one rating per line, ``user id \\t item id \\t rating \\t timestamp`` (tab-separated, file order kept:
  the chronological tie order of the sequences depends on it);
- ``u.item``: one movie per line, ``id | title | release date | video release date | IMDb URL | 19 genre flags``
  (pipe-separated, latin-1; titles carry the year in parentheses, a few end in a space, item 267 is "unknown" with
  empty fields).

Both come back as columns with the names and values of the packaged parquet copy (``llara.data.movielens``), so
either source gives the same samples. ``download`` fetches the zip from GroupLens into the cache (checked against
the MD5 GroupLens publishes beside it) where no packaged copy is installed, e.g. on a Hugging Face Space.
"""
from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path

from ..sources import SourceUnavailable, fetch_url, say

URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
# GroupLens publishes this digest as ml-100k.zip.md5 next to the zip (the same value other loaders check, e.g.
# eli-osherovich/papers_with_code datasets/movielens/dl_config.py).
ZIP_MD5 = "0e33842e24a9c977be4e0107933c0723"
DIR_ENV = "LLARA_ML100K_DIR"  # a local ml-100k folder (u.data, u.item), used instead of any other copy
N_RATINGS, N_ITEMS = 100_000, 1682
GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")
FILES = ("u.data", "u.item")
_ITEM_FIELDS = 5 + len(GENRES)


class MalformedGroupLens(SourceUnavailable):
    """A folder that is not (or not all of) the GroupLens ml-100k files."""


def _lines(path: Path, encoding: str):
    if not path.is_file():
        raise MalformedGroupLens(f"{path.parent} is not an ml-100k folder: {path.name} is missing "
                                 f"(it needs {' and '.join(FILES)} from {URL})")
    with open(path, encoding=encoding, newline="") as fh:
        for number, line in enumerate(fh, start=1):
            line = line.rstrip("\r\n")  # only the line break: a few titles end in a space that is part of them
            if line:
                yield number, line


def read_ratings(folder: str | Path) -> dict[str, list[int]]:
    """``u.data`` as columns ``user_id, movie_id, rating, timestamp`` in file order (all 100,000 or an error)."""
    path = Path(folder) / "u.data"
    cols: dict[str, list[int]] = {"user_id": [], "movie_id": [], "rating": [], "timestamp": []}
    for number, line in _lines(path, "ascii"):
        fields = line.split("\t")
        try:
            if len(fields) != 4:
                raise ValueError(f"{len(fields)} tab-separated fields instead of 4")
            for key, value in zip(cols, fields):
                cols[key].append(int(value))
        except ValueError as err:
            raise MalformedGroupLens(f"{path}, line {number}: {err}: {line[:80]!r}") from None
    _check_size(path, len(cols["user_id"]), N_RATINGS, "ratings")
    return cols


def read_items(folder: str | Path) -> dict[str, list]:
    """``u.item`` as columns ``movie_id, movie_title, release_date`` and one 0/1 column per genre (all 1,682 movies or
    an error); empty fields are None, as in the packaged copy."""
    path = Path(folder) / "u.item"
    cols: dict[str, list] = {"movie_id": [], "movie_title": [], "release_date": [], **{g: [] for g in GENRES}}
    for number, line in _lines(path, "latin-1"):
        fields = line.split("|")
        try:
            if len(fields) != _ITEM_FIELDS:
                raise ValueError(f"{len(fields)} pipe-separated fields instead of {_ITEM_FIELDS}")
            cols["movie_id"].append(int(fields[0]))
            cols["movie_title"].append(fields[1])
            cols["release_date"].append(fields[2] or None)
            for genre, flag in zip(GENRES, fields[5:]):
                if flag not in ("0", "1"):
                    raise ValueError(f"genre flag {genre!r} is {flag!r}, not 0 or 1")
                cols[genre].append(int(flag))
        except ValueError as err:
            raise MalformedGroupLens(f"{path}, line {number}: {err}: {line[:80]!r}") from None
    _check_size(path, len(cols["movie_id"]), N_ITEMS, "movies")
    return cols


def locate(folder: str | Path) -> Path:
    """``folder``, or its ``ml-100k`` sub-folder when it is the folder the zip was extracted into."""
    folder = Path(folder)
    if not (folder / "u.data").is_file() and (folder / "ml-100k" / "u.data").is_file():
        return folder / "ml-100k"
    return folder


def _check_size(path: Path, found: int, expected: int, what: str) -> None:
    if found != expected:
        raise MalformedGroupLens(f"{path} holds {found:,} {what}; MovieLens-100K has {expected:,} (another MovieLens?)")


def download(cache: Path) -> Path:
    """``cache/ml-100k`` with u.data and u.item, fetched from GroupLens and checked on first use.

    The zip is verified against GroupLens' MD5 and the extracted files against the dataset's size before the folder
    is renamed into place, so a folder at that path is always complete."""
    target = cache / "ml-100k"
    if all((target / name).is_file() for name in FILES):
        return target
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=cache, prefix=".ml-100k.tmp-"))
    try:
        archive = fetch_url(URL, work / "ml-100k.zip", "MovieLens-100K (GroupLens)", md5=ZIP_MD5)
        out = work / "ml-100k"
        out.mkdir()
        try:
            with zipfile.ZipFile(archive) as zf:
                for name in FILES:  # only what we read; the rest of the archive stays unread
                    with zf.open(f"ml-100k/{name}") as src, open(out / name, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        except (zipfile.BadZipFile, KeyError) as err:
            raise MalformedGroupLens(f"{URL} is not the expected archive ({err})") from err
        read_ratings(out), read_items(out)  # the whole format checked before the folder counts as ready
        if target.exists():  # an incomplete folder from elsewhere: never trusted
            shutil.rmtree(target, ignore_errors=True)
        try:
            out.rename(target)
        except OSError:
            if not all((target / name).is_file() for name in FILES):  # lost a race to another process: fine
                raise
        say(f"MovieLens-100K ready in {target}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target
