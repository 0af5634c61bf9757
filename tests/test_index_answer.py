"""Indexed answers (``--answer index``): candidates listed behind letters, the answer is the letter then the title,
and the follow loss reads the letters' logits from the training pass (tiny in-memory models)."""
from __future__ import annotations

import pytest
import torch

import llara.training.train as train_mod
from llara.checkpoint import read_llara_meta
from llara.metrics import match_answer, match_letter
from llara.model.follow import follow_loss, letter_logits
from llara.model.loader import load_llara
from llara.model.next_item import distillation_loss
from llara.prompt.batch import collate
from llara.prompt.prompts import INDEX_LABELS, PromptBuilder

from .conftest import toy_train_args
from .test_next_item import CANDS, HIST, LONG, randomize_head, tiny_llara

TARGET = CANDS[2]


def indexed(weights: dict | None = None):
    model = tiny_llara(weights=weights, user_token=False)
    model.builder = model.builder.with_answer("index")
    return model


def assert_letter_after_each_slot(b, prompt) -> None:
    """The token after each candidate's slot (or <PH>) is its letter: the token the answer starts with when it names
    that candidate."""
    assert [prompt.input_ids[q + 1] for q in prompt.candidate_positions] == list(b.index_ids[: len(CANDS)])


def assert_answer_is_letter_then_title(b, prompt) -> None:
    assert list(prompt.target_ids) == [b.index_ids[CANDS.index(TARGET)], *b._colon, *b.answer_ids(TARGET)]


def listed_as(answer: str, entry: str):
    """The builder for ``answer`` and its hybrid training prompt, checked to list every candidate as ``entry``."""
    b = tiny_llara(user_token=False).builder.with_answer(answer)
    p = b.build(HIST, CANDS, hybrid=True, target=TARGET)
    assert p.indexed
    for label, item in zip(INDEX_LABELS, CANDS):
        assert entry.format(label=label, title=b.titles[item]) in p.text
    return b, p


def test_an_indexed_prompt_labels_each_candidate_and_answers_with_letter_then_title():
    model = indexed()
    b = model.builder
    p = b.build(HIST, CANDS, hybrid=True, target=TARGET)
    assert p.indexed and not b.with_answer("title").build(HIST, CANDS, hybrid=True).indexed
    for label, item in zip(INDEX_LABELS, CANDS):
        assert f"{label}: {b.titles[item]}" in p.text
    letter = b.index_ids[CANDS.index(TARGET)]
    assert list(p.target_ids) == [letter, *b._colon, *b.answer_ids(TARGET)]
    assert b.answer_for(p, CANDS[0])[0] == b.index_ids[0]
    # slots stay one per item, so the splice is unchanged by the labels
    assert len(p.candidate_positions) == len(CANDS) and len(p.slot_positions) == len(HIST) + len(CANDS)
    # the written answer names its candidate by title, as the paper's ValidRatio reads it
    written = b.tokenizer.decode(list(p.target_ids)[:-1])
    assert match_answer(written, [b.titles[c] for c in CANDS]) == CANDS.index(TARGET)


def test_index_after_puts_each_letter_right_after_its_candidate_slot():
    b = tiny_llara(user_token=False).builder.with_answer("index-after")
    p = b.build(HIST, CANDS, hybrid=True, target=TARGET)
    assert p.indexed and b.indexed and not b.with_answer("title").indexed
    for label, item in zip(INDEX_LABELS, CANDS):
        assert f"{b.titles[item]} <CansEmb> {label}" in p.text and f"{label}: " not in p.text
    # the token after each candidate's slot is its letter: the token the answer starts with when it names that one
    assert_letter_after_each_slot(b, p)
    assert_answer_is_letter_then_title(b, p)
    # the trained answer, read by its letter, names the target (the `letter` row of llara.written)
    assert match_letter(b.tokenizer.decode(list(p.target_ids)[:-1]), INDEX_LABELS, len(CANDS)) == CANDS.index(TARGET)
    text = b.build(HIST, CANDS, hybrid=False)  # the text-only prompt: the letter after each <PH>
    assert_letter_after_each_slot(b, text)


def test_index_both_writes_the_letter_in_front_of_the_title_and_after_the_slot():
    b, p = listed_as("index-both", "{label}: {title} <CansEmb> {label}")
    # the letter after each slot, as with index-after: the token the answer starts with
    assert_letter_after_each_slot(b, p)
    # the written answer "C: title" is the list's own text in front of the slot, so its title can be copied
    assert_answer_is_letter_then_title(b, p)
    body, ids = list(p.target_ids)[:-1], list(p.input_ids)  # the answer's tokens without the terminator
    assert any(ids[i:i + len(body)] == body for i in range(len(ids)))
    assert len(p.candidate_positions) == len(CANDS) and len(p.slot_positions) == len(HIST) + len(CANDS)


