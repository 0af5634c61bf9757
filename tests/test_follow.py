"""The follow loss (the written answer follows the next-item head) and warm starts, on tiny in-memory models."""
from __future__ import annotations

import pytest
import torch

import llara.training.train as train_mod
from llara.checkpoint import read_llara_meta
from llara.model.follow import answer_logprobs, follow_loss, prompt_lengths, written_agrees
from llara.prompt.batch import collate
from llara.training.train_config import TrainConfig, config_problems

from .conftest import toy_train_args
from .test_next_item import CANDS, HIST, LONG, randomize_head, tiny_llara

TARGET = CANDS[2]


def prompts(model, n: int = 2):
    """Training prompts of different lengths (right padding differs per row), each with its target."""
    histories = [HIST, LONG][:n]
    return [model.builder.build(h, CANDS, hybrid=True, target=TARGET) for h in histories]


def full_pass(model, batch):
    return model.llm(inputs_embeds=model.embed(batch), attention_mask=batch.attention_mask,
                     position_ids=batch.position_ids, labels=batch.labels, use_cache=True, output_hidden_states=True)


def test_answer_logprobs_equal_the_rank_decode():
    """Scored from the training pass's cache (target tokens and padding masked), each candidate's log-likelihood
    is what ``LLaRA.rank`` computes from the prompt alone, for every row of a ragged batch."""
    model = tiny_llara(user_token=False)
    ps = prompts(model)
    batch = collate(ps, model.pad_id, with_targets=True, padding_side="right")
    with torch.no_grad():
        scores = answer_logprobs(model, full_pass(model, batch), batch)  # (B, C)
    for row, p in zip(scores, ps):
        expected = dict(model.rank(p))
        assert row.tolist() == pytest.approx([expected[c] for c in CANDS], abs=1e-4)


