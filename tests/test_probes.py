"""llara.evaluation.probes and the probe helpers of llara.evaluation.evaluate on small synthetic data (no checkpoints, no
training)."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from llara.data import pad_histories
from llara.data.catalog import Catalog
from llara.data.protocol import Sample, SequenceDataset
from llara.evaluation.evaluate import parse_seeds, probe_row
from llara.evaluation.probes import (
    PROBE_GENRES,
    choices_and_hits,
    derangement,
    genre_probe,
    genre_probe_inputs,
    hits_and_swap,
    paired,
    popularity,
    prior_scorer,
    recommender_scorer,
)

NEG = float("-inf")


def make_catalog(genres: list[tuple[str, ...]]) -> Catalog:
    n = len(genres)
    return Catalog.from_raw("movie", [f"Movie {i}" for i in range(n)], [str(i) for i in range(n)], genres=genres,
                            years=[1990] * n)


def test_derangement():
    for n in (2, 3, 5, 17, 100):
        for seed in range(6):
            perm = derangement(n, seed)
            assert sorted(perm.tolist()) == list(range(n))
            assert not (perm == np.arange(n)).any()
            assert derangement(n, seed).tolist() == perm.tolist()
    assert derangement(50, 0).tolist() != derangement(50, 1).tolist()
    for n in (0, 1):
        with pytest.raises(ValueError):
            derangement(n, 0)


def test_choices_and_hits():
    scores = np.array([[1, 3, 3], [1, 3, 3], [5, 1, 2], [NEG, NEG, NEG], [2, 7, 1], [NEG, 1, 0]])
    cands = [(10, 11, 12), (10, 11, 12), (20, 21, 22), (30, 31, 32), (40, 41, 42), (50, 51, 52)]
    choices, hits = choices_and_hits(scores, cands, [11, 12, 20, 30, 41, 50])
    assert choices == [11, 11, 20, None, 41, 51]  # first max; None when nothing is finite
    assert hits.tolist() == [0, 0, 1, 0, 1, 0]  # ties at the top are misses, whichever tied item is the target
    assert choices_and_hits(scores, cands) == (choices, None)


# ---- swap test: 12 users, each candidate set holds every user's target (10u + 6) plus 8 far-away items -----------

USERS = 12
SAMPLES = [Sample(history=(150 + u, 10 * u + 5), target=10 * u + 6, user=u) for u in range(USERS)]


def candidate_sets(seed: int) -> list[tuple[int, ...]]:
    rng = np.random.default_rng(seed)
    sets = []
    for _ in SAMPLES:
        items = [s.target for s in SAMPLES] + [int(x) for x in rng.choice(np.arange(170, 200), 8, replace=False)]
        rng.shuffle(items)
        sets.append(tuple(items))
    return sets


CANDS = {seed: candidate_sets(seed) for seed in (0, 3, 7)}


def copy_last(histories, candidate_sets):  # the candidate closest to the last watched item: here, the target
    return np.array([[-abs(c - h[-1]) for c in cands] for h, cands in zip(histories, candidate_sets)], dtype=float)


def check_common(out):
    assert out["seeds"] == [0, 3, 7] and list(out["hr@1_per_seed"]) == [0, 3, 7]
    assert len(out["per_user"]) == USERS
    assert out["hr@1"] == pytest.approx(np.mean(list(out["hr@1_per_seed"].values())))
    assert out["hr@1"] == pytest.approx(np.mean(out["per_user"]), abs=1e-3)
    lo, hi = out["hr@1_ci95"]
    assert lo <= out["hr@1"] + 1e-9 and out["hr@1"] - 1e-9 <= hi


def test_swap_history_reader_changes_its_choices():
    out = hits_and_swap(copy_last, SAMPLES, CANDS, swap_seed=0)
    check_common(out)
    assert out["hr@1"] == 1.0 and out["hr@1_std"] == 0.0 and out["hr@1_ci95"] == (1.0, 1.0)
    assert out["hr@1_per_seed"] == {0: 1.0, 3: 1.0, 7: 1.0}
    assert out["swap"]["seed"] == 0
    assert out["swap"]["kept"] <= 0.1
    assert out["swap"]["hr@1"] <= 0.1
    assert "swap" not in hits_and_swap(copy_last, SAMPLES, CANDS, swap_seed=None)


def test_swap_history_free_prior_keeps_everything():
    prior = np.random.default_rng(1).random(200)
    prior[SAMPLES[0].target] += 1  # every set holds user 0's target: everyone picks it, only user 0 hits
    out = hits_and_swap(prior_scorer(prior), SAMPLES, CANDS, swap_seed=5)
    check_common(out)
    assert out["hr@1"] == pytest.approx(1 / USERS)
    assert out["per_user"][0] == 1.0 and sum(out["per_user"]) == 1.0
    assert out["swap"]["kept"] == 1.0
    assert out["swap"]["hr@1"] == pytest.approx(out["hr@1"])


# ---- popularity ---------------------------------------------------------------------------------------------------

def test_popularity_global_and_recent():
    catalog = make_catalog([()] * 6)
    train = [Sample((5,), 0, 1), Sample((5, 0), 1, 1), Sample((5, 0, 1), 2, 1),
             Sample((4,), 2, 2), Sample((4, 2), 3, 2), Sample((0,), 4, 3)]
    ds = SequenceDataset("toy", catalog, train, val=[Sample((0,), 5, 1)], test=[Sample((0, 5), 5, 2)])
    assert popularity(ds).tolist() == [1, 1, 2, 1, 1, 0]
    assert popularity(ds, recent=1).tolist() == [0, 0, 1, 1, 1, 0]
    assert popularity(ds, recent=2).tolist() == [0, 1, 2, 1, 1, 0]
    assert popularity(ds, recent=10).tolist() == popularity(ds).tolist()


# ---- genre probe --------------------------------------------------------------------------------------------------

def genre_data():
    """15 pure items per probed genre (War: 14, so War is the genre with 2 candidates), some tagged Comedy too,
    plus very popular mixed and non-probed items that must never be picked."""
    genres = []
    for g in PROBE_GENRES:
        genres += [(g, "Comedy") if k % 3 == 0 else (g,) for k in range(14 if g == "War" else 15)]
    n_pure = len(genres)
    genres += [(a, b) for a, b in zip(PROBE_GENRES, PROBE_GENRES[1:])] + [("Comedy",), ("Drama",)]
    prior = np.random.default_rng(0).random(len(genres))
    prior[n_pure:] += 10
    return make_catalog(genres), prior


def pure_ranked(catalog, prior, g):
    return sorted((i for i, gs in enumerate(catalog.genres)
                   if g in gs and not set(gs) & (set(PROBE_GENRES) - {g})), key=lambda i: -prior[i])


def test_genre_probe_inputs():
    catalog, prior = genre_data()
    cands, hists = genre_probe_inputs(catalog, prior, per_genre=6, length=5, pool=8, seed=3)
    assert len(cands) == 20 and len(set(cands)) == 20
    per_genre = Counter(g for c in cands for g in catalog.genres[c] if g in PROBE_GENRES)
    assert per_genre == {g: 2 if g == "War" else 3 for g in PROBE_GENRES}
    assert list(hists) == list(PROBE_GENRES)
    for g, rows in hists.items():
        ranked = pure_ranked(catalog, prior, g)
        n = per_genre[g]
        assert set(ranked[:n]) <= set(cands)  # the most popular pure items are the candidates
        assert len(rows) == 6
        for h in rows:
            assert len(h) == 5 and len(set(h)) == 5
            assert not set(h) & set(cands)
            assert set(h) <= set(ranked[n : n + 8])  # drawn from the next `pool` pure items
            for i in h:
                assert g in catalog.genres[i] and not set(catalog.genres[i]) & (set(PROBE_GENRES) - {g})
    assert genre_probe_inputs(catalog, prior, per_genre=6, length=5, pool=8, seed=3) == (cands, hists)
    assert genre_probe_inputs(catalog, prior, per_genre=6, length=5, pool=8, seed=4)[1] != hists
    _, default = genre_probe_inputs(catalog, prior)
    assert all(len(rows) == 10 and all(len(h) == 10 for h in rows) for rows in default.values())


def test_genre_probe_inputs_missing_genre():
    catalog, prior = genre_data()
    keep = [i for i, gs in enumerate(catalog.genres) if "Western" not in gs]
    small = make_catalog([catalog.genres[i] for i in keep])
    with pytest.raises(ValueError, match="Western"):
        genre_probe_inputs(small, prior[keep])


def test_genre_probe_history_reader_vs_history_free():
    catalog, prior = genre_data()

    def majority_genre(histories, candidate_sets):
        rows = []
        for h, cands in zip(histories, candidate_sets):
            major = Counter(g for i in h for g in catalog.genres[i] if g in PROBE_GENRES).most_common(1)[0][0]
            rows.append([float(major in catalog.genres[c]) + 0.01 * prior[c] for c in cands])
        return np.array(rows)

    reader = genre_probe(majority_genre, catalog, prior)
    assert all(v["in_genre"] == 1.0 for v in reader["genres"].values())
    assert reader["min_in_genre"] == 1.0 and reader["mean_in_genre"] == 1.0
    assert reader["distinct_top_answers"] == 7 and reader["distinct_answers"] == 7
    for g, v in reader["genres"].items():
        assert v["top_answer"] == catalog.titles[pure_ranked(catalog, prior, g)[0]]
    assert len(reader["candidates"]) == 20

    blind = genre_probe(prior_scorer(prior), catalog, prior)
    assert blind["distinct_top_answers"] == 1 and blind["distinct_answers"] == 1
    assert blind["min_in_genre"] == 0.0
    assert blind["mean_in_genre"] == pytest.approx(1 / 7)  # the one answer is pure: right for one genre only


def test_probe_row_on_a_tiny_dataset():
    catalog, prior = genre_data()
    rng = np.random.default_rng(0)
    train = [Sample(tuple(int(x) for x in rng.choice(len(catalog), 3, replace=False)), int(rng.integers(len(catalog))), u)
             for u in range(30)]
    test = [Sample(tuple(int(x) for x in rng.choice(len(catalog), 4, replace=False)), u, 100 + u) for u in range(8)]
    ds = SequenceDataset("toy", catalog, train, val=[], test=test)
    out = probe_row(prior_scorer(prior), ds, test[:6], [0, 2], 1, True, "test")
    assert out["seeds"] == [0, 2] and len(out["per_user"]) == 6
    assert out["swap"]["kept"] == 1.0 and out["genre"]["distinct_top_answers"] == 1
    direct = hits_and_swap(prior_scorer(prior), test[:6], {s: ds.candidates("test", seed=s)[:6] for s in (0, 2)}, 1)
    assert out["per_user"] == direct["per_user"]


# ---- paired comparison, seeds, recommender scorer -----------------------------------------------------------------

def test_paired():
    out = paired([1, 0, 1, 1, 0.5], [0, 0, 1, 0, 1])
    assert out["diff"] == pytest.approx(0.3)
    assert (out["a_better"], out["b_better"]) == (2, 1)
    lo, hi = out["ci95"]
    assert -0.5 <= lo <= 0.3 <= hi <= 1.0 and lo < hi
    assert paired([0, 1, 0], [1, 0, 0])["a_better"] == 1 and paired([0, 1, 0], [1, 0, 0])["diff"] == 0
    same = paired([0.2, 1, 0], [0.2, 1, 0])
    assert same == {"diff": 0.0, "ci95": (0.0, 0.0), "a_better": 0, "b_better": 0}
    with pytest.raises(ValueError):
        paired([1], [1, 0, 1])  # would broadcast without the check


def test_parse_seeds():
    assert parse_seeds("0,1,7") == [0, 1, 7]
    assert parse_seeds("10-12") == [10, 11, 12]
    assert parse_seeds(" 0, 3-5 ,9") == [0, 3, 4, 5, 9]
    assert parse_seeds("4") == [4]
    for bad in ("", " , ", "a", "1,1", "-3", "1-2,2", "1.5", "2-x"):
        with pytest.raises(ValueError):
            parse_seeds(bad)


def test_parse_seeds_reversed_range():
    with pytest.raises(ValueError):
        parse_seeds("1,5-3")


def test_recommender_scorer_matches_model_score():
    import torch

    from llara.recommenders import SASRec

    torch.manual_seed(0)
    model = SASRec(n_items=30, dim=8).eval()
    histories = [(1, 2, 3), (4,), tuple(range(15)), (29, 0, 7, 7)]  # one longer than max_len: the last 10 count
    cands = [(0, 5, 9), (1, 2, 3), (29, 28, 27), (7, 8, 6)]
    got = recommender_scorer(model)(histories, cands)
    seqs, lens = pad_histories([list(h) for h in histories], model.pad_id, model.max_len)
    with torch.no_grad():
        want = model.score(torch.from_numpy(seqs), torch.from_numpy(lens), torch.tensor(cands)).numpy()
    assert got.shape == (4, 3) and got.dtype.kind == "f"
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(got[0], recommender_scorer(model)([(4,)], [cands[0]])[0])  # it reads the history
