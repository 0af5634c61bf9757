"""Prompts and the LLaRA model on a tiny in-memory Llama: splice, answers, ranking with and without cache."""
from __future__ import annotations

import pytest
import torch

from llara.constants import IGNORE_INDEX
from llara.data import Catalog
from llara.model.llara_model import LLaRA
from llara.model.llm import add_placeholder_tokens, ensure_pad_token
from llara.model.projector import build_projector
from llara.prompt.batch import collate
from llara.prompt.prompts import TEMPLATES, AnswerTrie, PromptBuilder, safe_title

from .conftest import make_tiny_llama

TITLES = ["Batman", "Batman Returns", "Heat", "Fargo", "Casino", "Babe", "Alien", "Aliens", "Jaws", "Rocky", "Se7en",
          "Clerks", "Hook", "Speed", "Twister", "Ransom", "Scream", "Tin Cup", "Big", "Ghost", "Contact", "Gattaca",
          "Titanic", "Cop Land"]
D_REC = 8


def make_word_tokenizer(extra_text: str):
    """Word-level tokenizer whose vocabulary covers every template word and title word."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Whitespace()
    words = sorted({w for text in [*sum(TEMPLATES.values(), ()), extra_text] for w, _ in pre.pre_tokenize_str(text)})
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


@pytest.fixture
def catalog() -> Catalog:
    return Catalog.from_raw("movie", TITLES, [str(i) for i in range(len(TITLES))])


@pytest.fixture
def llara(catalog) -> LLaRA:
    tok = make_word_tokenizer(" ".join(TITLES))
    llm = make_tiny_llama(len(tok), seed=0)
    ensure_pad_token(llm, tok)
    add_placeholder_tokens(llm, tok)
    torch.manual_seed(1)
    items = torch.randn(len(catalog), D_REC)
    projector = build_projector("mlp2x_gelu", D_REC, llm.config.hidden_size)
    return LLaRA(llm, PromptBuilder(tok, catalog, max_length=128), items, projector).eval()


HIST, CANDS = (2, 3, 4), (0, 1, 5, 6, 7, 8)


# ---- prompts ------------------------------------------------------------------------------------------------------

def test_prompt_layout(llara):
    b = llara.builder
    hybrid = b.build(HIST, CANDS, hybrid=True, target=5)
    text = b.build(HIST, CANDS, hybrid=False, target=5)
    assert "Heat <HistoryEmb>, Fargo <HistoryEmb>, Casino <HistoryEmb>" in hybrid.text
    assert "Batman <CansEmb>, Batman Returns <CansEmb>" in hybrid.text
    assert "<HistoryEmb>" not in text.text and text.text.count("<PH>") == len(HIST) + len(CANDS)
    assert "following 6 movie titles" in hybrid.text  # the count says how many are listed
    assert len(hybrid.input_ids) == len(text.input_ids)  # same layout, token for token
    assert hybrid.slot_items == HIST + CANDS and text.slot_positions == () and text.slot_items == ()
    for pos in hybrid.slot_positions:
        assert hybrid.input_ids[pos] in (b.history_id, b.candidate_id)


def test_training_labels_cover_only_the_answer(llara):
    prompt = llara.builder.build(HIST, CANDS, hybrid=True, target=5)
    ids, labels = prompt.training_ids()
    n = len(prompt.input_ids)
    assert labels[:n] == [IGNORE_INDEX] * n and labels[n:] == ids[n:] == llara.builder.answer_ids(5)


def test_templates_drawn_by_rng(llara):
    import random

    rng = random.Random(0)
    used = {llara.builder.build(HIST, CANDS, hybrid=True, rng=rng).template for _ in range(30)}
    assert used == {0, 1, 2}
    for domain, templates in TEMPLATES.items():
        assert len(templates) >= 3 and all("{n}" in t for t in templates), domain


def test_titles_cannot_inject_slots():
    assert safe_title("Evil <HistoryEmb> Movie <PH>") == "Evil Movie"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"history": ()}, "history is empty"),
        ({"candidates": (1, 1, 2)}, "duplicates"),
        ({"target": 9}, r"target 9 \('Rocky'\) is not among the candidates"),
        ({"history": (2, 999)}, "history item id 999 is out of range"),
        ({"candidates": (0, -1)}, "candidate item id -1 is out of range"),
        ({"template": 7}, "template must be in 0..2"),
    ],
)
def test_prompt_bad_input(llara, kwargs, message):
    args = {"history": HIST, "candidates": CANDS, "hybrid": True, **kwargs}
    with pytest.raises(ValueError, match=message):
        llara.builder.build(**args)


def test_prompt_longer_than_context(llara):
    llara.builder.max_length = 20
    with pytest.raises(ValueError, match=r"prompt is \d+ tokens, \d+ more than the model's context of 20"):
        llara.builder.build(HIST, CANDS, hybrid=True)


# ---- splice -------------------------------------------------------------------------------------------------------

def test_projected_vectors_exactly_at_slots(llara):
    prompts = [llara.builder.build(HIST, CANDS, hybrid=True), llara.builder.build((9, 10, 11, 12), CANDS, hybrid=True)]
    batch = collate(prompts, llara.pad_id, padding_side="left")
    with torch.no_grad():
        embeds = llara.embed(batch)
        plain = llara.llm.get_input_embeddings()(batch.input_ids)
        projected = llara.projector(llara.item_table[batch.slot_items])
    changed = (embeds != plain).any(-1)  # (B, T)
    expected = torch.zeros_like(changed)
    expected[batch.slot_rows, batch.slot_cols] = True
    assert torch.equal(changed, expected)
    assert torch.allclose(embeds[batch.slot_rows, batch.slot_cols], projected)
    assert batch.slot_items.tolist() == list(HIST + CANDS) + [9, 10, 11, 12] + list(CANDS)


def test_text_only_prompt_has_no_projected_vectors(llara):
    batch = collate([llara.builder.build(HIST, CANDS, hybrid=False)], llara.pad_id)
    with torch.no_grad():
        assert torch.equal(llara.embed(batch), llara.llm.get_input_embeddings()(batch.input_ids))
    assert batch.slot_items.numel() == 0


def test_left_padding_does_not_change_logits(llara):
    short, long = llara.builder.build(HIST, CANDS, hybrid=True), llara.builder.build(HIST + (9, 10), CANDS, hybrid=True)
    with torch.no_grad():
        alone = llara(collate([short], llara.pad_id)).logits[0, -1]
        padded = llara(collate([short, long], llara.pad_id, padding_side="left")).logits[0, -1]
    assert torch.allclose(alone, padded, atol=1e-5)


# ---- answering ----------------------------------------------------------------------------------------------------

def test_rank_matches_uncached_scoring(llara):
    prompt = llara.builder.build(HIST, CANDS, hybrid=True)
    cached, plain = llara.rank(prompt), llara.rank_uncached(prompt)
    assert [c for c, _ in cached] == [c for c, _ in plain]
    for (_, a), (_, b) in zip(cached, plain):
        assert a == pytest.approx(b, abs=1e-4)
    assert sorted(c for c, _ in cached) == sorted(CANDS)
    assert all(s1 >= s2 for (_, s1), (_, s2) in zip(cached, cached[1:]))


def test_constrained_always_returns_a_candidate(llara):
    for seed in range(4):
        torch.manual_seed(seed)
        llara.projector.net[0].weight.data.normal_()  # other weights, other answers: always a candidate
        for hybrid in (True, False):
            prompt = llara.builder.build(HIST, CANDS, hybrid=hybrid)
            choice = llara.constrained(prompt)
            assert choice in CANDS
            # greedy over the trie picks the best first token among the candidates' first tokens
            top = llara.rank(prompt)
            assert choice in [c for c, _ in top]


def test_generate_returns_first_lines(llara):
    prompts = [llara.builder.build(HIST, CANDS, hybrid=True), llara.builder.build(HIST[:2] + (9,), CANDS, hybrid=False)]
    batched = llara.generate(prompts, max_new_tokens=5)
    assert len(batched) == 2 and all("\n" not in t for t in batched)
    assert batched == [llara.generate([p], max_new_tokens=5)[0] for p in prompts]  # left padding is harmless


def test_trie_rejects_identical_answers():
    with pytest.raises(ValueError, match="tokenize to the same answer"):
        AnswerTrie({1: [5, 2], 2: [5, 2]})
    trie = AnswerTrie({1: [5, 2], 2: [5, 6, 2]})  # "Batman" / "Batman Returns": the terminator separates them
    assert trie.next_tokens([5]) == [2, 6] and trie.consistent([5, 2]) == [1]


def test_item_table_must_fit(catalog):
    tok = make_word_tokenizer(" ".join(TITLES))
    llm = make_tiny_llama(len(tok))
    ensure_pad_token(llm, tok)
    add_placeholder_tokens(llm, tok)
    builder = PromptBuilder(tok, catalog)
    with pytest.raises(ValueError, match="the recommender has 5 items but the catalog has 24"):
        LLaRA(llm, builder, torch.zeros(5, D_REC), build_projector("linear", D_REC, 32))
    with pytest.raises(ValueError, match="does not fit a projector with d_in=4"):
        LLaRA(llm, builder, torch.zeros(len(catalog), D_REC), build_projector("linear", 4, 32))


# ---- candidate head (a lever beyond the paper) --------------------------------------------------------------------

def test_candidate_head_scores_every_candidate_and_trains(llara):
    from torch import nn

    llara.head = nn.Linear(llara.llm.config.hidden_size, 1)
    llara.head_weight = 1.0
    for hybrid in (True, False):
        prompt = llara.builder.build(HIST, CANDS, hybrid=hybrid, target=5)
        assert len(prompt.candidate_positions) == len(CANDS)
        ranked = llara.rank_head(prompt)
        assert sorted(c for c, _ in ranked) == sorted(CANDS)
    prompts = [llara.builder.build(HIST, CANDS, hybrid=True, target=5), llara.builder.build(HIST[:2] + (9,), CANDS, hybrid=False, target=7)]
    batch = collate(prompts, llara.pad_id, with_targets=True, padding_side="right")
    assert batch.cand_targets.tolist() == [CANDS.index(5), CANDS.index(7)]
    out = llara(batch)
    lm_only = llara.llm(inputs_embeds=llara.embed(batch), attention_mask=batch.attention_mask,
                        position_ids=batch.position_ids, labels=batch.labels).loss
    assert torch.isclose(out.loss, lm_only + out.head_loss)
    out.loss.backward()
    assert llara.head.weight.grad is not None and llara.head.weight.grad.abs().sum() > 0


def test_head_positions_survive_left_padding(llara):
    from torch import nn

    llara.head = nn.Linear(llara.llm.config.hidden_size, 1)
    short = llara.builder.build(HIST, CANDS, hybrid=True)
    long = llara.builder.build(HIST + (9, 10), CANDS, hybrid=True)
    alone = llara.rank_head(short)
    with torch.inference_mode():
        out = llara(collate([short, long], llara.pad_id, padding_side="left"))
    batched = out.candidate_logits[0].float().log_softmax(-1).tolist()
    assert [s for _, s in sorted(alone)] == pytest.approx([s for _, s in sorted(zip(CANDS, batched))], abs=1e-5)


def reference_greedy(llara, prompts, max_new_tokens):
    """The greedy loop the project used before transformers' generate: the reference its answers must equal."""
    batch = collate(prompts, llara.pad_id, padding_side="left")
    with torch.no_grad():
        mask, position, past = batch.attention_mask, batch.position_ids, None
        step_input = {"inputs_embeds": llara.embed(batch)}
        tokens, done = [[] for _ in prompts], [False] * len(prompts)
        stop = llara._newline_ids() | {llara.tokenizer.eos_token_id}
        for _ in range(max_new_tokens):
            result = llara.llm(**step_input, attention_mask=mask, position_ids=position, cache=past, use_cache=True)
            past, nxt = result.cache, result.logits[:, -1].argmax(-1)
            for b, tok in enumerate(nxt.tolist()):
                if not done[b]:
                    tokens[b].append(tok)
                    done[b] = tok in stop
            if all(done):
                break
            step_input = {"input_ids": nxt[:, None]}
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            position = position[:, -1:] + 1
    texts = llara.tokenizer.batch_decode(tokens, skip_special_tokens=True)
    return [t.strip().split("\n")[0].strip() if t.strip() else "" for t in texts]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_generate_equals_the_reference_greedy_loop(llara, seed):
    """Ragged left-padded batches, hybrid and text prompts, several random projectors: the same answers."""
    torch.manual_seed(seed)
    llara.projector.net[0].weight.data.normal_()
    prompts = [llara.builder.build(HIST, CANDS, hybrid=True), llara.builder.build(HIST[:2] + (9,), CANDS, hybrid=False),
               llara.builder.build(HIST[:1], CANDS[:5], hybrid=True)]
    assert llara.generate(prompts, max_new_tokens=6) == reference_greedy(llara, prompts, 6)
