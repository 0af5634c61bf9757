"""Attributions (llara.attribution.methods) and their command line (llara.measurement.explain) on tiny in-memory models.

The "only signal" tests engineer a model whose input carries information at exactly one place: every token
embedding is zero (RMSNorm maps zero to zero, so a zero token adds nothing), and either one history item's
projected vector or one history title's token is non-zero. That part must get the largest attribution."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from llara.attribution.deletion import attribute_deletion
from llara.attribution.methods import (
    Ablation,
    ablation_log_likelihoods,
    attribute_items,
    attribute_tokens,
    neutral_slot_vector,
)
from llara.attribution.prompt_layout import build_prompt, prompt_layout
from llara.data import Catalog
from llara.measurement.explain import main as cli_main
from llara.model.build import attach_lora
from llara.model.llara_model import LLaRA
from llara.model.llm import add_placeholder_tokens, ensure_pad_token, load_base_model
from llara.model.projector import build_projector
from llara.prompt.prompts import Prompt, PromptBuilder

from .conftest import make_tiny_llama
from .test_model import D_REC, TITLES, make_word_tokenizer

HIST, CANDS = (2, 3, 17, 4), (0, 1, 5, 6, 7, 8)  # Heat, Fargo, Tin Cup (two tokens), Casino
TARGET = 5


def _llara(llm, tok, items: torch.Tensor | None = None, projector=None) -> LLaRA:
    catalog = Catalog.from_raw("movie", TITLES, [str(i) for i in range(len(TITLES))])
    if items is None:
        torch.manual_seed(1)
        items = torch.randn(len(catalog), D_REC)
    projector = projector or build_projector("mlp2x_gelu", D_REC, llm.config.hidden_size)
    return LLaRA(llm, PromptBuilder(tok, catalog, max_length=128), items, projector).eval()


def make_llara(tie: bool = True) -> LLaRA:
    tok = make_word_tokenizer(" ".join(TITLES))
    llm = make_tiny_llama(len(tok), tie_word_embeddings=tie, seed=0)
    ensure_pad_token(llm, tok)
    add_placeholder_tokens(llm, tok)
    return _llara(llm, tok)


@pytest.fixture(scope="module")
def model() -> LLaRA:
    return make_llara()


def engineered(signal: str) -> tuple[LLaRA, int]:
    """A model whose input is zero everywhere except one history item's slot (``signal="slot"``) or title token
    (``"title"``); returns it and that item. The output head is scaled up so log-likelihoods move visibly."""
    model = make_llara(tie=False)
    item = HIST[1]  # Fargo: one word token
    with torch.no_grad():
        emb = model.llm.get_input_embeddings().weight
        word = model.tokenizer.convert_tokens_to_ids("Fargo")
        kept = emb[word].clone()
        emb.zero_()
        if signal == "title":
            emb[word] = kept * 10
        model.llm.lm_head.weight.mul_(30)
        for layer in model.projector.net:
            if isinstance(layer, torch.nn.Linear):
                layer.bias.zero_()  # a zero item row then projects to a zero vector
        model.item_table.zero_()
        if signal == "slot":
            model.item_table[item] = torch.randn(D_REC, generator=torch.Generator().manual_seed(0)) * 3
    return model, item


# ---- item level ------------------------------------------------------------------------------------------------

def test_item_level_defaults_to_the_models_choice(model):
    prompt = model.builder.build(HIST, CANDS, hybrid=True)
    att = attribute_items(model, prompt)
    ranked = model.rank(prompt)
    assert att.target == ranked[0][0] and att.target_source == "model"
    assert att.log_likelihood == pytest.approx(ranked[0][1], abs=1e-4)  # the same quantity rank() scores
    assert att.cost["forward_passes"] == 3 and att.cost["sequences"] == 1 + 2 * len(HIST) + 1 + len(CANDS)
    assert att.cost["seconds"] > 0


def test_masking_a_title_equals_deleting_it(model):
    prompt = model.builder.build(HIST, CANDS, hybrid=True)
    gone = prompt_layout(model, prompt).history_titles[2]  # "Tin Cup": two tokens
    full, (masked,), calls = ablation_log_likelihoods(model, prompt, TARGET, [Ablation(hide=tuple(gone))])
    ids = [t for p, t in enumerate(prompt.input_ids) if p not in gone]
    shifted = tuple(p - sum(g < p for g in gone) for p in prompt.slot_positions)
    deleted = Prompt(prompt.text, tuple(ids), shifted, prompt.slot_items, True, prompt.history, prompt.candidates, 0)
    assert masked == pytest.approx(dict(model.rank_uncached(deleted))[TARGET], abs=1e-4)
    assert full == pytest.approx(dict(model.rank_uncached(prompt))[TARGET], abs=1e-4)
    assert masked != pytest.approx(full, abs=1e-4) and calls == 1


def test_ablating_nothing_changes_nothing(model):
    prompt = model.builder.build(HIST, CANDS, hybrid=True)
    full, ablated, _ = ablation_log_likelihoods(model, prompt, TARGET, [Ablation(), Ablation()], batch_size=2)
    assert ablated == [pytest.approx(full, abs=1e-6)] * 2


@pytest.mark.parametrize("hybrid", [True, False])
def test_scores_are_finite_and_normalised(model, hybrid):
    prompt = model.builder.build(HIST, CANDS, hybrid=hybrid)
    for att in (attribute_items(model, prompt, TARGET), attribute_tokens(model, prompt, TARGET),
                attribute_tokens(model, prompt, TARGET, method="grad_x_input")):
        scores = [t.score for t in att.tokens]
        assert len(att.tokens) == len(prompt.input_ids) and all(math.isfinite(s) and -1 <= s <= 1 for s in scores)
        assert max(abs(s) for s in scores) == pytest.approx(1.0)
        assert [it.item for it in att.items] == list(HIST) and att.target == TARGET and att.target_title == "Babe"
        for it in att.items:
            assert math.isfinite(it.title_score) and it.total == pytest.approx(it.title_score + (it.embedding_score or 0))
            assert (it.embedding_score is not None) == hybrid  # a text-only prompt has no embedding slots
        parts = {t.part for t in att.tokens}
        assert ("history slot" in parts) == hybrid and "history title" in parts and "candidate title" in parts
        assert [t.text for t in att.tokens if t.item == 17] == (["Tin", "Cup", "<HistoryEmb>"] if hybrid else ["Tin", "Cup"])
        json.dumps(att.to_dict())  # the UI gets plain data
        assert att.highlighted()[0] == (att.tokens[0].text, att.tokens[0].score)


@pytest.mark.parametrize("hybrid", [True, False])
def test_integrated_gradients_are_complete(model, hybrid):
    # the scores add up to logL(prompt) - logL(blank prompt): captum's convergence delta is the shortfall
    att = attribute_tokens(model, model.builder.build(HIST, CANDS, hybrid=hybrid), TARGET, n_steps=8)
    assert abs(att.details["convergence_delta"]) < 0.01 * abs(sum(t.raw for t in att.tokens))
    assert att.cost["forward_passes"] >= 2 and att.cost["sequences"] >= 8 + 2


def test_one_slot_is_the_only_signal():
    model, item = engineered("slot")
    prompt = model.builder.build(HIST, CANDS, hybrid=True)
    att = attribute_items(model, prompt, TARGET, slot_baseline="placeholder")  # <PH> is zero here: "no item"
    parts = {(it.item, "slot"): it.embedding_score for it in att.items} | {(it.item, "title"): it.title_score for it in att.items}
    assert max(parts, key=lambda k: abs(parts[k])) == (item, "slot")
    assert abs(parts[(item, "slot")]) > 0.1
    assert all(abs(v) < 1e-6 for (i, kind), v in parts.items() if kind == "slot" and i != item)  # zero stays zero
    tokens = attribute_tokens(model, prompt, TARGET, slot_baseline="placeholder", n_steps=16)
    best = max(range(len(tokens.tokens)), key=lambda p: abs(tokens.tokens[p].score))
    assert (tokens.tokens[best].part, tokens.tokens[best].item) == ("history slot", item)


def test_one_title_is_the_only_signal():
    model, item = engineered("title")
    prompt = model.builder.build(HIST, CANDS, hybrid=False)
    att = attribute_items(model, prompt, TARGET)
    best = max(att.items, key=lambda it: abs(it.title_score))
    assert best.item == item and abs(best.title_score) > 0.1
    tokens = attribute_tokens(model, prompt, TARGET)
    best_token = max(tokens.tokens, key=lambda t: abs(t.score))
    assert (best_token.text, best_token.part, abs(best_token.score)) == ("Fargo", "history title", 1.0)


# ---- deletion (leave-one-out) ----------------------------------------------------------------------------------

@pytest.mark.parametrize("hybrid", [True, False])
def test_deletion_scores_are_the_rebuilt_prompts_score_changes(model, hybrid):
    prompt = model.builder.build(HIST, CANDS, hybrid=hybrid)
    att = attribute_deletion(model, prompt, TARGET)
    full = dict(model.rank(prompt))[TARGET]
    assert att.method == "deletion" and att.level == "item" and att.log_likelihood == pytest.approx(full, abs=1e-5)
    for k, it in enumerate(att.items):
        without = model.builder.build([h for j, h in enumerate(HIST) if j != k], CANDS, hybrid=hybrid)
        assert it.total == pytest.approx(full - dict(model.rank(without))[TARGET], abs=1e-5)
        assert it.title_score is None and it.embedding_score is None  # one effect for the whole item
    assert len({round(it.total, 6) for it in att.items}) > 1  # the items differ: not a constant
    assert att.cost["forward_passes"] == 1 + len(HIST)
    tin_cup = [t for t in att.tokens if t.item == 17]  # every token of an item (title and slot) carries its score
    assert {t.raw for t in tin_cup} == {att.items[2].total}
    assert [t.text for t in tin_cup] == (["Tin", "Cup", "<HistoryEmb>"] if hybrid else ["Tin", "Cup"])
    json.dumps(att.to_dict())


def test_deletion_of_a_next_item_model_is_one_batched_pass_with_the_single_prompt_scores():
    """A model with a next-item head scores the full prompt and every leave-one-out prompt in one batch; each effect
    equals the difference of the prompts' scores taken one at a time (``rank_items``)."""
    from .test_next_item import CANDS as NCANDS
    from .test_next_item import LONG, randomize_head, tiny_llara

    model = tiny_llara(user_token=False)
    randomize_head(model)
    prompt = model.builder.build(LONG, NCANDS, hybrid=True)
    target = NCANDS[1]
    att = attribute_deletion(model, prompt, target)
    full = dict(model.rank_items(prompt))[target]
    assert att.log_likelihood == pytest.approx(full, abs=1e-4)
    for k, it in enumerate(att.items):
        without = model.builder.build([h for j, h in enumerate(LONG) if j != k], NCANDS, hybrid=True)
        assert it.total == pytest.approx(full - dict(model.rank_items(without))[target], abs=1e-4)
    assert len({round(it.total, 5) for it in att.items}) > 1
    assert att.cost["forward_passes"] == 1 and att.cost["sequences"] == 1 + len(LONG)


