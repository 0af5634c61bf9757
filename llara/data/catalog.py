"""The item catalog: dense item indices, clean display titles, years and genres.

Item indices are dense and 0-based (``0 .. len(catalog) - 1``); index ``len(catalog)`` is reserved for padding,
which is also how the original LLaRA release encodes it (LastFM: 4,606 artists, padding id 4606).
"""
from __future__ import annotations

import difflib
import re
from collections import defaultdict
from dataclasses import dataclass, field

_YEAR = re.compile(r"\s*\((\d{4})\)\s*$")
# MovieLens files "The Usual Suspects" as "Usual Suspects, The", sometimes followed by an alternate title in
# parentheses: "Horseman on the Roof, The (Hussard sur le toit, Le)". The body is matched lazily so a title that
# contains the article earlier ("Good, The Bad and The Ugly, The") still moves only its final article.
_TRAILING_ARTICLE = re.compile(
    r"^(?P<body>.+?), (?P<art>The|A|An|Il|La|Le|Les|L'|Das|Der|Die|El|Los|Las)(?P<rest>(?: \(.*\))?)$"
)


def clean_title(raw: str) -> tuple[str, int | None]:
    """Normalise a raw catalog title to ``(display title, year)``.

    Drops a trailing ``" (YYYY)"``, moves a trailing article to the front (``"American Werewolf in London, An"``
    becomes ``"An American Werewolf in London"``; the original release produced "A American Werewolf in Londonn")
    and folds runs of white space. Returns an empty title for placeholders such as ``"unknown"``; the catalog
    replaces those with a non-empty name, because an empty candidate is a substring of every answer.
    """
    text = " ".join(str(raw).split())
    year = None
    match = _YEAR.search(text)
    if match:
        year = int(match.group(1))
        text = text[: match.start()].rstrip()
    match = _TRAILING_ARTICLE.match(text)
    if match:
        art = match.group("art")
        sep = "" if art.endswith("'") else " "
        text = f"{art}{sep}{match.group('body')}{match.group('rest')}"
    if text.lower() in {"", "unknown", "nan", "none"}:
        text = ""
    return text, year


class UnknownTitle(ValueError):
    """A title that names no item of the catalog; the message suggests the closest titles."""


@dataclass(frozen=True)
class Catalog:
    """Items of one dataset, indexed densely from 0.

    ``titles`` are unique up to case wherever the raw data allows: two different items that normalise to the
    same title are told apart by their year ("Hamlet (1948)" / "Hamlet (1996)"). Items that remain identical
    (ML-100K lists a few movies twice) are never drawn together as candidates (see ``protocol``).
    """

    domain: str  # "movie", "artist" or "game": picks the prompt wording
    titles: tuple[str, ...]
    raw_ids: tuple[str, ...]  # the id in the source data, for tracing an item back
    years: tuple[int | None, ...]
    genres: tuple[tuple[str, ...], ...]
    _by_key: dict[str, list[int]] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.titles)
        if not (len(self.raw_ids) == len(self.years) == len(self.genres) == n):
            raise ValueError("catalog columns have different lengths")
        if n == 0:
            raise ValueError("a catalog needs at least one item")
        for i, title in enumerate(self.titles):
            if not title.strip():
                raise ValueError(f"item {i} (raw id {self.raw_ids[i]}) has an empty title")
            self._by_key.setdefault(title.casefold(), []).append(i)

    @classmethod
    def from_raw(
        cls,
        domain: str,
        raw_titles: list[str],
        raw_ids: list[str],
        genres: list[tuple[str, ...]] | None = None,
        years: list[int | None] | None = None,
    ) -> Catalog:
        """Build a catalog from raw titles: clean them, name placeholders, disambiguate clashes by year."""
        cleaned = [clean_title(t) for t in raw_titles]
        titles = [t or f"Unknown {domain} #{rid}" for (t, _), rid in zip(cleaned, raw_ids)]
        found_years = [y for _, y in cleaned]
        if years is not None:
            found_years = [y if y is not None else fy for y, fy in zip(years, found_years)]
        groups: dict[str, list[int]] = defaultdict(list)
        for i, t in enumerate(titles):
            groups[t.casefold()].append(i)
        for members in groups.values():
            distinct_years = {found_years[i] for i in members}
            if len(members) > 1 and len(distinct_years) > 1:
                for i in members:
                    if found_years[i] is not None:
                        titles[i] = f"{titles[i]} ({found_years[i]})"
        return cls(
            domain=domain,
            titles=tuple(titles),
            raw_ids=tuple(str(r) for r in raw_ids),
            years=tuple(found_years),
            genres=tuple(genres) if genres is not None else tuple(() for _ in titles),
        )

    def __len__(self) -> int:
        return len(self.titles)

    @property
    def pad_id(self) -> int:
        """The padding index used in fixed-length sequences (one past the last item)."""
        return len(self.titles)

    def title(self, item: int) -> str:
        self.check_ids([item])
        return self.titles[item]

    def title_key(self, item: int) -> str:
        """Case-folded title: two items with the same key must never both be candidates."""
        return self.titles[item].casefold()

    def check_ids(self, items: list[int] | tuple[int, ...], what: str = "item id") -> None:
        """Raise a ``ValueError`` naming the first id outside ``0 .. len(self) - 1``."""
        for item in items:
            if not isinstance(item, (int,)) and not hasattr(item, "__index__"):
                raise TypeError(f"{what} must be an integer, got {type(item).__name__}: {item!r}")
            if not 0 <= int(item) < len(self.titles):
                raise ValueError(f"{what} {item} is out of range: this catalog has items 0..{len(self.titles) - 1}")

    def find(self, title: str) -> int:
        """The item whose display title matches ``title`` (case-insensitive); a clear error with suggestions."""
        key = " ".join(str(title).split()).casefold()
        hits = self._by_key.get(key)
        if hits:
            return hits[0]
        close = difflib.get_close_matches(key, list(self._by_key), n=3, cutoff=0.6)
        hint = "; did you mean " + ", ".join(repr(self.titles[self._by_key[c][0]]) for c in close) if close else ""
        raise UnknownTitle(f"no {self.domain} titled {title!r} in the catalog{hint}")
