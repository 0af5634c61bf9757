"""Next-item levers on a tiny in-memory LLaRA: user slot, dense loss positions, distillation, residual scoring,
truncated prompts, checkpoint parts and the training-config checks."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from torch.nn import functional as F

from llara.checkpoint import load_tensors, read_llara_meta, save_llara
from llara.constants import IGNORE_INDEX
from llara.data import Catalog
from llara.model.build import model_options
from llara.model.llara_model import LLaRA
from llara.model.llm import add_placeholder_tokens, ensure_pad_token
from llara.model.next_item import NextItemHead, distillation_loss, next_item_loss, title_features
from llara.model.projector import build_projector
from llara.prompt.batch import collate
from llara.prompt.prompts import PromptBuilder
from llara.recommenders import SASRec
from llara.training.train_config import TrainConfig, config_problems, short_prompts

from .conftest import TOY_TITLES, make_prompt_llama, make_prompt_tokenizer

N_ITEMS, D_REC = len(TOY_TITLES), 8
HIST, CANDS, TARGET = (2, 3, 4), (0, 1, 5, 6, 7, 8), 5
LONG = (9, 10, 11, 12, 13)


def tiny_llara(weights: dict | None = None, user_token: bool = True) -> LLaRA:
    tok = make_prompt_tokenizer("( profile )")  # the user slot's words
    llm = make_prompt_llama(len(tok), seed=0)
    ensure_pad_token(llm, tok)
    add_placeholder_tokens(llm, tok)
    catalog = Catalog.from_raw("movie", list(TOY_TITLES), [str(i) for i in range(N_ITEMS)])
    torch.manual_seed(1)
    rec = SASRec(n_items=N_ITEMS, dim=D_REC)
    d = llm.config.hidden_size
    user_proj = build_projector("mlp2x_gelu", D_REC, d) if user_token else None
    head = NextItemHead(rec.item_embeddings(), d, d_key=rec.dim, residual=True)
    return LLaRA(llm, PromptBuilder(tok, catalog, max_length=512, user_token=user_token), rec.item_embeddings(),
                 build_projector("mlp2x_gelu", D_REC, d), recommender=rec, user_projector=user_proj, next_head=head,
                 weights=weights).eval()


@pytest.fixture
def model() -> LLaRA:
    return tiny_llara()


def padded(rec, history) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``(1, L)`` sequence and ``(1,)`` length, as the recommenders take them."""
    seqs = torch.full((1, rec.max_len), rec.pad_id, dtype=torch.long)
    seqs[0, : len(history)] = torch.tensor(history)
    return seqs, torch.tensor([len(history)])


def randomize_head(model: LLaRA, gate: float = 0.0) -> None:
    torch.manual_seed(7)
    with torch.no_grad():
        model.next_head.query.weight.normal_()
        model.next_head.gate.fill_(gate)


def last_hidden(model: LLaRA, batch) -> torch.Tensor:
    """Final hidden states ``(B, T, D)`` of the LLM on the spliced inputs."""
    with torch.no_grad():
        return model.llm(inputs_embeds=model.embed(batch), attention_mask=batch.attention_mask,
                         position_ids=batch.position_ids, output_hidden_states=True).hidden_states[-1]


# ---- 1. prompt layout ---------------------------------------------------------------------------------------------

def test_user_slot_layout(model):
    b = model.builder
    hybrid, text = b.build(HIST, CANDS, hybrid=True), b.build(HIST, CANDS, hybrid=False)
    assert [i for i, t in enumerate(hybrid.input_ids) if t == b.user_id] == [hybrid.user_position]
    assert max(hybrid.history_positions) < hybrid.user_position < min(hybrid.candidate_positions)
    assert hybrid.query_position == hybrid.user_position
    assert hybrid.user_position not in hybrid.slot_positions  # filled by the user projector, not the item table
    assert b.user_id not in text.input_ids and text.input_ids[text.user_position] == b.placeholder_id
    assert len(text.input_ids) == len(hybrid.input_ids)
    assert (text.history_positions, text.user_position, text.candidate_positions) == \
        (hybrid.history_positions, hybrid.user_position, hybrid.candidate_positions)
    plain = PromptBuilder(b.tokenizer, b.catalog, user_token=False)
    for h in (True, False):
        p = plain.build(HIST, CANDS, hybrid=h)
        assert p.user_position is None and b.user_id not in p.input_ids
        assert p.query_position == p.history_positions[-1] and len(p.history_positions) == len(HIST)