def test_deletion_finds_the_only_signal():
    model, item = engineered("slot")
    att = attribute_deletion(model, model.builder.build(HIST, CANDS, hybrid=True), TARGET)
    best = max(att.items, key=lambda it: abs(it.total))
    assert best.item == item and abs(best.total) > 0.1


def test_deletion_needs_two_watched_items(model):
    with pytest.raises(ValueError, match="at least 2 watched items"):
        attribute_deletion(model, model.builder.build(HIST[:1], CANDS, hybrid=True), TARGET)


# ---- precisions and adapters -----------------------------------------------------------------------------------

@pytest.mark.parametrize("precision", ["bf16", "nf4"])
def test_peft_wrapped_low_precision(tmp_path, precision):
    # hidden 64: bitsandbytes' CPU 4-bit kernels pack blocks of 64 input features
    tok = make_word_tokenizer(" ".join(TITLES))
    make_tiny_llama(len(tok), hidden_size=64).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    llm, tok = load_base_model(str(tmp_path), precision=precision)
    model = _llara(attach_lora(llm, r=4, targets="q_proj,v_proj"), tok)
    with torch.no_grad():
        for name, param in model.llm.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # a trained-looking adapter (peft initialises B to zero)
    before = {n: p.detach().clone() for n, p in model.llm.named_parameters()}
    prompt = model.builder.build(HIST, CANDS, hybrid=True)
    fresh = attribute_tokens(model, prompt, TARGET, method="grad_x_input")
    assert fresh.details["compute_dtype"] == ("float32" if precision == "bf16" else "bfloat16")  # nf4: bnb's compute
    assert fresh.log_likelihood == pytest.approx(dict(model.rank_uncached(prompt))[TARGET], abs=0.05)
    # the bf16 weights were upcast for the call and cast back exactly (LoRA weights stay float32)
    assert all(p.dtype == before[n].dtype for n, p in model.llm.named_parameters())
    # (4-bit weights are uint8 and bitsandbytes repacks them on its own in no-grad passes: compare the rest)
    assert all(torch.equal(p, before[n]) for n, p in model.llm.named_parameters() if p.is_floating_point())
    for att in (attribute_items(model, prompt, TARGET), attribute_tokens(model, prompt, TARGET, n_steps=4),
                attribute_tokens(model, prompt, TARGET, method="grad_x_input")):
        assert all(math.isfinite(t.raw) for t in att.tokens) and any(t.raw != 0 for t in att.tokens)
        assert all(it.embedding_score is not None and math.isfinite(it.embedding_score) for it in att.items)
    # no-grad passes in between (item level) make bitsandbytes repack its weights for a kernel without autograd:
    # the gradients must stay (up to bf16 rounding; unguarded, they silently dropped to zero)
    now, before = torch.tensor([t.raw for t in att.tokens]), torch.tensor([t.raw for t in fresh.tokens])
    assert torch.cosine_similarity(now, before, dim=0) > 0.99 and (now - before).abs().max() < 0.1 * before.abs().max()
    assert not any(p.grad is not None for p in model.parameters())  # gradients were taken w.r.t. the input only


