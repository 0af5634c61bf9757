"""Sequential recommenders whose item embeddings LLaRA projects: SASRec, GRU4Rec, Caser.

>>> from llara.recommenders import build_recommender, load_recommender
>>> model = build_recommender("sasrec", n_items=1682)
>>> model = load_recommender("checkpoints/recommenders/movielens/sasrec")   # .safetensors + .json
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..checkpoint import CheckpointError, load_tensors, read_json, save_tensors, write_json
from .base import SequentialRecommender
from .caser import Caser
from .gru4rec import GRU4Rec
from .sasrec import SASRec

RECOMMENDERS: dict[str, type[SequentialRecommender]] = {cls.name: cls for cls in (SASRec, GRU4Rec, Caser)}


def build_recommender(name: str, n_items: int, **kwargs: Any) -> SequentialRecommender:
    """Instantiate a recommender by name; unknown names list the valid ones."""
    if name not in RECOMMENDERS:
        raise ValueError(f"unknown recommender {name!r}; valid recommenders: {', '.join(RECOMMENDERS)}")
    return RECOMMENDERS[name](n_items=n_items, **kwargs)


def save_recommender(model: SequentialRecommender, stem: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write ``<stem>.safetensors`` and ``<stem>.json`` (architecture config, weights hash, ``meta``)."""
    stem = Path(stem)
    digest = save_tensors(stem.with_suffix(".safetensors"), model.state_dict())
    write_json(stem.with_suffix(".json"), {"config": model.config(), "weights_sha256": digest, **(meta or {})})
    return stem


def load_recommender(stem: str | Path, n_items: int | None = None) -> SequentialRecommender:
    """Rebuild a saved recommender (eval mode). ``n_items`` checks it fits the dataset it will score."""
    stem = Path(stem)
    stem = stem.with_suffix("") if stem.suffix in {".json", ".safetensors"} else stem
    info = read_json(stem.with_suffix(".json"))
    config = dict(info.get("config", {}))
    name = config.pop("model", None)
    if name not in RECOMMENDERS:
        raise CheckpointError(f"{stem}.json names no known recommender ({name!r}); valid: {', '.join(RECOMMENDERS)}")
    if n_items is not None and config.get("n_items") != n_items:
        raise CheckpointError(f"{stem} was trained on {config.get('n_items')} items but the dataset has {n_items}")
    if "heights" in config:
        config["heights"] = tuple(config["heights"])
    model = build_recommender(name, **config)
    state = load_tensors(stem.with_suffix(".safetensors"), expected_sha256=info.get("weights_sha256"))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{stem}.safetensors does not fit a {name} with config {config}: {err}") from err
    return model.eval()


def read_recommender_meta(stem: str | Path) -> dict[str, Any]:
    return read_json(Path(stem).with_suffix(".json"))


__all__ = ["Caser", "GRU4Rec", "RECOMMENDERS", "SASRec", "SequentialRecommender", "build_recommender",
           "load_recommender", "read_recommender_meta", "save_recommender"]
