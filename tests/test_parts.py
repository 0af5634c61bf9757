"""Part ablation, all-position samples, modality dropout and language item features on a tiny in-memory LLaRA."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from llara.data import Sample
from llara.evaluation.parts import (
    all_position_samples,
    build_variant,
    hits_and_top1,
    main,
    model_parts,
    summarize_rows,
    variant_scores,
    variants,
)
from llara.metrics import cluster_paired
from llara.model.next_item import NextItemHead
from llara.prompt.batch import collate
from llara.training.train_stream import dropped_parts

from .test_next_item import CANDS, HIST, tiny_llara


def test_variants_cover_each_part_removed_and_alone():
    three = variants(("titles", "items", "user"))
    assert list(three) == ["full", "no titles", "no items", "no user", "titles only", "items only", "user only", "nothing"]
    assert three["titles only"] == {"items", "user"} and three["nothing"] == {"titles", "items", "user"}
    two = variants(("titles", "items"))  # "no titles" is "items only": one row, not two
    assert two == {"full": frozenset(), "no titles (items only)": {"titles"}, "no items (titles only)": {"items"},
                   "nothing": {"titles", "items"}}


def test_model_parts_follow_the_checkpoint():
    assert model_parts(tiny_llara(user_token=True)) == ("titles", "items", "user")
    assert model_parts(tiny_llara(user_token=False)) == ("titles", "items")


def test_removed_slots_carry_the_neutral_vector():
    model = tiny_llara()
    prompt = model.builder.build(HIST, CANDS, hybrid=True)
    for parts, blank_items, blank_user in (({"items"}, True, False), ({"user"}, False, True), ({"items", "user"}, True, True)):
        batch = collate([prompt.without(parts)], model.pad_id)
        embeds, full = model.embed(batch)[0], model.embed(collate([prompt], model.pad_id))[0]
        neutral = model.neutral_slot()
        for pos in prompt.history_positions + prompt.candidate_positions:
            assert torch.allclose(embeds[pos], neutral) == blank_items
            assert torch.allclose(embeds[pos], full[pos]) != blank_items
        assert torch.allclose(embeds[prompt.user_position], neutral) == blank_user
    with pytest.raises(ValueError, match="titles"):
        prompt.without({"titles"})  # titles are removed by rebuilding, not in place


def test_build_variant_rebuilds_without_titles_and_cuts_at_the_query():
    model = tiny_llara(user_token=False)
    full = build_variant(model, HIST, CANDS, True, frozenset())
    no_titles = build_variant(model, HIST, CANDS, True, frozenset({"titles"}))
    assert not no_titles.titles and len(no_titles.input_ids) < len(full.input_ids)
    assert full.input_ids[-1] == model.builder.history_id  # cut right after the last history slot
    assert not full.candidate_positions and not no_titles.candidate_positions
    with pytest.raises(ValueError, match="one part"):
        build_variant(model, HIST, CANDS, False, frozenset({"items"}))


def test_variant_scores_move_with_the_removed_part_and_share_passes(monkeypatch):
    model = tiny_llara()
    torch.manual_seed(3)
    with torch.no_grad():
        model.next_head.query.weight.normal_()
    samples = [Sample(HIST, 5, 1), Sample(HIST, 6, 1), Sample((9, 10, 11), 5, 2)]
    cands = [CANDS, (0, 1, 6, 5, 7, 8), (0, 1, 5, 6, 7, 8)]
    calls = []
    real = model.all_item_scores
    monkeypatch.setattr(model, "all_item_scores", lambda prompts: calls.append(len(prompts)) or real(prompts))
    full = variant_scores(model, samples, cands, True, frozenset())
    assert calls == [2]  # two distinct histories, one batched pass
    for removed in ({"titles"}, {"items"}, {"user"}):
        assert not np.allclose(full, variant_scores(model, samples, cands, True, frozenset(removed)))
    # same history, reordered candidates: the same scores, reordered
    assert np.allclose(full[1], full[0][[list(CANDS).index(c) for c in cands[1]]])


def test_hits_count_ties_against_the_target():
    samples = [Sample((1, 2, 3), 7), Sample((1, 2, 3), 8)]
    hits, top1 = hits_and_top1(np.array([[1.0, 1.0], [0.0, 2.0]]), samples, [(7, 9), (9, 8)])
    assert hits.tolist() == [0.0, 1.0] and top1.tolist() == [7, 8]


def test_all_position_samples():
    seqs = {1: list(range(20)), 2: [5, 6, 7], 3: [1, 2, 3, 4]}
    every = all_position_samples(seqs)
    assert [s.target for s in every if s.user == 1] == list(range(3, 20)) and not [s for s in every if s.user == 2]
    assert all(3 <= len(s.history) <= 10 and s.history == tuple(seqs[s.user][max(0, seqs[s.user].index(s.target) - 10):
                                                                           seqs[s.user].index(s.target)]) for s in every)
    some = all_position_samples(seqs, per_user=4, seed=1)
    assert Counter(s.user for s in some) == {1: 4, 3: 1}
    assert some[3].target == 19  # the last interaction (the paper's sample) is always kept
    assert all_position_samples(seqs, per_user=4, seed=1) == some


def test_cluster_paired_interval_respects_users():
    a, b = np.ones(10), np.ones(10)
    assert cluster_paired(a, b, np.arange(10)) == {"diff": 0.0, "ci95": (0.0, 0.0), "a_better": 0, "b_better": 0}
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(20), 20)
    per_user = rng.random(20) < 0.5  # users entirely better or entirely equal: strongly clustered
    diff = np.repeat(per_user, 20).astype(float)
    clustered = cluster_paired(diff, np.zeros_like(diff), users)["ci95"]
    iid = cluster_paired(diff, np.zeros_like(diff), np.arange(len(diff)))["ci95"]
    assert clustered[1] - clustered[0] > 2 * (iid[1] - iid[0])
    with pytest.raises(ValueError, match="same samples"):
        cluster_paired(a, b[:5], np.arange(10))


def test_summary_rows_pair_against_full_and_recommender():
    users = np.array([1, 1, 2, 2])
    hits = {"full": np.array([1, 1, 0, 1.0]), "no titles": np.array([1, 0, 0, 0.0]), "recommender": np.array([1, 0, 0, 1.0])}
    top1 = {"full": np.array([1, 2, 3, 4]), "no titles": np.array([1, 2, 0, 0]), "recommender": np.array([1, 0, 3, 4])}
    rows = summarize_rows(hits, top1, users, "full", "recommender")
    assert rows["no titles"]["full_minus_row"]["diff"] == 0.5 and rows["full"]["same_top1_as_recommender"] == 0.75
    assert rows["full"]["minus_recommender"]["diff"] == 0.25 and "full_minus_row" not in rows["full"]


def test_modality_dropout_never_drops_every_part():
    rng = np.random.default_rng(0)
    draws = [frozenset(dropped_parts(0.5, True, True, rng)) for _ in range(2000)]
    assert frozenset({"titles", "items", "user"}) not in draws
    freq = Counter(p for d in draws for p in d)
    assert all(0.35 < freq[p] / len(draws) < 0.5 for p in ("titles", "items", "user")), freq
    assert dropped_parts(0.5, False, True, rng) == set() and dropped_parts(0.0, True, True, rng) == set()
    assert all("user" not in dropped_parts(0.9, True, False, rng) for _ in range(50))


def test_item_dropout_sets_the_slots_own_rate_and_leaves_other_draws_alone():
    draws = [dropped_parts(0.25, True, False, np.random.default_rng(i), items=0.6) for i in range(3000)]
    freq = Counter(p for d in draws for p in d)
    # both drawn with probability 0.25 * 0.6, then one of the two kept at random: items 0.525, titles 0.175
    assert abs(freq["items"] / len(draws) - 0.525) < 0.03 and abs(freq["titles"] / len(draws) - 0.175) < 0.03, freq
    # without it, the same generator state gives the draws it always gave
    same = [dropped_parts(0.25, True, False, np.random.default_rng(i)) == dropped_parts(0.25, True, False, np.random.default_rng(i), items=0.25)
            for i in range(200)]
    assert all(same)


def test_language_keys_start_beside_the_recommender_keys():
    feats = torch.randn(7, 8 + 12)
    head = NextItemHead(feats, d_model=16, d_key=8 + 4, identity_dims=8)
    keys = head.keys()
    assert torch.allclose(keys[:, :8], feats[:, :8])  # the recommender part passes unchanged
    assert not torch.allclose(keys[:, 8:], torch.zeros(7, 4))  # the language part is learned from its start
    with pytest.raises(ValueError, match="identity_dims"):
        NextItemHead(feats, d_model=16, d_key=4, identity_dims=8)


@pytest.mark.parametrize("argv, message", [
    (["--checkpoint", "x", "--positions", "-1"], "--positions"),
    (["--checkpoint", "x", "--paper-seeds", "a"], "seeds"),
])
def test_cli_rejects_bad_flags(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_cli_missing_checkpoint_is_one_line(tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def dropout_run(toy_setup, tmp_path_factory):
    """A tiny next-item run with a user token and modality dropout, end to end through the CLI."""
    import llara.training.train as train_mod

    from .conftest import toy_train_args

    out = tmp_path_factory.mktemp("parts-run") / "ckpt"
    args = toy_train_args(toy_setup, out, "--title-weight", "0", "--next-weight", "1", "--user-token",
                          "--modality-dropout", "0.5", "--max-steps", "2")
    assert train_mod.main(args) == 0
    return out


def test_parts_cli_reports_every_variant_and_window_positions_without_sequences(dropout_run, tmp_path, capsys):
    import json

    out = tmp_path / "parts.json"
    assert main(["--checkpoint", str(dropout_run), "--paper-seeds", "0,1", "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    rows = saved["summary"]["paper"]
    assert list(rows)[:8] == list(variants(("titles", "items", "user")))
    # the release format has no user ids: its history-free row is global popularity, and its users (the bootstrap's
    # clusters) are the samples' indices, the same under both candidate seeds
    assert {"recommender", "popularity"} <= set(rows) and "recent popularity" not in rows and saved["absent"] == []
    users = saved["users"]["paper"]
    assert users[: len(users) // 2] == users[len(users) // 2:] == list(range(len(users) // 2))
    # the release folder format keeps no full sequences: every position of each test user's last window instead
    assert saved["positions_from"] == "last windows"
    from llara.model.loader import load_llara

    test = load_llara(str(dropout_run))[2].test
    windows = sum(max(0, len(s.history) + 1 - 3) for s in test)
    assert saved["summary"]["positions"]["full"]["samples"] == windows
    n = rows["full"]["samples"]
    assert all(len(h) == n for h in saved["hits"]["paper"].values()) and n % 2 == 0  # two candidate seeds
    assert "| no user |" in capsys.readouterr().out
    assert saved["machine"]["cpu"]


def test_evaluate_parts_flag(dropout_run, tmp_path):
    import json

    import llara.evaluation.evaluate as evaluate_mod

    out = tmp_path / "eval.json"
    assert evaluate_mod.main(["--checkpoint", str(dropout_run), "--decode", "next", "--seeds", "1", "--swap-seed", "-1",
                              "--parts", "--json", str(out)]) == 0
    parts = json.loads(out.read_text())["parts"]["paper"]
    assert parts["full"]["hr@1"] == pytest.approx(json.loads(out.read_text())["metrics"]["hybrid/next"]["hr@1"], abs=1e-9)
    assert "no titles" in parts and "user only" in parts


def test_training_prompts_drop_parts():
    from llara.training.train_config import TrainConfig
    from llara.training.train_stream import PromptStream

    model = tiny_llara(user_token=True)
    samples = [Sample(HIST, 5, 1), Sample((9, 10, 11, 12), 13, 2)]
    cfg = TrainConfig(mode="hybrid", next_weight=1.0, title_weight=0.0, modality_dropout=0.5, user_token=True)
    stream = PromptStream(model, samples, cfg, total_steps=10)
    prompts = [stream.prompt(g, 0) for g in range(200)]
    kinds = Counter((p.titles, p.blank_items, p.blank_user) for p in prompts)
    assert (False, True, True) not in kinds and (True, False, False) in kinds and len(kinds) == 7
    assert [stream.prompt(g, 0) for g in range(20)] == prompts[:20]  # a pure function of (seed, g): resumable
    plain = PromptStream(model, samples, TrainConfig(mode="hybrid", next_weight=1.0, title_weight=0.0, user_token=True), 10)
    assert all(p.titles and not p.blank_items and not p.blank_user for p in (plain.prompt(g, 0) for g in range(50)))


def test_slot_dropout_blanks_single_history_slots_and_keeps_their_titles():
    from llara.training.train_config import TrainConfig, config_problems
    from llara.training.train_stream import PromptStream

    model = tiny_llara(user_token=False)
    base = model.builder.build(HIST, CANDS, hybrid=True)
    prompt = base.without_history_slots([0, 2])
    embeds, full = model.embed(collate([prompt], model.pad_id))[0], model.embed(collate([base], model.pad_id))[0]
    neutral = model.neutral_slot()
    for k, pos in enumerate(prompt.history_positions):
        assert torch.allclose(embeds[pos], neutral) == (k in (0, 2))
    assert all(not torch.allclose(embeds[pos], neutral) for pos in prompt.candidate_positions)
    assert all(model.builder.titles[i] in prompt.text for i in HIST)  # the titles stay
    assert torch.allclose(embeds[prompt.history_positions[1]], full[prompt.history_positions[1]])
    with pytest.raises(ValueError, match="history slot indices"):
        prompt.without_history_slots([len(HIST)])
    with pytest.raises(ValueError, match="text-only"):
        model.builder.build(HIST, CANDS, hybrid=False).without_history_slots([0])

    samples = [Sample(HIST, 5, 1), Sample((9, 10, 11, 12), 13, 2)]
    cfg = TrainConfig(mode="hybrid", next_weight=1.0, title_weight=0.0, modality_dropout=0.3, slot_dropout=0.4)
    stream = PromptStream(model, samples, cfg, total_steps=10)
    prompts = [stream.prompt(g, 0) for g in range(300)]
    with_slots = [p for p in prompts if p.titles and not p.blank_items]
    share = sum(len(p.blank_history) for p in with_slots) / sum(len(p.history) for p in with_slots)
    assert 0.33 < share < 0.47, share
    # only where the titles and the slots are both kept: no item is left with neither
    assert all(not p.blank_history for p in prompts if not p.titles or p.blank_items)
    assert [stream.prompt(g, 0) for g in range(20)] == prompts[:20]  # still a pure function of (seed, g)
    # the other draws are the ones a run without slot dropout makes
    plain = PromptStream(model, samples, TrainConfig(mode="hybrid", next_weight=1.0, title_weight=0.0, modality_dropout=0.3), 10)
    assert [(p.titles, p.blank_items) for p in prompts] == [(q.titles, q.blank_items) for q in (plain.prompt(g, 0) for g in range(300))]
    assert config_problems(TrainConfig(slot_dropout=1.0)) == ["--slot-dropout must be in [0, 1), got 1.0"]


def test_parts_cli_runs_only_the_rows_asked_for(dropout_run, tmp_path, capsys):
    import json

    out = tmp_path / "some.json"
    assert main(["--checkpoint", str(dropout_run), "--paper-seeds", "0", "--rows", "no user,user only", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["summary"]["paper"]
    assert [r for r in rows if r not in ("recommender", "popularity")] == ["full", "no user", "user only"]
    assert main(["--checkpoint", str(dropout_run), "--rows", "no wings"]) == 2
    assert "unknown prompt rows ['no wings']" in capsys.readouterr().err


def test_fit_gate_recovers_the_best_mix():
    from llara.evaluation.gate import fit_gate

    torch.manual_seed(0)
    rec, llm = torch.randn(400, 30), torch.randn(400, 30)
    targets = torch.distributions.Categorical(logits=rec + 0.7 * llm).sample()
    assert fit_gate(llm, rec, targets) == pytest.approx(0.7, abs=0.2)
    with pytest.raises(ValueError, match="do not pair"):
        fit_gate(llm[:3], rec, targets)


def test_gate_cli_adds_residual_scoring(toy_setup, tmp_path, capsys):
    import llara.training.train as train_mod
    from llara.checkpoint import read_json
    from llara.evaluation.gate import main as gate_main
    from llara.model.loader import load_llara

    from .conftest import toy_train_args

    out = tmp_path / "ckpt"
    assert train_mod.main(toy_train_args(toy_setup, out, "--title-weight", "0", "--next-weight", "1", "--max-steps", "2")) == 0
    assert gate_main(["--checkpoint", str(out)]) == 0
    meta = read_json(out / "meta.json")
    assert meta["config"]["residual"] and meta["residual_gate"]["users"] == "val"
    model, _, _ = load_llara(str(out))
    assert float(model.next_head.gate) == pytest.approx(meta["residual_gate"]["value"])
    prompt = model.builder.build((1, 2, 3), (4, 5, 6), hybrid=True)
    assert len(model.rank_items(prompt, residual=True)) == 3
    assert gate_main(["--checkpoint", str(out)]) == 2 and "already has a residual gate" in capsys.readouterr().err


def test_pair_stored_rows(tmp_path, capsys):
    import json

    def stored(name, hits, users):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"checkpoint": name, "hits": {"positions": {"full": hits}}, "users": {"positions": users}}))
        return path

    a, b = stored("a", [1, 1, 0, 1], [1, 1, 2, 2]), stored("b", [0, 1, 0, 0], [1, 1, 2, 2])
    assert main(["--pair", f"{a}:full", f"{b}:full"]) == 0
    assert "+0.500" in capsys.readouterr().out
    c = stored("c", [1, 0], [1, 2])
    assert main(["--pair", f"{a}:full", f"{c}:full"]) == 2 and "different samples" in capsys.readouterr().err
    assert main(["--pair", f"{a}:full", f"{tmp_path / 'none.json'}:full"]) == 2
    assert main(["--pair", f"{a}:nope", f"{b}:full"]) == 2 and "no row 'nope'" in capsys.readouterr().err
    # a llara.written file: its decodes are rows, a hit a choice naming the target (None: no candidate named)
    written = tmp_path / "written.json"
    written.write_text(json.dumps({"checkpoint": "w", "choices": {"paper": {"next": [3, 4, 5, 6], "generate": [3, None, 5, 1]}},
                                   "targets": {"paper": [3, 4, 7, 6]}, "users": {"paper": [1, 1, 2, 2]}}))
    assert main(["--pair", f"{written}:generate", f"{written}:next", "--pair-set", "paper"]) == 0
    assert "(0.250)" in (out := capsys.readouterr().out) and "(0.750)" in out and "-0.500" in out
    assert main(["--pair", f"{written}:generate", f"{written}:next"]) == 2  # it has no every-position set
    assert "no row 'generate' on the positions samples" in capsys.readouterr().err