def test_bf16_model_is_attributed_in_float32(tmp_path):
    # in bf16 compute the batch layout alone moves scores by as much as the effects; upcast, it does not
    tok = make_word_tokenizer(" ".join(TITLES))
    make_tiny_llama(len(tok)).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model = _llara(*load_base_model(str(tmp_path), precision="bf16"))
    prompt = model.builder.build(HIST, CANDS, hybrid=True)
    wide, narrow = (attribute_items(model, prompt, TARGET, batch_size=b) for b in (32, 2))
    assert wide.details["compute_dtype"] == "float32" and model.llm.get_input_embeddings().weight.dtype == torch.bfloat16
    assert [it.total for it in wide.items] == pytest.approx([it.total for it in narrow.items], abs=1e-5)
    assert attribute_items(model, prompt, TARGET, upcast=False).details["compute_dtype"] == "bfloat16"


def test_neutral_slot_vectors(model):
    mean = neutral_slot_vector(model, "mean")
    projected = model.projector(model.item_table)
    assert mean.shape == (model.llm.config.hidden_size,) and mean.dtype == torch.float32
    assert float(mean.norm()) == pytest.approx(float(projected.detach().norm(dim=-1).mean()), rel=1e-4)
    ph = model.llm.get_input_embeddings().weight[model.builder.placeholder_id]
    assert torch.equal(neutral_slot_vector(model, "placeholder"), ph.float())