def test_follow_loss_trains_the_words_towards_the_head_and_leaves_the_head_alone():
    model = tiny_llara(weights={"title": 1.0, "next": 1.0, "follow": 1.0}, user_token=False)
    randomize_head(model)
    batch = collate(prompts(model), model.pad_id, with_targets=True, padding_side="right")
    out = model(batch)
    assert set(out.losses) >= {"title", "next", "follow"} and out.losses["follow"] > 0
    model.zero_grad()
    # the follow term alone: gradients reach the LLM's LoRA-free weights but not the head's query (a detached teacher)
    out = model.llm(inputs_embeds=model.embed(batch), attention_mask=batch.attention_mask,
                    position_ids=batch.position_ids, labels=batch.labels, use_cache=True, output_hidden_states=True)
    rows = torch.arange(2)
    out.item_logits = model.next_head(out.hidden_states[-1][rows, batch.query_cols])
    follow_loss(model, out, batch).backward()
    assert model.next_head.query.weight.grad is None or not model.next_head.query.weight.grad.any()
    grads = [p.grad for p in model.llm.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_follow_loss_is_zero_when_the_words_already_follow():
    """The teacher equals the answers' own log-likelihoods: the KL is 0."""
    model = tiny_llara(weights={"follow": 1.0}, user_token=False)
    batch = collate(prompts(model), model.pad_id, with_targets=True, padding_side="right")
    with torch.no_grad():
        out = full_pass(model, batch)
        scores = answer_logprobs(model, full_pass(model, batch), batch)  # the cache of ``out`` stays unrepeated
        out.item_logits = torch.full((2, model.item_table.shape[0]), -1e4)
        out.item_logits.scatter_(1, batch.candidates, scores)
        assert float(follow_loss(model, out, batch)) == pytest.approx(0.0, abs=1e-4)
        # a sharper teacher no longer equals the answers' distribution; the temperature scales the head's scores
        # (each loss consumes its pass's cache: a fresh pass per call)
        for temperature, scale, zero in ((0.5, 1.0, False), (2.0, 2.0, True)):
            again = full_pass(model, batch)
            again.item_logits = out.item_logits * scale
            loss = float(follow_loss(model, again, batch, temperature=temperature))
            assert loss == pytest.approx(0.0, abs=1e-4) if zero else loss > 1e-3
        with pytest.raises(ValueError, match="temperature must be > 0"):
            follow_loss(model, out, batch, temperature=0.0)


def test_prompt_lengths_need_answer_tokens():
    model = tiny_llara(user_token=False)
    batch = collate(prompts(model), model.pad_id, with_targets=True, padding_side="right")
    assert prompt_lengths(batch.labels) == [len(p.input_ids) for p in prompts(model)]
    no_answer = collate(prompts(model), model.pad_id, with_targets=False, padding_side="right")
    with pytest.raises(ValueError, match="no answer tokens"):
        prompt_lengths(torch.full_like(no_answer.input_ids, -100))


def test_written_agrees():
    assert written_agrees([1, None, 3, 4], [1, 2, 3, 5]) == 0.5
    with pytest.raises(ValueError, match="same, non-zero"):
        written_agrees([], [])


@pytest.mark.parametrize("changes, flag", [
    ({"follow_weight": 1.0, "next_weight": 0.0}, "--follow-weight"),
    ({"follow_weight": 1.0, "next_weight": 1.0, "title_weight": 0.0}, "--follow-weight"),
    ({"follow_weight": -1.0, "next_weight": 1.0}, "--follow-weight"),
    ({"init_from": "x", "resume": True}, "--init-from"),
    ({"follow_temperature": 0.0}, "--follow-temperature"),
    ({"follow_temperature": float("nan")}, "--follow-temperature"),
    ({"answer_target": "head", "next_weight": 0.0}, "--answer-target"),
    ({"mutual_weight": 1.0, "next_weight": 1.0}, "--mutual-weight"),
    ({"mutual_weight": -1.0, "follow_weight": 1.0, "next_weight": 1.0}, "--mutual-weight"),
    ({"answer_target": "head", "next_weight": 1.0, "title_weight": 0.0}, "--answer-target"),
])
def test_config_problems_name_the_follow_and_init_flags(changes, flag):
    problems = config_problems(TrainConfig(output="x", **changes))
    assert any(p.startswith(flag) for p in problems), problems


def test_warm_start_begins_from_the_checkpoint_and_records_it(toy_setup, tmp_path):
    """A warm start inherits the architecture (precision here), trains with its own losses (the follow term is
    logged) and records the checkpoint and step it started from."""
    first = tmp_path / "first"
    base = toy_train_args(toy_setup, first, "--next-weight", "1", "--title-weight", "0", "--max-train-samples", "4")
    assert train_mod.main(base) == 0
    second = tmp_path / "second"
    args = toy_train_args(toy_setup, second, "--init-from", str(first), "--next-weight", "1", "--title-weight", "1",
                          "--follow-weight", "1", "--max-train-samples", "4")
    args = [a for a in args if a not in ("--precision", "fp32")]  # inherited from the checkpoint
    assert train_mod.main(args) == 0
    meta = read_llara_meta(second)
    assert meta["init_from"]["step"] == read_llara_meta(first)["step"]
    assert meta["config"]["precision"] == "fp32" and meta["config"]["follow_weight"] == 1.0
    assert "loss_follow" in meta["log"][0]


def test_warm_start_refuses_a_different_architecture(toy_setup, tmp_path, capsys):
    first = tmp_path / "first"
    assert train_mod.main(toy_train_args(toy_setup, first, "--next-weight", "1", "--title-weight", "0",
                                         "--max-train-samples", "2")) == 0
    args = toy_train_args(toy_setup, tmp_path / "second", "--init-from", str(first), "--next-weight", "1",
                          "--lora-r", "4")
    assert train_mod.main(args) == 2
    assert "lora_r" in capsys.readouterr().err
    args = toy_train_args(toy_setup, tmp_path / "third", "--init-from", str(first))  # no next-item head
    assert train_mod.main(args) == 2
    assert "next-item head" in capsys.readouterr().err


def test_follow_top_scores_the_heads_best_candidates_only():
    """``top=3``: the KL over the head's three best candidates, the same as computing all answers and keeping them."""
    from llara.model.next_item import distillation_loss

    model = tiny_llara(user_token=False)
    randomize_head(model)
    batch = collate(prompts(model), model.pad_id, with_targets=True, padding_side="right")
    with torch.no_grad():
        out = full_pass(model, batch)
        out.item_logits = model.next_head(out.hidden_states[-1][torch.arange(2), batch.query_cols])  # (B, N)
        teacher = out.item_logits.gather(1, batch.candidates)
        keep = teacher.topk(3, dim=1).indices
        every = answer_logprobs(model, full_pass(model, batch), batch)  # (B, C)
        expected = distillation_loss(every.gather(1, keep), teacher.gather(1, keep))
        assert float(follow_loss(model, out, batch, top=3)) == pytest.approx(float(expected), abs=1e-4)


@pytest.mark.parametrize("answer", ["title", "slot-first"])
def test_answer_on_head_names_the_heads_pick_and_keeps_the_target(answer):
    """``--answer-target head``: each prompt's answer tokens become those of the head's top-1 among its candidates
    (the letter first for an indexed layout), its target stays (the next-item loss still learns it), and the pass
    leaves the model in training mode."""
    from llara.model.follow import answer_on_head

    model = tiny_llara(user_token=False)
    model.builder = model.builder.with_answer(answer)
    randomize_head(model)
    model.train()
    ps = prompts(model)
    relabelled = answer_on_head(model, ps)
    assert model.training
    picks = [max(p.candidates, key=lambda c: float(row[c])) for p, row in zip(ps, model.item_scores(ps))]
    for old, new, pick in zip(ps, relabelled, picks):
        assert new.target == old.target == TARGET and new.input_ids == old.input_ids
        assert list(new.target_ids) == model.builder.answer_for(old, pick)
    assert any(pick != TARGET for pick in picks), "the randomized head should disagree with the target somewhere"


def test_answer_target_head_trains_and_is_recorded(toy_setup, tmp_path, monkeypatch):
    relabelled: list[int] = []
    real = train_mod.answer_on_head
    monkeypatch.setattr(train_mod, "answer_on_head", lambda model, ps: relabelled.append(len(ps)) or real(model, ps))
    args = toy_train_args(toy_setup, tmp_path / "ckpt", "--next-weight", "1", "--title-weight", "1",
                          "--answer-target", "head", "--max-train-samples", "4")
    assert train_mod.main(args) == 0
    meta = read_llara_meta(tmp_path / "ckpt")
    assert meta["config"]["answer_target"] == "head" and "loss_title" in meta["log"][0]
    assert sum(relabelled) == 4  # every training prompt was relabelled


def test_mutual_term_moves_the_head_towards_the_words_and_the_follow_term_does_not():
    """``--mutual-weight``: the reverse KL trains the head's query (the words detached); the follow term alone leaves
    it untouched; both are the KLs of the same two distributions, and the forward pass logs the mutual term only
    when it is weighted."""
    from llara.model.follow import follow_terms, head_and_answers
    from llara.model.next_item import distillation_loss

    model = tiny_llara(weights={"title": 1.0, "next": 1.0, "follow": 1.0}, user_token=False)
    randomize_head(model)
    batch = collate(prompts(model), model.pad_id, with_targets=True, padding_side="right")
    assert "mutual" not in model(batch).losses
    model.weights["mutual"] = 0.5
    assert model(batch).losses["mutual"] > 0

    def head_pass():
        out = full_pass(model, batch)
        out.item_logits = model.next_head(out.hidden_states[-1][torch.arange(2), batch.query_cols])
        return out

    with torch.no_grad():
        head, words = head_and_answers(model, head_pass(), batch)
        follow, mutual = follow_terms(model, head_pass(), batch)
    assert float(follow) == pytest.approx(float(distillation_loss(words, head)), abs=1e-5)
    assert float(mutual) == pytest.approx(float(distillation_loss(head, words)), abs=1e-5)
    for term, moves_head in ((0, False), (1, True)):
        model.zero_grad()
        follow_terms(model, head_pass(), batch)[term].backward()
        grad = model.next_head.query.weight.grad
        assert (grad is not None and bool(grad.any())) == moves_head