# ---- 2. the user slot carries the recommender's state of the prompt's own history ---------------------------------

def test_user_slot_embedding_is_projected_sequence_state(model):
    prompts = [model.builder.build(HIST, CANDS, hybrid=True), model.builder.build(LONG, CANDS, hybrid=True)]
    batch = collate(prompts, model.pad_id, padding_side="left")
    with torch.no_grad():
        embeds = model.embed(batch)  # (B, T, D)
        plain = model.llm.get_input_embeddings()(batch.input_ids)
        users = [model.user_projector(model.recommender.encode(*padded(model.recommender, p.history)))[0]
                 for p in prompts]  # each (D,)
    assert batch.user_rows.tolist() == [0, 1]
    for b in range(2):
        assert torch.allclose(embeds[b, batch.user_cols[b]], users[b], atol=1e-6)
    assert not torch.allclose(users[0], users[1])  # another history, another user vector
    changed = (embeds != plain).any(-1)  # (B, T): exactly the item slots and the user slots
    expected = torch.zeros_like(changed)
    expected[batch.slot_rows, batch.slot_cols] = True
    expected[batch.user_rows, batch.user_cols] = True
    assert torch.equal(changed, expected)


# ---- 3. dense next-item loss: positions, targets, value -----------------------------------------------------------

@pytest.mark.parametrize("side", ["right", "left"])
def test_dense_positions_and_targets(model, side):
    prompts = [model.builder.build(HIST, CANDS, hybrid=True, target=TARGET),
               model.builder.build(LONG, CANDS, hybrid=True, target=7)]
    batch = collate(prompts, model.pad_id, with_targets=True, padding_side=side)
    width = batch.input_ids.shape[1]
    rows, cols, items, offsets = [], [], [], []
    for b, p in enumerate(prompts):
        offset = width - len(p.training_ids()[0]) if side == "left" else 0
        offsets.append(offset)
        reads = [*p.history_positions, p.user_position]
        rows += [b] * len(reads)
        cols += [offset + c for c in reads]
        items += [*p.history[1:], p.target, p.target]
    assert batch.next_rows.tolist() == rows and batch.next_cols.tolist() == cols
    assert batch.next_items.tolist() == items and batch.targets.tolist() == [TARGET, 7]
    assert batch.query_cols.tolist() == [cols[len(HIST)], cols[-1]]  # the user slots
    assert (offsets[0] > 0) == (side == "left")  # the short prompt is shifted by left padding
    unknown = collate(prompts, model.pad_id, padding_side=side)
    assert unknown.next_items.tolist() == [IGNORE_INDEX] * len(items)
    assert unknown.targets.tolist() == [IGNORE_INDEX] * 2


def test_next_losses_match_hand_computation():
    model = tiny_llara(weights={"next": 2.0, "distill": 0.5})
    randomize_head(model, gate=0.3)  # zero query weights would make every logit 0 and the CE log(N) anywhere
    prompts = [model.builder.build(HIST, CANDS, hybrid=True, target=TARGET),
               model.builder.build(LONG, CANDS, hybrid=False, target=7)]
    batch = collate(prompts, model.pad_id, with_targets=True, padding_side="right")
    hidden = last_hidden(model, batch)
    with torch.no_grad():
        out = model(batch)
        dense = model.next_head(hidden[batch.next_rows, batch.next_cols])  # (H, N)
        query = model.next_head(hidden[torch.arange(2), batch.query_cols])  # (B, N)
        rec = torch.cat([model.recommender.full_scores(*padded(model.recommender, p.history)) for p in prompts])
        cands = torch.tensor([CANDS, CANDS])
        targets = torch.tensor([TARGET, 7])
    assert out.losses["next"] == pytest.approx(2.0 * float(F.cross_entropy(dense, batch.next_items)), rel=1e-4)
    assert torch.allclose(out.residual_logits, rec + 0.3 * query, atol=1e-4)
    resid = F.cross_entropy(rec + 0.3 * query, targets)
    assert out.losses["residual"] == pytest.approx(2.0 * float(resid), rel=1e-4)
    kl = distillation_loss(query.gather(1, cands), rec.gather(1, cands))
    assert out.losses["distill"] == pytest.approx(0.5 * float(kl), rel=1e-4)
    model.weights["dense"] = 0.0  # only the query position predicts the target
    with torch.no_grad():
        sparse = model(batch).losses["next"]
    assert sparse == pytest.approx(2.0 * float(F.cross_entropy(query, targets)), rel=1e-4)
    with torch.no_grad():  # no targets: no next-item losses at all
        assert not {"next", "residual", "distill"} & set(model(collate(prompts, model.pad_id)).losses)