# ---- errors and prompts from titles ----------------------------------------------------------------------------

def test_build_prompt_from_titles(model):
    prompt, target = build_prompt(model, ["heat", "Fargo", "Tin Cup"], candidate="Babe", k=6, seed=3)
    assert prompt.history == (2, 3, 17) and target == 5 and target in prompt.candidates and len(prompt.candidates) == 6
    again, _ = build_prompt(model, ["heat", "Fargo", "Tin Cup"], candidate="Babe", k=6, seed=3)
    assert again.candidates == prompt.candidates  # seeded
    drawn, none = build_prompt(model, [2, 3], k=5, hybrid=False)
    assert none is None and len(drawn.candidates) == 5 and not set(drawn.candidates) & {2, 3} and not drawn.hybrid
    given, target = build_prompt(model, ["Heat"], candidates=["Babe", "Alien", "Jaws"], candidate="alien")
    assert given.candidates == (5, 6, 8) and target == 6


@pytest.mark.parametrize("kwargs, message", [
    ({"history": []}, "the history is empty"),
    ({"history": ["Heat", "Heaat"]}, r"history item 2: no movie titled 'Heaat' in the catalog; did you mean 'Heat'"),
    ({"candidate": "Fargo"}, r"candidate 'Fargo' is in the history"),
    ({"candidate": "Ghost", "candidates": ["Babe", "Alien"]}, r"candidate 'Ghost' is not among the 2 candidates given"),
    ({"candidates": ["Babe", "Heat"]}, r"'Heat' is both in the history and among the candidates"),
    ({"candidates": ["Babe", "Nope"]}, r"candidate 2: no movie titled 'Nope'"),
    ({"history": [2, 999]}, r"history item 2 999 is out of range"),
])
def test_build_prompt_errors(model, kwargs, message):
    args = {"history": ["Heat", "Fargo"], "k": 6, **kwargs}
    with pytest.raises(ValueError, match=message):
        build_prompt(model, **args)


