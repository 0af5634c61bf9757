"""What the demo loads once at start-up and shares (read-only) between requests."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from llara.constants import RECOMMENDER_DIR
from llara.data import SequenceDataset, load_dataset
from llara.recommenders import RECOMMENDERS, SequentialRecommender, load_recommender

CHECKPOINTS = RECOMMENDER_DIR


def item_labels(ds: SequenceDataset) -> list[str]:
    """One unique, human-readable label per item: the title with its year (and the id where even that repeats)."""
    cat = ds.catalog
    labels = []
    for title, year in zip(cat.titles, cat.years):
        labels.append(f"{title} ({year})" if year and not title.endswith(f"({year})") else title)
    seen: dict[str, int] = {}
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
    return [f"{label} [#{cat.raw_ids[i]}]" if seen[label] > 1 else label for i, label in enumerate(labels)]


@dataclass
class Studio:
    """The dataset, its item labels and the committed recommenders."""

    dataset: SequenceDataset
    recommenders: dict[str, SequentialRecommender]
    labels: list[str] = field(default_factory=list)
    by_label: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, checkpoints: Path = CHECKPOINTS, dataset: str = "movielens") -> "Studio":
        ds = load_dataset(dataset)
        models = {}
        for name in RECOMMENDERS:
            stem = checkpoints / ds.name / name
            if stem.with_suffix(".json").is_file():
                models[name] = load_recommender(stem, n_items=ds.n_items)
        if not models:
            raise FileNotFoundError(f"no recommender checkpoints in {checkpoints / ds.name}: run `make recommenders`")
        labels = item_labels(ds)
        return cls(ds, models, labels, {label: i for i, label in enumerate(labels)})