def test_next_item_loss_skips_unknown_rows():
    logits = torch.randn(3, 5, requires_grad=True)
    none = next_item_loss(logits, torch.full((3,), IGNORE_INDEX))
    assert none.requires_grad and float(none.detach()) == 0.0  # keeps the graph, contributes nothing
    part = next_item_loss(logits, torch.tensor([1, IGNORE_INDEX, 4]))
    assert torch.isclose(part, F.cross_entropy(logits[[0, 2]], torch.tensor([1, 4])))


# ---- 4. distillation ----------------------------------------------------------------------------------------------

def test_distillation_is_kl_teacher_to_student():
    torch.manual_seed(0)
    student, teacher = torch.randn(4, 6), torch.randn(4, 6) * 3  # (B, C)
    expected = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=teacher),
                                                 torch.distributions.Categorical(logits=student)).mean()
    assert torch.isclose(distillation_loss(student, teacher), expected, atol=1e-6)
    reverse = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=student),
                                                torch.distributions.Categorical(logits=teacher)).mean()
    assert not torch.isclose(distillation_loss(student, teacher), reverse)  # direction matters
    assert float(distillation_loss(teacher + 5.0, teacher)) == pytest.approx(0.0, abs=1e-6)  # shift-invariant
    for seed in range(5):
        torch.manual_seed(seed)
        assert float(distillation_loss(torch.randn(3, 7), torch.randn(3, 7))) >= 0


# ---- 5. residual scoring ------------------------------------------------------------------------------------------

def test_fresh_head_is_neutral():
    feats = torch.randn(N_ITEMS, D_REC)
    head = NextItemHead(feats, 32, d_key=D_REC, residual=True)
    assert float(head.gate.detach()) == 0.0 and torch.count_nonzero(head.query.weight) == 0
    assert torch.allclose(head.keys(), feats)  # identity keys: the features themselves
    assert torch.equal(head(torch.randn(2, 32)), torch.zeros(2, N_ITEMS))
    with pytest.raises(ValueError, match="without residual scoring"):
        NextItemHead(feats, 32, d_key=D_REC).residual(torch.zeros(3), torch.zeros(3))


def test_residual_ranking_starts_as_the_recommender(model):
    prompt = model.builder.build(LONG, CANDS, hybrid=True)
    with torch.no_grad():
        rec = model.recommender.score(*padded(model.recommender, LONG), torch.tensor([CANDS]))[0]  # (C,)
    expected = [CANDS[i] for i in rec.argsort(descending=True).tolist()]
    ranked = model.rank_items(prompt, residual=True)
    assert [c for c, _ in ranked] == expected
    by_item = dict(ranked)
    assert [by_item[c] for c in CANDS] == pytest.approx(rec.log_softmax(-1).tolist(), abs=1e-5)
    randomize_head(model, gate=1.0)
    changed = dict(model.rank_items(prompt, residual=True))
    assert max(abs(changed[c] - by_item[c]) for c in CANDS) > 1e-3