def test_attribution_errors(model):
    prompt = model.builder.build(HIST, CANDS, hybrid=True)
    with pytest.raises(ValueError, match=r"candidate 9 \('Rocky'\) is not among the prompt's 6 candidates"):
        attribute_items(model, prompt, 9)
    with pytest.raises(ValueError, match="not among the prompt's 6 candidates"):
        attribute_tokens(model, prompt, 9)
    with pytest.raises(ValueError, match="history is empty"):
        attribute_items(model, replace(prompt, history=()), TARGET)
    with pytest.raises(ValueError, match="unknown token-level method 'lime'; valid: ig, grad_x_input"):
        attribute_tokens(model, prompt, TARGET, method="lime")
    with pytest.raises(ValueError, match="n_steps must be >= 1"):
        attribute_tokens(model, prompt, TARGET, n_steps=0)
    with pytest.raises(ValueError, match="unknown slot baseline 'zero'"):
        attribute_items(model, prompt, TARGET, slot_baseline="zero")
    with pytest.raises(ValueError, match="are not embedding slots"):
        ablation_log_likelihoods(model, prompt, TARGET, [Ablation(neutral_slots=(1,))])
    with pytest.raises(ValueError, match="may hide prompt positions 1..L-1 only"):
        ablation_log_likelihoods(model, prompt, TARGET, [Ablation(hide=(0,))])


# ---- command line --------------------------------------------------------------------------------------------

