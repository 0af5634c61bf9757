"""A saved LoRA adapter applied beside frozen layers (llara.model.lora_side): the same outputs as peft's unmerged
LoRA, the same over int8 layers up to int8 rounding, and a clear refusal for adapters it cannot apply exactly."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from llara.model.cpu8bit import Int8Linear, quantize_int8
from llara.model.lora_side import SideLoRA, attach_side_lora

from .conftest import make_tiny_llama

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _saved_adapter(tmp_path, base, **extra):
    """Save a LoRA adapter over a copy of ``base`` with random (non-zero) A and B, as training would leave them."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=16, lora_dropout=0.1,
                                                                target_modules=TARGETS, **extra))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.2)
    peft_model.save_pretrained(tmp_path / "adapter")
    return peft_model.eval(), tmp_path / "adapter"


@pytest.mark.parametrize("rslora", [False, True])
def test_side_lora_matches_peft_unmerged(tmp_path, rslora):
    base = make_tiny_llama(40)
    peft_model, folder = _saved_adapter(tmp_path, base, use_rslora=rslora)
    ours = copy.deepcopy(base)
    assert attach_side_lora(ours, folder) == 2 * len(TARGETS)  # two layers of the tiny model
    ids = torch.randint(0, 40, (2, 9))
    with torch.no_grad():
        want, got, plain = peft_model(ids).logits, ours(ids).logits, base(ids).logits
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(plain, want, atol=1e-2)  # the update matters, so the match is not vacuous


def test_side_lora_over_int8_layers_and_their_gradients(tmp_path):
    base = make_tiny_llama(40)
    peft_model, folder = _saved_adapter(tmp_path, base)
    ours = copy.deepcopy(base)
    quantize_int8(ours)
    attach_side_lora(ours, folder)
    layer = ours.model.layers[0].self_attn.q_proj
    assert isinstance(layer, SideLoRA) and isinstance(layer.base, Int8Linear)
    ids = torch.randint(0, 40, (2, 9))
    with torch.no_grad():
        want, got = peft_model(ids).logits, ours(ids).logits
    assert (got - want).abs().max() < 0.05 * want.abs().max()
    # attributions differentiate the input embeddings through the int8 layers and the side pass
    embeds = ours.get_input_embeddings()(ids).detach().requires_grad_(True)
    ours(inputs_embeds=embeds).logits[:, -1, 3].sum().backward()
    assert embeds.grad is not None and embeds.grad.abs().sum() > 0


def test_int8_layers_shared_by_key_while_alive():
    first, second, other = make_tiny_llama(40), make_tiny_llama(40), make_tiny_llama(40, seed=3)
    quantize_int8(first, share_key="base-a")
    quantize_int8(second, share_key="base-a")
    quantize_int8(other, share_key="base-b")
    assert second.model.layers[1].mlp.up_proj is first.model.layers[1].mlp.up_proj
    assert other.model.layers[1].mlp.up_proj is not first.model.layers[1].mlp.up_proj
    unshared = make_tiny_llama(40)
    quantize_int8(unshared)  # no key: its own layers
    assert unshared.model.layers[1].mlp.up_proj is not first.model.layers[1].mlp.up_proj


def test_side_lora_refuses_what_it_cannot_apply_exactly(tmp_path):
    base = make_tiny_llama(40)
    _, folder = _saved_adapter(tmp_path, base)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ValueError, match="use_dora set in adapter_config.json; only a plain LoRA"):
        attach_side_lora(copy.deepcopy(base), folder)
    (folder / "adapter_config.json").write_text(json.dumps({**config, "modules_to_save": ["lm_head"], "bias": "all"}))
    with pytest.raises(ValueError, match="modules_to_save, bias set"):
        attach_side_lora(copy.deepcopy(base), folder)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    smaller = make_tiny_llama(40)
    del smaller.model.layers[1]
    before = repr(smaller)
    with pytest.raises(ValueError, match="updates model.layers.1.* which this base model does not have"):
        attach_side_lora(smaller, folder)
    assert repr(smaller) == before  # nothing wrapped
    with pytest.raises(ValueError, match=r"maps 64 -> 32 features, the layer 128 -> 64 \(a different base model"):
        attach_side_lora(make_tiny_llama(40, hidden_size=64), folder)


@pytest.mark.usefixtures("llara_cache")
def test_predictor_serves_the_int8_pair_on_one_base(toy_setup, tmp_path):
    """At int8 the demo's pair is loaded unmerged by default and holds one set of int8 layers; other precisions
    merge by default, and an explicit choice is kept."""
    import llara.training.train as train_mod
    from llara.serving.inference import Predictor

    from .conftest import toy_train_args

    flags = ("--title-weight", "0", "--next-weight", "1", "--max-steps", "2")
    hybrid, text = tmp_path / "hybrid", tmp_path / "text"
    assert train_mod.main(toy_train_args(toy_setup, hybrid, "--mode", "hybrid", *flags)) == 0
    assert train_mod.main(toy_train_args(toy_setup, text, "--mode", "text", "--text-items", *flags)) == 0
    pair = Predictor.load(str(hybrid), precision="int8", text_checkpoint=str(text))
    assert pair.merged is False
    assert pair.text_model is not None
    ours = {n: m for n, m in pair.model.llm.named_modules() if isinstance(m, Int8Linear)}
    theirs = {n: m for n, m in pair.text_model.llm.named_modules() if isinstance(m, Int8Linear)}
    assert ours and ours.keys() == theirs.keys() and all(ours[n] is theirs[n] for n in ours)
    sample = pair.dataset.test[0]
    answer = pair.predict(list(sample.history), list(pair.dataset.candidates("test", seed=0)[0]), decode="next")
    assert answer.answers["hybrid"].ranked and answer.answers["text"].ranked
    assert Predictor.load(str(hybrid), precision="fp32").merged is True
    assert Predictor.load(str(hybrid), precision="int8", merge=True).merged is True