# ---- 6. truncated prompts -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("hybrid", [True, False])
def test_truncated_prompt_keeps_the_query_state(model, hybrid):
    randomize_head(model)
    full = model.builder.build(LONG, CANDS, hybrid=hybrid, target=TARGET)
    cut = full.truncated()
    assert cut.input_ids == full.input_ids[: full.query_position + 1] and cut.query_position == full.query_position
    assert cut.candidates == full.candidates and cut.candidate_positions == () and cut.target_ids == ()
    assert cut.slot_positions == (full.history_positions if hybrid else ())
    batch = collate([full], model.pad_id)
    with torch.no_grad():
        expected = model.next_head(last_hidden(model, batch)[0, full.query_position])  # (N,)
        short = last_hidden(model, collate([cut], model.pad_id))[0]  # (T', D)
        long = last_hidden(model, batch)[0, : len(cut.input_ids)]
    assert torch.allclose(short, long, atol=1e-5)  # causal attention: the cut tokens are never seen
    assert torch.allclose(model.item_scores([full])[0], expected, atol=1e-4)


# ---- 7. checkpoint parts and options ------------------------------------------------------------------------------

META = {"base_model": "tiny", "precision": "fp32", "dataset": {"name": "toy", "n_items": N_ITEMS},
        "recommender": {"path": "rec/sasrec", "model": "sasrec", "weights_sha256": "0" * 64}}


def fake_model(with_next: bool) -> SimpleNamespace:
    """What save_llara reads of a LLaRA (no PEFT adapter), optionally with the next-item parts."""
    torch.manual_seed(3)
    head = NextItemHead(torch.randn(N_ITEMS, D_REC), 16, d_key=D_REC, residual=True) if with_next else None
    return SimpleNamespace(llm=object(), projector=build_projector("linear", D_REC, 16), head=None,
                           user_projector=build_projector("mlp2x_gelu", D_REC, 16) if with_next else None,
                           next_head=head, placeholder_rows=lambda: {"ids": torch.tensor([5, 6, 7, 8]), "rows": torch.zeros(4, 16)})


def test_save_llara_writes_next_item_parts(tmp_path):
    model = fake_model(with_next=True)
    folder = save_llara(tmp_path / "ck", model, META)
    files = read_llara_meta(folder)["files"]
    assert {"user_projector.safetensors", "next_head.safetensors"} <= set(files) and "head.safetensors" not in files
    for name in ("user_projector", "next_head"):
        saved = load_tensors(folder / f"{name}.safetensors", files[f"{name}.safetensors"])
        state = getattr(model, name).state_dict()
        assert saved.keys() == state.keys() and all(torch.equal(saved[k], state[k]) for k in state)
    assert "features" not in load_tensors(folder / "next_head.safetensors")  # rebuilt from the recommender
    plain = read_llara_meta(save_llara(tmp_path / "plain", fake_model(with_next=False), META))["files"]
    assert set(plain) == {"projector.safetensors", "token_rows.safetensors"}


def test_model_options_from_saved_configs():
    new = model_options({"head_weight": 0.0, "title_weight": 0.0, "next_weight": 1.5, "dense": False,
                         "user_token": True, "residual": True, "distill_weight": 0.2, "text_items": False})
    assert new == {"head_weight": 0.0, "next_item": True, "user_token": True, "answer": "title", "residual": True,
                   "item_features": "recommender", "weights": {"title": 0.0, "next": 1.5, "dense": 0.0, "distill": 0.2, "follow": 0.0, "follow_top": 0.0,
                                                             "follow_temperature": 1.0, "mutual": 0.0}}
    old = model_options({"head_weight": 0.5, "mode": "curriculum"})  # saved before the next-item options
    assert old == {"head_weight": 0.5, "next_item": False, "user_token": False, "answer": "title", "residual": False,
                   "item_features": "recommender", "weights": {"title": 1.0, "next": 0.0, "dense": 1.0, "distill": 0.0, "follow": 0.0, "follow_top": 0.0,
                                                             "follow_temperature": 1.0, "mutual": 0.0}}
    assert model_options(dataclasses.asdict(TrainConfig(next_weight=1.0)))["next_item"] is True
    assert model_options({"next_weight": 1.0, "text_items": True})["item_features"] == "titles"  # the older spelling
    assert model_options({"next_weight": 1.0, "item_features": "recommender+minilm"})["item_features"] == "recommender+minilm"
    assert model_options({"answer": "index"})["answer"] == "index"  # an indexed-answer checkpoint builds such prompts