def test_slot_first_puts_one_letter_between_the_slot_and_the_title_it_labels():
    b, p = listed_as("slot-first", "<CansEmb> {label}: {title}")
    assert p.text.count(f" {INDEX_LABELS[0]}: ") == 1  # one letter per candidate, not two as in index-both
    # the token after each slot is its letter, as with index-after: what the answer's first token picks by
    assert_letter_after_each_slot(b, p)
    # and the answer "C: title" is the list's own text after the slot, so the title is a copy of what follows the letter
    assert_answer_is_letter_then_title(b, p)
    body, ids = list(p.target_ids)[:-1], list(p.input_ids)
    at = [i for i in range(len(ids)) if ids[i:i + len(body)] == body]
    assert len(at) == 1 and at[0] - 1 == p.candidate_positions[CANDS.index(TARGET)]
    assert match_letter(b.tokenizer.decode(body), INDEX_LABELS, len(CANDS)) == CANDS.index(TARGET)
    assert match_answer(b.tokenizer.decode(body), [b.titles[c] for c in CANDS]) == CANDS.index(TARGET)
    # the slots-only ablation keeps the letters; the text-only prompt puts them after each <PH>
    bare = b.build(HIST, CANDS, hybrid=True, titles=False)
    assert_letter_after_each_slot(b, bare)
    assert all(b.titles[c] not in bare.text for c in CANDS)
    text = b.build(HIST, CANDS, hybrid=False)
    assert_letter_after_each_slot(b, text)


def test_indexed_prompts_refuse_what_they_cannot_label():
    model = indexed()
    b = model.builder
    with pytest.raises(ValueError, match="not among the prompt's candidates"):
        b.answer_for(b.build(HIST, CANDS, hybrid=True), 30)
    with pytest.raises(ValueError, match="another answer format"):
        b.answer_for(b.with_answer("title").build(HIST, CANDS, hybrid=True), CANDS[0])
    with pytest.raises(ValueError, match="at most 26 candidates"):
        b.build((0,), tuple(range(1, 28)), hybrid=True)
    with pytest.raises(ValueError, match="answer must be one of"):
        b.with_answer("letters")


def test_a_tokenizer_without_single_token_letters_is_refused():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast


    model = tiny_llara(user_token=False)
    words = [w for w in model.builder.tokenizer.get_vocab() if w not in INDEX_LABELS]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>")
    with pytest.raises(ValueError, match="one token"):
        PromptBuilder(tok, model.builder.catalog, answer="index")


def test_letter_logits_are_what_the_rank_decode_scores_first():
    """The follow loss's student for indexed prompts: each candidate's letter logit at the answer position. Its
    log-softmax over the whole vocabulary is the first term of the ``rank`` decode's answer log-likelihood."""
    model = indexed()
    ps = [model.builder.build(h, CANDS, hybrid=True, target=TARGET) for h in (HIST, LONG)]
    batch = collate(ps, model.pad_id, with_targets=True, padding_side="right")
    with torch.no_grad():
        out = model.llm(inputs_embeds=model.embed(batch), attention_mask=batch.attention_mask,
                        position_ids=batch.position_ids)
        letters = letter_logits(model, out, batch)  # (B, C)
        for row, p in zip(range(2), ps):
            one = collate([p], model.pad_id, device=model.device)
            logp = model.llm(inputs_embeds=model.embed(one), attention_mask=one.attention_mask,
                             position_ids=one.position_ids).logits[0, -1].float().log_softmax(-1)
            assert letters[row].tolist() == pytest.approx(
                (out.logits[row, len(p.input_ids) - 1].float()[list(model.builder.index_ids[:len(CANDS)])]).tolist())
            assert (logp[list(model.builder.index_ids[: len(CANDS)])] - letters[row].log_softmax(-1)).std() < 1e-4


def test_index_follow_loss_is_the_kl_to_the_letters_and_trains_only_the_words():
    model = indexed({"title": 1.0, "next": 1.0, "follow": 1.0})
    randomize_head(model)
    ps = [model.builder.build(h, CANDS, hybrid=True, target=TARGET) for h in (HIST, LONG)]
    batch = collate(ps, model.pad_id, with_targets=True, padding_side="right")
    out = model(batch)
    assert out.losses["follow"] > 0
    with torch.no_grad():
        teacher = out.item_logits.gather(1, batch.candidates)
        expected = distillation_loss(letter_logits(model, out, batch), teacher)
    assert float(follow_loss(model, out, batch)) == pytest.approx(float(expected), abs=1e-5)
    model.zero_grad()
    follow_loss(model, out, batch).backward()
    assert model.next_head.query.weight.grad is None or not model.next_head.query.weight.grad.any()
    # the teacher equal to the letters' own logits: nothing to learn
    out.item_logits = torch.full_like(out.item_logits, -1e4).scatter(1, batch.candidates, letter_logits(model, out, batch))
    assert float(follow_loss(model, out, batch)) == pytest.approx(0.0, abs=1e-5)


def test_a_warm_start_switches_to_indexed_answers_and_the_checkpoint_keeps_them(toy_setup, tmp_path):
    first = tmp_path / "first"
    assert train_mod.main(toy_train_args(toy_setup, first, "--next-weight", "1", "--title-weight", "0",
                                         "--max-train-samples", "4")) == 0
    second = tmp_path / "second"
    args = toy_train_args(toy_setup, second, "--init-from", str(first), "--next-weight", "1", "--title-weight", "1",
                          "--follow-weight", "1", "--answer", "index", "--max-train-samples", "4")
    args = [a for a in args if a not in ("--precision", "fp32")]
    assert train_mod.main(args) == 0
    meta = read_llara_meta(second)
    assert meta["config"]["answer"] == "index" and "loss_follow" in meta["log"][0]
    model, _, _ = load_llara(second)
    assert model.builder.answer == "index"
    p = model.builder.build((0, 1, 2), (3, 4, 5), hybrid=True)
    assert p.indexed and "A:" in p.text
    assert {c for c, _ in model.rank(p)} == {3, 4, 5}
    assert model.constrained(p) in (3, 4, 5)
