"""The GPU suite: the tiny models and the toy run on an accelerator, against the same work on the CPU.

Runs where CUDA is present and is skipped, with the reason, everywhere else:

    python -m pytest -m gpu                               # CUDA
    LLARA_TEST_DEVICE=mps python -m pytest -m gpu         # another device; cpu checks the suite itself

Each test puts a model on the device and checks that it answers what the same model answers on the CPU (fp32
weights, autocast off, so the two differ only by kernel rounding), that its outputs stay on the device, and what
only CUDA has: bf16 autocast in every forward pass and nf4 through bitsandbytes' CUDA kernels.
"""
from __future__ import annotations

import os

import pytest
import torch

from llara import device as dev
from llara.attribution.methods import attribute_items, attribute_tokens
from llara.data import Sample
from llara.evaluation.evaluate import evaluate_samples
from llara.prompt.batch import collate

from .conftest import make_tiny_llama, make_tiny_tokenizer, toy_train_args
from .test_device import CANDIDATES, HISTORY, full_model

SPEC = os.environ.get("LLARA_TEST_DEVICE", "cuda")


def _device() -> tuple[torch.device | None, str]:
    try:
        return dev.resolve_device(SPEC), ""
    except ValueError as err:
        return None, str(err)


DEVICE, WHY = _device()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(DEVICE is None, reason=f"GPU suite: no {SPEC} device here ({WHY})")]
needs_cuda = pytest.mark.skipif(DEVICE is None or DEVICE.type != "cuda",
                                reason=f"CUDA only (this run's device: {DEVICE or 'none'})")


def on_device():
    """The same tiny model on the CPU and on the device (autocast off: compared number for number)."""
    cpu, moved = full_model(), full_model().to(DEVICE)  # built from the same seeds: the same weights
    moved.use_autocast = False
    return cpu, moved


def test_every_decoder_answers_as_on_the_cpu():
    cpu, gpu = on_device()
    assert gpu.device.type == DEVICE.type and gpu.item_table.device.type == DEVICE.type
    prompt = cpu.builder.build(HISTORY, CANDIDATES, hybrid=True)
    text = cpu.builder.build(HISTORY, CANDIDATES, hybrid=False)
    assert gpu.generate([prompt, text], max_new_tokens=4) == cpu.generate([prompt, text], max_new_tokens=4)
    assert gpu.constrained(prompt) == cpu.constrained(prompt)
    for decode in ("rank", "rank_head", "rank_items"):
        a, b = getattr(cpu, decode)(prompt), getattr(gpu, decode)(prompt)
        assert [i for i, _ in a] == [i for i, _ in b], decode
        assert max(abs(x - y) for (_, x), (_, y) in zip(a, b)) < 1e-3, decode
    scores = gpu.item_scores([prompt], residual=True)
    assert scores.device.type == DEVICE.type
    assert torch.allclose(scores.cpu(), cpu.item_scores([prompt], residual=True), atol=1e-3)
    assert torch.allclose(gpu.recommender_scores([HISTORY]).cpu(), cpu.recommender_scores([HISTORY]), atol=1e-4)
    samples = [Sample(HISTORY, 5), Sample((9, 10, 11), 1)]
    for decode in ("next", "residual", "head"):
        mine = evaluate_samples(gpu, samples, [CANDIDATES] * 2, True, decode)
        theirs = evaluate_samples(cpu, samples, [CANDIDATES] * 2, True, decode)
        assert [r["choice"] for r in mine] == [r["choice"] for r in theirs], decode


def test_training_step_on_the_device_matches_the_cpu():
    cpu, gpu = on_device()
    prompts = [cpu.builder.build(HISTORY, CANDIDATES, hybrid=h, target=5) for h in (True, False)]
    losses = []
    for model in (cpu, gpu):
        model.train()
        torch.manual_seed(0)
        out = model(collate(prompts, model.pad_id, with_targets=True, padding_side="right", device=model.device))
        out.loss.backward()
        losses.append((float(out.loss), model.projector.net[0].weight.grad.detach().cpu()))
    # dropout is off in the tiny model's LLM; the recommender is frozen in eval mode: the same loss and gradients
    assert abs(losses[0][0] - losses[1][0]) < 1e-4
    assert torch.allclose(losses[0][1], losses[1][1], atol=1e-4)


def test_attributions_on_the_device_match_the_cpu():
    cpu, gpu = on_device()
    prompt = cpu.builder.build(HISTORY, CANDIDATES, hybrid=True)
    for fn in (lambda m: attribute_items(m, prompt, target=5), lambda m: attribute_tokens(m, prompt, target=5, n_steps=4)):
        a, b = fn(cpu), fn(gpu)
        assert [i.item for i in a.items] == [i.item for i in b.items]
        for x, y in zip(a.items, b.items):
            assert abs(x.total - y.total) < 1e-3


@needs_cuda
def test_cuda_forward_passes_run_under_bf16_autocast():
    if not dev.autocast_supported(DEVICE):
        pytest.skip("this GPU has no bf16")
    model = full_model().to(DEVICE)
    seen = []
    model.llm.register_forward_pre_hook(lambda *_: seen.append(torch.is_autocast_enabled("cuda")))
    prompt = model.builder.build(HISTORY, CANDIDATES, hybrid=True)
    model.rank(prompt)
    model.generate([prompt], max_new_tokens=2)
    model.rank_items(prompt)
    assert seen and all(seen)
    seen.clear()
    attribute_items(model, prompt, target=5)  # attributions compute in float32 on purpose (llara.attribution.methods)
    assert seen and not any(seen)


@needs_cuda
def test_nf4_goes_through_bitsandbytes_on_cuda(tmp_path):
    import bitsandbytes as bnb

    from llara.model.llm import load_base_model

    tokenizer = make_tiny_tokenizer()
    make_tiny_llama(len(tokenizer), hidden_size=64).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    llm, tok = load_base_model(str(tmp_path), precision="nf4", device=DEVICE)
    layers = [m for m in llm.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(m.weight.device.type == "cuda" for m in layers)
    ids = torch.tensor([tok("this user has watched heat").input_ids], device=DEVICE)
    assert torch.isfinite(llm(input_ids=ids).logits.float()).all()


def test_train_evaluate_and_serve_the_toy_run_on_the_device(toy_setup, tmp_path, capsys):
    import llara.evaluation.evaluate as evaluate
    import llara.training.train as train
    from llara.serving.inference import Predictor

    out = tmp_path / "run"
    assert train.main(toy_train_args(toy_setup, out, "--max-steps", "2", "--device", SPEC)) == 0
    assert evaluate.main(["--checkpoint", str(out), "--device", SPEC, "--limit", "3", "--seeds", "1",
                          "--swap-seed", "-1", "--decode", "rank"]) == 0
    assert "HR@1" in capsys.readouterr().out
    predictor = Predictor.load(str(out), precision="fp32", merge=False, device=DEVICE)
    assert predictor.model.device.type == DEVICE.type
    sample = predictor.dataset.test[0]
    result = predictor.predict(list(sample.history), predictor.draw_candidates(list(sample.history), 0), "rank")
    assert {"text", "hybrid", "recommender"} <= set(result.answers)