# ---- 8. training-config checks ------------------------------------------------------------------------------------

@pytest.mark.parametrize("changes, flag", [
    ({"distill_weight": 0.5}, "--distill-weight"),
    ({"residual": True}, "--residual"),
    ({"next_weight": 1.0, "mode": "text", "text_items": True, "user_token": True}, "--text-items"),
    ({"title_weight": 0.0}, "--title-weight"),
    ({"item_features": "minilm"}, "--item-features"),  # no next-item head to use them
    ({"next_weight": 1.0, "item_features": "minilm", "user_token": True}, "--item-features"),
    ({"modality_dropout": 1.0}, "--modality-dropout"),
    ({"item_dropout": 0.5}, "--item-dropout"),  # without --modality-dropout it would do nothing
    ({"modality_dropout": 0.25, "item_dropout": 1.0}, "--item-dropout"),
])
def test_config_problems_name_the_flag(changes, flag):
    problems = config_problems(TrainConfig(**changes))
    assert len(problems) == 1 and flag in problems[0], problems


def test_valid_next_item_configs():
    hybrid = TrainConfig(next_weight=1.0, distill_weight=0.5, residual=True, user_token=True, title_weight=0.0)
    text = TrainConfig(next_weight=1.0, mode="text", text_items=True)
    assert config_problems(hybrid) == [] and config_problems(text) == []
    assert short_prompts(hybrid) and not short_prompts(text)  # the title loss reads the answer
    assert not short_prompts(TrainConfig(next_weight=1.0, title_weight=0.0, head_weight=0.5))
    assert not short_prompts(TrainConfig(title_weight=0.0, head_weight=1.0))


# ---- 9. title features --------------------------------------------------------------------------------------------

def test_title_features_are_mean_token_rows():
    emb = torch.randn(10, 4)  # (V, D)
    feats = title_features(emb, [[1, 2, 3], [7], [4, 4, 9]])  # (3, D)
    assert torch.allclose(feats, torch.stack([emb[[1, 2, 3]].mean(0), emb[7], emb[[4, 4, 9]].mean(0)]))
    with pytest.raises(ValueError, match="empty title"):
        title_features(emb, [[1], []])


def test_a_heads_only_pass_skips_the_output_layer_and_matches_the_full_pass():
    """Without the title loss the pass feeds the heads only: the decoder alone runs (the output layer, whose
    one-position logits cost more than the whole pass once it is frozen, never does), with the same hidden states."""
    model = tiny_llara(weights={"title": 0.0, "next": 1.0})
    randomize_head(model, gate=0.3)
    model.requires_grad_(False)  # as loaded for inference
    prompts = [model.builder.build(HIST, CANDS, hybrid=True).truncated(),
               model.builder.build(LONG, CANDS, hybrid=True).truncated()]
    batch = collate(prompts, model.pad_id)
    hidden = last_hidden(model, batch)
    calls = []
    hook = model.llm.get_output_embeddings().register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        out = model(batch)
        expected = model.next_head(hidden[torch.arange(2), batch.query_cols])
    hook.remove()
    assert calls == [] and out.logits is None
    assert torch.allclose(out.item_logits, expected, atol=1e-5)


def test_a_heads_only_pass_trains_the_lora_adapter():
    """The decoder-only pass goes through a peft-wrapped LLM too: its LoRA layers get gradients."""
    from llara.model.build import attach_lora

    model = tiny_llara(weights={"title": 0.0, "next": 1.0, "dense": 1.0, "distill": 0.0})
    randomize_head(model)  # zero query weights would give every hidden state a zero gradient
    model.llm = attach_lora(model.llm, r=2, alpha=4, dropout=0.0, targets="q_proj,v_proj")
    for name, p in model.llm.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)  # B starts at zero, which would hide gradients to A
    model.train()
    batch = collate([model.builder.build(HIST, CANDS, hybrid=True, target=TARGET).truncated()], model.pad_id,
                    with_targets=True, padding_side="right")
    model(batch).loss.backward()
    lora_a = [p for n, p in model.llm.named_parameters() if "lora_A" in n]
    assert lora_a and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_a)