def test_cli_tables_and_json(toy_run, tmp_path, capsys):
    ckpt = str(toy_run["output"])
    out = tmp_path / "att.json"
    assert cli_main(["--checkpoint", ckpt, "--history", "Alpha|Bravo|Charlie", "--level", "both", "--json", str(out),
                     "--steps", "2"]) == 0
    text = capsys.readouterr().out
    assert "the model's top-ranked candidate" in text and "item-level attribution" in text and "token-level" in text
    assert all(title in text for title in ("Alpha", "Bravo", "Charlie")) and "cost: " in text
    saved = json.loads(out.read_text())
    assert set(saved) == {"item", "token"} and saved["item"]["target"] == saved["token"]["target"]
    assert len(saved["item"]["items"]) == 3 and saved["item"]["items"][0]["embedding_score"] is not None

    assert cli_main(["--checkpoint", ckpt, "--history", "Alpha, Bravo", "--sep", ", ", "--item", "Charlie",
                     "--candidate", "delta", "--candidates", "Delta, Echo, Foxtrot", "--prompt", "text"]) == 0
    text = capsys.readouterr().out
    assert "target: Delta" in text and "named" in text and "3 history items, 3 candidates" in text
    assert "   -  " in text or " - " in text  # text-only: no slot column values


@pytest.mark.parametrize("argv, message", [
    (["--history", "Alpha|Bravo"], "error: --checkpoint is required"),
    (["--history", "Alpha|Bravoo", "--checkpoint", "CKPT"], "error: history item 2: no artist titled 'Bravoo'"),
    (["--history", "Alpha", "--candidate", "Echo", "--candidates", "Delta|Foxtrot", "--checkpoint", "CKPT"],
     "error: candidate 'Echo' is not among the 2 candidates given"),
    (["--checkpoint", "CKPT"], "error: no history"),
    (["--history", "Alpha", "--checkpoint", "/nonexistent/ckpt"], "error: "),
])
def test_cli_errors(toy_run, capsys, argv, message):
    argv = [str(toy_run["output"]) if a == "CKPT" else a for a in argv]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # (model loading may log progress)
    assert len(errors) == 1 and errors[0].startswith(message) and "Traceback" not in err


def test_cli_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--level", "everything"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: argument --level: invalid choice") and len(err.splitlines()) == 1


def test_nf4_model_answers_the_same_after_an_attribution(tmp_path):
    """Regression: bitsandbytes re-packs 4-bit weights differently after the unpack that gradients need; a served
    nf4 model then ranked differently after one attribution. The packed form is restored exactly."""
    tok = make_word_tokenizer(" ".join(TITLES))
    make_tiny_llama(len(tok), hidden_size=64).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    llm, tok = load_base_model(str(tmp_path), precision="nf4")
    model = _llara(llm, tok).eval()
    prompt = model.builder.build(HIST, CANDS, hybrid=True)
    model.rank(prompt)  # a no-grad pass first: bitsandbytes packs for its inference kernel here
    before = model.rank(prompt)
    attribute_tokens(model, prompt, TARGET, method="grad_x_input")
    assert model.rank(prompt) == before


def test_words_merge_sub_word_pieces_and_keep_slots_and_line_breaks():
    from llara.attribution.methods import Attribution, TokenScore

    def tok(text, raw, part="history title"):
        return TokenScore(text, 0.0, raw, part)

    tokens = [tok("<|im_start|>", 0.0, "prompt"), tok(" Sch", 1.0), tok("ind", 2.0), tok("ler", -0.5), tok("'s", 0.5),
              tok(" <HistoryEmb>", -4.0, "history slot"), tok(",", 0.0, "prompt"), tok("\n", 0.0, "prompt"),
              tok("Answer", 1.0, "prompt")]
    att = Attribution("token", "grad_x_input", True, 1, "x", "model", 0.0, tokens, [])
    words = att.words()
    assert [w for w, _ in words] == ["<|im_start|>", " Schindler's", " <HistoryEmb>", ",", "\n", "Answer"]
    scores = dict(words)
    assert scores[" Schindler's"] == pytest.approx(3.0 / 4.0) and scores[" <HistoryEmb>"] == pytest.approx(-1.0)
    assert scores["\n"] is None  # whitespace alone: kept for the layout, not scored
    # item level: every token of a part carries the part's score, so a word takes it once, not once per piece
    item = Attribution("item", "ablation", True, 1, "x", "model", 0.0, tokens[1:5], [])
    assert item.words() == [(" Schindler's", pytest.approx(1.0))]
