"""``--device`` and the device discipline of the library (llara/device.py), on the CPU.

The central check: every tensor that llara code creates in a forward pass, a decoder, recommender scoring or an
attribution must be created on the model's device. On a CPU-only machine a tensor created without ``device=``
lands on the right device by accident, so the check cannot look at where tensors end up; it looks at how they are
made. :class:`FactoryCheck` intercepts every tensor factory call (``torch.tensor``, ``zeros``, ``arange``, ...,
``from_numpy``) whose caller is a file of the ``llara`` package and records those that neither pass ``device=`` nor
copy an existing tensor (which keeps that tensor's device). On a GPU such a call is exactly the bug: a CPU tensor
meeting CUDA weights. ``test_the_check_catches_device_less_factories`` proves it fails on one.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import io
import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

import llara
from llara import device as dev
from llara.attribution.methods import Ablation, ablation_log_likelihoods, attribute_items, attribute_tokens, neutral_slot_vector
from llara.checkpoint import read_llara_meta, save_llara
from llara.data import Sample
from llara.evaluation.evaluate import evaluate_samples
from llara.evaluation.probes import recommender_scorer
from llara.model.build import attach_lora
from llara.model.llara_model import LLaRA
from llara.prompt.batch import collate
from llara.recommenders.trainer import candidate_scores

from .conftest import load_app_module, toy_train_args
from .test_next_item import META, tiny_llara

LLARA_DIR = Path(llara.__file__).resolve().parent
TORCH_DIR = Path(torch.__file__).resolve().parent
FACTORIES = {torch.tensor, torch.as_tensor, torch.zeros, torch.ones, torch.full, torch.empty, torch.arange,
             torch.linspace, torch.eye, torch.rand, torch.randn, torch.randint, torch.randperm, torch.scalar_tensor}


@functools.cache
def _inside(filename: str, folder: Path) -> bool:
    return Path(filename).resolve().is_relative_to(folder)


class FactoryCheck(TorchFunctionMode):
    """Records tensor factory calls made from ``root`` (the llara package) without ``device=``.

    A call made with a tensor as its data (``torch.tensor(t)``, ``torch.as_tensor(t)``) copies that tensor and
    keeps its device, so it is not recorded; ``*_like`` and ``Tensor.new_*`` are not factories here for the same
    reason. ``torch.from_numpy`` (always the CPU, and not seen by torch-function modes) is wrapped while the check
    is active."""

    def __init__(self, root: Path = LLARA_DIR) -> None:
        super().__init__()
        self.root, self.violations, self.calls = root, [], 0
        self._stack = contextlib.ExitStack()

    def _caller(self) -> tuple[str, int] | None:
        """The first frame outside torch: the code that asked for the tensor (None: not llara's, or a module being
        constructed: its parameters and buffers move with ``.to``). Frames 0-2 are this method, ``_record`` and
        the interception itself."""
        frame, caller = sys._getframe(3), None
        while frame is not None:
            if frame.f_code.co_name == "__init__" and isinstance(frame.f_locals.get("self"), nn.Module):
                return None
            if caller is None and not _inside(frame.f_code.co_filename, TORCH_DIR):
                caller = frame
            frame = frame.f_back
        if caller is None or not _inside(caller.f_code.co_filename, self.root):
            return None
        return caller.f_code.co_filename, caller.f_lineno

    def _record(self, name: str) -> None:
        where = self._caller()
        if where is not None:
            self.violations.append(f"{Path(where[0]).relative_to(self.root.parent)}:{where[1]} torch.{name} without device=")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES:
            self.calls += 1
            copies = bool(args) and isinstance(args[0], torch.Tensor)
            if kwargs.get("device") is None and not copies:
                self._record(func.__name__)
        return func(*args, **kwargs)

    def __enter__(self):
        real = torch.from_numpy

        def from_numpy(array):
            self._record("from_numpy")
            return real(array)

        self._stack.enter_context(pytest.MonkeyPatch.context()).setattr(torch, "from_numpy", from_numpy)
        return super().__enter__()

    def __exit__(self, *exc):
        self._stack.close()
        return super().__exit__(*exc)


def full_model() -> LLaRA:
    """A tiny LLaRA with every optional part: user token, next-item head with residual scoring, the recommender and
    a candidate head, so every decoder has something to run."""
    model = tiny_llara()
    torch.manual_seed(5)
    model.head = nn.Linear(model.llm.config.hidden_size, 1)
    with torch.no_grad():
        model.next_head.query.weight.normal_()
        model.next_head.gate.fill_(0.5)
    return model.eval()


HISTORY, CANDIDATES = (2, 3, 4), (0, 1, 5, 6, 7, 8)


def run_every_path(model: LLaRA) -> None:
    """Forward passes (training and inference), every decoder, recommender scoring and every attribution."""
    rng = random.Random(0)
    hybrid = model.builder.build(HISTORY, CANDIDATES, hybrid=True, target=5, rng=rng)
    text = model.builder.build(HISTORY, CANDIDATES, hybrid=False, target=5, rng=rng)
    model.train()
    out = model(collate([hybrid, text], model.pad_id, with_targets=True, padding_side="right", device=model.device))
    out.loss.backward()
    model.loss([hybrid, text]).backward()
    model.zero_grad(set_to_none=True)
    model.eval()
    model.generate([hybrid, text], max_new_tokens=3)
    model.constrained(hybrid)
    model.rank(hybrid)
    model.rank_uncached(text)
    model.rank_head(hybrid)
    model.rank_items(hybrid, residual=True)
    model.all_item_scores([hybrid, text])
    model.recommender_scores([HISTORY, (9, 10)])
    with model.blank_slots(neutral_slot_vector(model)):
        model.rank_items(hybrid)
    for decode in ("generate", "constrained", "rank", "head", "next", "residual"):
        evaluate_samples(model, [Sample(HISTORY, 5), Sample((9, 10, 11), 1)], [CANDIDATES, CANDIDATES], True, decode)
    recommender_scorer(model.recommender)([HISTORY], [CANDIDATES])
    candidate_scores(model.recommender, [Sample(HISTORY, 5)], [CANDIDATES])
    for prompt in (hybrid, text):
        attribute_items(model, prompt, target=5)
        attribute_tokens(model, prompt, target=5, method="ig", n_steps=2)
        attribute_tokens(model, prompt, method="grad_x_input")
    neutral_slot_vector(model, "placeholder")
    slot = hybrid.slot_positions[0]
    ablation_log_likelihoods(model, hybrid, 5, [Ablation(hide=(2, 3)), Ablation(neutral_slots=(slot,))])


# ---- the check itself ---------------------------------------------------------------------------------------------

def test_forward_decoders_scoring_and_attributions_create_tensors_on_the_models_device():
    model = full_model()
    with FactoryCheck() as check:
        run_every_path(model)
    assert check.calls > 50, "the check saw almost no tensor factory calls: is it intercepting at all?"
    assert check.violations == [], "tensors created without the model's device:\n" + "\n".join(sorted(set(check.violations)))


def test_training_steps_and_the_served_predictor_create_tensors_on_the_models_device(toy_setup, tmp_path):
    """The training loop (its batches, every loss, the periodic validation, checkpointing) and the demo's predictor
    (every decode, the ablations, the recommender panel, the inspector, attributions), checked the same way."""
    import llara.training.train as train
    from llara.serving.inference import Predictor

    out = tmp_path / "run"
    with FactoryCheck() as check:
        for extra in (["--mode", "curriculum", "--head-weight", "1", "--eval-every", "1", "--save-every", "1"],
                      ["--next-weight", "1", "--user-token", "--residual", "--distill-weight", "0.5", "--title-weight", "0",
                       "--output", str(tmp_path / "next")]):
            assert train.main(toy_train_args(toy_setup, out, "--max-steps", "2", "--val-samples", "2", *extra)) == 0
    assert check.violations == [], "\n".join(sorted(set(check.violations)))
    for folder in (out, tmp_path / "next"):
        predictor = Predictor.load(str(folder), precision="fp32", merge=False)
        sample = predictor.dataset.test[0]
        history = list(sample.history)
        candidates = predictor.draw_candidates(history, 0)
        with FactoryCheck() as check:
            for decode in predictor.decodes:
                predictor.predict(history, candidates, decode)
            for ablation in ("no-embeddings", "no-titles", "shuffle"):
                predictor.predict(history, candidates, predictor.decodes[0], ablation)
            prompts = predictor.prompts(history, candidates)
            predictor.slots(prompts["hybrid"])
            for method in ("grad_x_input", "ablation"):
                predictor.attribute(prompts["hybrid"], method)
        assert check.violations == [], "\n".join(sorted(set(check.violations)))


def _compiled_in_llara(source: str, name: str, filename: str = "model/llara_model.py"):
    """A function whose code claims to live in a llara source file (as an edit there would)."""
    namespace = {"torch": torch, "np": np}
    exec(compile(source, str(LLARA_DIR / filename), "exec"), namespace)  # noqa: S102 - test-only, fixed source
    return namespace[name]


# the recommender batch as llara/model/llara_model.py built it before batches followed the model's device
OLD_PADDED = '''
def _padded(self, histories):
    rec = self.recommender
    seqs = torch.full((len(histories), rec.max_len), rec.pad_id, dtype=torch.long)
    lens = torch.zeros(len(histories), dtype=torch.long)
    for b, h in enumerate(histories):
        h = list(h)[-rec.max_len:]
        seqs[b, : len(h)] = torch.tensor(h)
        lens[b] = len(h)
    return seqs, lens
'''


def test_the_check_catches_device_less_factories(monkeypatch):
    model = full_model()
    monkeypatch.setattr(LLaRA, "_padded", _compiled_in_llara(OLD_PADDED, "_padded"))
    with FactoryCheck() as check:
        model.recommender_scores([HISTORY])  # a real code path, now with the old device-less batch
    assert {v.split(" ", 1)[1] for v in check.violations} >= {"torch.full without device=", "torch.zeros without device=",
                                                              "torch.tensor without device="}
    assert all(v.startswith("llara/model/llara_model.py:") for v in check.violations)
    leak = _compiled_in_llara("def leak(a):\n    return torch.from_numpy(a)\n", "leak", "evaluation/probes.py")
    with FactoryCheck() as check:
        leak(np.zeros(2))
    assert check.violations == ["llara/evaluation/probes.py:2 torch.from_numpy without device="]


def test_the_check_lets_device_aware_calls_through():
    ok = _compiled_in_llara("def ok(x):\n    return (torch.zeros(2, device=x.device), torch.ones_like(x), "
                            "torch.as_tensor(x), torch.tensor(x), x.new_zeros(3))\n", "ok")
    with FactoryCheck() as check:
        ok(torch.ones(2))
        torch.zeros(3)  # this test file is not llara code
    assert check.violations == [] and check.calls >= 4


# ---- resolving --device -------------------------------------------------------------------------------------------

def test_auto_means_cuda_when_present_else_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dev.resolve_device("auto") == dev.resolve_device(None) == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert dev.resolve_device("auto") == torch.device("cpu")  # MPS only when named: nf4 has no MPS backend
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dev.resolve_device("auto") == torch.device("cuda")
    assert dev.resolve_device(torch.device("cpu")) == torch.device("cpu") == dev.resolve_device(" CPU ")


@pytest.mark.parametrize("spec, message", [
    ("tpu", "unknown device 'tpu'; choose one of auto, cpu, cuda, mps"),
    ("cuda:x", "unknown device 'cuda:x'"),
    ("mps:1", "unknown device 'mps:1'"),
    ("cuda", "CUDA is not available"),
    ("mps", "MPS backend is not available"),
])
def test_devices_that_are_not_here_fail_with_the_reason(monkeypatch, spec, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match=message):
        dev.resolve_device(spec)


def test_a_gpu_index_past_the_last_gpu_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert dev.resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ValueError, match="has 2 CUDA device"):
        dev.resolve_device("cuda:2")


def test_nf4_on_mps_says_what_to_use_instead(monkeypatch, tiny_llama_dir):
    from llara.model.llm import load_base_model

    with pytest.raises(ValueError, match="nf4 .* not supported on Apple's MPS: use --precision bf16 or fp32"):
        dev.check_precision("nf4", torch.device("mps"))
    dev.check_precision("bf16", torch.device("mps"))
    dev.check_precision("nf4", torch.device("cuda"))
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    with pytest.raises(ValueError, match="not supported on Apple's MPS"):  # before any weight is read
        load_base_model(str(tiny_llama_dir), precision="nf4", device="mps")


def test_autocast_only_on_cuda_and_cpu_numbers_unchanged():
    assert not dev.autocast_supported(torch.device("cpu")) and not dev.autocast_supported(torch.device("mps"))
    with dev.autocast(torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")
    model = full_model()
    prompt = model.builder.build(HISTORY, CANDIDATES, hybrid=True)
    seen = []
    model.llm.register_forward_pre_hook(lambda *_: seen.append(torch.is_autocast_enabled("cpu")))
    with_flag = model.rank(prompt)
    model.use_autocast = False
    assert model.rank(prompt) == with_flag and seen and not any(seen)


def test_everything_follows_the_llms_device():
    """The loader puts the LLM on the device; every other part must follow it when the model is assembled. Shown
    with torch's "meta" device (shapes without data) standing in for a GPU."""
    src = full_model()
    assert src.device == torch.device("cpu")
    model = LLaRA(src.llm.to("meta"), src.builder, src.item_table, src.projector, head=src.head,
                  recommender=src.recommender, user_projector=src.user_projector, next_head=src.next_head)
    assert model.device.type == "meta"
    off = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type != "meta"]
    assert off == [] and model.item_table.device.type == "meta"
    prompt = model.builder.build(HISTORY, CANDIDATES, hybrid=True, target=5)
    batch = collate([prompt], model.pad_id, with_targets=True, device=model.device)
    assert {t.device.type for t in vars(batch).values() if isinstance(t, torch.Tensor)} == {"meta"}


# ---- the --device flag of every command -----------------------------------------------------------------------------

COMMANDS = ["llara.train", "llara.evaluate", "llara.inference", "llara.explain", "llara.bench", "llara.train_rec",
            "llara.search", "llara.results"]


def _help(module: str, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(module).main(["--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("module", COMMANDS)
def test_every_command_documents_the_same_device_flag(module, capsys):
    text = " ".join(_help(module, capsys).split())
    assert "--device {auto,cpu,cuda,mps}" in text
    assert " ".join(f"{dev.DEVICE_HELP} (default: auto)".split()) in text


def test_the_app_has_the_device_flag_too():
    parser = load_app_module().build_parser()
    text = " ".join(parser.format_help().split())
    assert " ".join(f"{dev.DEVICE_HELP} (default: auto)".split()) in text
    assert parser.parse_args(["--device", "CPU"]).device == "cpu"


def test_a_bad_device_name_is_refused_by_the_parser(capsys):
    parser = argparse.ArgumentParser(prog="x")
    dev.add_device_arg(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--device", "gpu"])
    assert "unknown device 'gpu'; choose one of auto, cpu, cuda, mps (or cuda:N)" in capsys.readouterr().err
    assert parser.parse_args(["--device", "cuda:1"]).device == "cuda:1"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error a machine without CUDA gives")
def test_a_command_asked_for_cuda_without_cuda_says_why(toy_setup, tmp_path, capsys):
    import llara.evaluation.evaluate as evaluate
    import llara.training.train as train

    assert train.main(toy_train_args(toy_setup, tmp_path / "run", "--device", "cuda")) == 2
    err = capsys.readouterr().err
    assert "--device cuda: CUDA is not available" in err and "use --device cpu or auto" in err
    assert not (tmp_path / "run").exists()
    assert evaluate.main(["--checkpoint", str(tmp_path / "none"), "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_an_explicit_device_accelerate_does_not_give_is_an_error(monkeypatch):
    """ACCELERATE_USE_CPU=1 (or a config) keeps accelerate's processes on the CPU: a device asked for by name that
    accelerate does not give fails instead of training on the CPU unnoticed; ``auto`` takes what accelerate gives."""
    import accelerate

    class OnTheCpu:  # what accelerate gives under ACCELERATE_USE_CPU=1, without touching its per-process state
        def __init__(self, cpu: bool = False, **kwargs) -> None:
            self.device = torch.device("cpu")

    monkeypatch.setattr(accelerate, "Accelerator", OnTheCpu)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    with pytest.raises(ValueError, match="--device mps was asked for, but accelerate runs this process on cpu"):
        dev.accelerator_for("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dev.accelerator_for("auto").device == torch.device("cpu")


def test_the_benchmark_names_its_device_and_gpu_memory(monkeypatch, capsys):
    from llara.measurement import bench, bench_table

    timing = {"p50": 0.1, "p95": 0.2, "n": 3}
    demo = {"precision": "nf4", "cold_start_s": 3.0, "rss_after_load_mb": 900, "peak_rss_mb": 1000,
            "latency": {"hybrid rank": timing, "hybrid rank, 20 independent passes": timing}}
    on_gpu = {**demo, "gpu_mb_after_load": 300.0, "gpu_peak_mb": 512.0}
    table = bench_table.format_table({"machine": {"device": "cuda:0 (NVIDIA H200, 140 GiB)"}, "demo": [on_gpu]})
    assert "cuda:0 (NVIDIA H200, 140 GiB)" in table.splitlines()[1]  # after the line naming the CPU
    assert "| GPU memory in tensors after load / peak (MB) | 300 / 512 |" in table
    assert "GPU memory" not in bench_table.format_table({"machine": {"device": "cpu"}, "demo": [demo]})
    assert bench._gpu_mb(torch.device("cpu")) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        bench.main(["--device", "cuda", "--parts", "train"])
    assert "--device cuda: CUDA is not available" in capsys.readouterr().err


# ---- several GPUs: the accelerate configurations -----------------------------------------------------------------

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"


def test_the_accelerate_configs_are_what_accelerate_reads():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    from .conftest import make_tiny_llama

    ddp, fsdp = (load_config_from_file(str(CONFIGS / name)) for name in ("ddp.yaml", "fsdp.yaml"))
    assert ddp.distributed_type == DistributedType.MULTI_GPU and fsdp.distributed_type == DistributedType.FSDP
    assert ddp.mixed_precision == fsdp.mixed_precision == "bf16"
    assert ddp.num_processes == fsdp.num_processes == -1  # the number of GPUs is given on the command line
    options = fsdp.fsdp_config
    assert options["fsdp_version"] == 2 and options["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    # the wrapped class is the decoder layer of Llama-2 (and of SmolLM2, a Llama): train.py gathers from it
    assert options["fsdp_transformer_layer_cls_to_wrap"] == type(make_tiny_llama(30).model.layers[0]).__name__


@pytest.mark.integration
def test_the_ddp_config_starts_one_process_per_device(tmp_path):
    """On this CPU machine (ACCELERATE_USE_CPU=1) the documented DDP launch starts the processes it is asked for."""
    import os
    import subprocess

    from .conftest import free_port

    accelerate = Path(sys.executable).parent / "accelerate"
    if not accelerate.is_file():
        pytest.skip("accelerate launcher is not installed")
    probe = tmp_path / "probe.py"
    probe.write_text("import os, sys\nfrom accelerate import Accelerator\na = Accelerator()\n"
                     "os.write(sys.stdout.fileno(), f'processes {a.num_processes} {a.distributed_type}\\n'.encode())\n")
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(accelerate), "launch", "--main_process_port", str(free_port()), "--config_file",
                           str(CONFIGS / "ddp.yaml"), "--num_processes", "2", str(probe)],
                          env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n").count("processes 2 DistributedType.MULTI_CPU") == 2, proc.stdout


# ---- sharded runs: a checkpoint written from a gathered state dict ------------------------------------------------

def test_a_gathered_state_dict_writes_the_same_checkpoint(tmp_path):
    """FSDP keeps only shards in the modules; train.py then saves from ``accelerator.get_state_dict``. The files must
    be byte for byte what the unsharded model writes (here the full state dict stands in for the gathered one)."""
    model = full_model()
    model.llm = attach_lora(model.llm, r=2, alpha=4, targets="q_proj,v_proj")
    with torch.no_grad():
        for name, p in model.llm.named_parameters():
            if "lora_B" in name:
                p.normal_()  # LoRA B starts at zero: make the adapter worth comparing
    plain = read_llara_meta(save_llara(tmp_path / "plain", model, META))["files"]
    gathered = read_llara_meta(save_llara(tmp_path / "gathered", model, META, state_dict=model.state_dict()))["files"]
    assert plain == gathered
    assert {"adapter/adapter_model.safetensors", "projector.safetensors", "token_rows.safetensors", "head.safetensors",
            "user_projector.safetensors", "next_head.safetensors"} <= set(plain)


def test_gradient_checkpointing_trains_the_same_weights(toy_setup, tmp_path):
    """Recomputing activations changes memory, not the result: two toy steps with and without it."""
    import llara.training.train as train
    from llara.checkpoint import load_tensors

    runs = {}
    for name, extra in (("plain", []), ("recompute", ["--gradient-checkpointing"])):
        out = tmp_path / name
        assert train.main(toy_train_args(toy_setup, out, "--max-steps", "2", "--val-samples", "0", *extra)) == 0
        runs[name] = {f: load_tensors(out / f) for f in ("projector.safetensors", "adapter/adapter_model.safetensors")}
    assert read_llara_meta(tmp_path / "recompute")["config"]["gradient_checkpointing"] is True
    for f, tensors in runs["plain"].items():
        moved = [k for k in tensors if not torch.allclose(tensors[k], runs["recompute"][f][k], atol=1e-6)]
        assert moved == [], f"{f}: {moved[:3]}"


def test_sharded_checkpoints_refuse_to_resume(toy_setup, tmp_path, capsys):
    """A sharded run keeps no optimizer state (it stays split across processes): resuming must say so."""
    import llara.training.train as train

    out = tmp_path / "run"
    assert train.main(toy_train_args(toy_setup, out, "--max-steps", "1", "--val-samples", "0")) == 0
    state = torch.load(out / "trainer_state.pt", weights_only=True)
    buffer = io.BytesIO()
    torch.save({**state, "optimizer": None}, buffer)  # what a sharded run writes
    (out / "trainer_state.pt").write_bytes(buffer.getvalue())
    assert train.main(toy_train_args(toy_setup, out, "--resume", "--max-steps", "1", "--val-samples", "0")) == 2
    assert "written by a sharded (FSDP) run, which keeps no optimizer state" in capsys.readouterr().err


# ---- compute dtype: the dtype the LLM's matmuls run in follows the CPU ------------------------------------------

@pytest.mark.parametrize("flags,env,native", [
    ({"avx2"}, {}, False),
    ({"avx2", "avx512f", "avx512_bf16"}, {}, True),
    ({"avx2", "amx_bf16"}, {}, True),
    ({"avx512_bf16"}, {"ATEN_CPU_CAPABILITY": "avx2"}, False),  # the slow path reproduced on a bf16 CPU
    ({"avx512_bf16"}, {"ONEDNN_MAX_CPU_ISA": "AVX2"}, False),
    ({"avx512_bf16"}, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, True),
])
def test_native_bf16_reads_the_cpu_flags_and_the_isa_limits(monkeypatch, flags, env, native):
    monkeypatch.setattr(dev, "_cpu_flags", lambda: frozenset(flags))
    for key in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert dev.native_bf16("cpu") is native
    assert dev.cpu_info()["native_bf16"] is native


@pytest.mark.parametrize("native", [True, False])
def test_auto_compute_dtype_is_float32_only_where_bf16_is_emulated(monkeypatch, native):
    monkeypatch.setattr(dev, "native_bf16", lambda device="cpu": native)
    want = torch.bfloat16 if native else torch.float32
    for precision in ("bf16", "nf4"):
        assert dev.compute_dtype(precision, "cpu", "auto") == want
        assert dev.compute_dtype(precision, "cpu", "bf16") == torch.bfloat16
        assert dev.compute_dtype(precision, "cpu", "fp32") == torch.float32
    assert dev.compute_dtype("fp32", "cpu", "bf16") == torch.float32  # fp32 weights are never rounded down
    monkeypatch.setenv(dev.COMPUTE_ENV, "auto")
    assert dev.compute_dtype("nf4", "cpu") == want
    monkeypatch.setenv(dev.COMPUTE_ENV, "fp16")
    with pytest.raises(ValueError, match="unknown compute dtype 'fp16'.*LLARA_COMPUTE_DTYPE"):
        dev.compute_dtype("nf4", "cpu")


def test_the_compute_dtype_flag_sets_it_for_the_process_and_refuses_typos(monkeypatch, capsys):
    import argparse

    monkeypatch.setenv(dev.COMPUTE_ENV, "bf16")
    parser = argparse.ArgumentParser()
    dev.add_device_arg(parser)
    assert parser.parse_args([]).compute_dtype == "bf16"  # the environment is the default
    assert parser.parse_args(["--compute-dtype", "FP32"]).compute_dtype == "fp32"
    assert os.environ[dev.COMPUTE_ENV] == "fp32"  # what loads next (and any child process) computes in float32
    with pytest.raises(SystemExit):
        parser.parse_args(["--compute-dtype", "int8"])
    assert "unknown compute dtype 'int8'" in capsys.readouterr().err


@pytest.mark.parametrize("spec,dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_bf16_weights_load_in_the_compute_dtype(monkeypatch, tiny_llama_dir, spec, dtype):
    from llara.model.llm import load_base_model

    monkeypatch.setenv(dev.COMPUTE_ENV, spec)
    model, _ = load_base_model(str(tiny_llama_dir), precision="bf16")
    assert {p.dtype for p in model.parameters()} == {dtype}


def test_nf4_weights_stay_4bit_and_compute_in_float32_where_asked(monkeypatch, tmp_path):
    import bitsandbytes as bnb

    from llara.model.llm import load_base_model

    from .conftest import make_tiny_llama, make_tiny_tokenizer

    tokenizer = make_tiny_tokenizer()
    make_tiny_llama(len(tokenizer), hidden_size=64).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    monkeypatch.setenv(dev.COMPUTE_ENV, "fp32")
    model, tokenizer = load_base_model(str(tmp_path), precision="nf4")
    q = model.model.layers[0].self_attn.q_proj
    assert isinstance(q, bnb.nn.Linear4bit) and q.weight.dtype == torch.uint8 and q.compute_dtype == torch.float32
    assert model.get_input_embeddings().weight.dtype == torch.float32
    batch = tokenizer(["toy story <HistoryEmb>", "heat"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


@pytest.mark.parametrize("native,device,want", [(True, "cpu", "nf4"), (False, "cpu", "int8"), (False, "cuda", "nf4")])
def test_auto_serves_int8_only_on_a_cpu_without_native_bf16(monkeypatch, native, device, want):
    monkeypatch.setattr(dev, "native_bf16", lambda device="cpu": native)
    assert dev.serving_precision("auto", device) == want
    for spec in ("nf4", "int8", "bf16", "fp32"):  # asked for by name: as asked
        assert dev.serving_precision(spec, device) == spec


def test_the_predictor_says_what_auto_resolved_to(monkeypatch, toy_run, tmp_path):
    from llara.serving.inference import Predictor

    monkeypatch.setenv("LLARA_CACHE", str(tmp_path))
    monkeypatch.setattr(dev, "native_bf16", lambda device="cpu": False)
    predictor = Predictor.load(str(toy_run["output"]), precision="auto")
    assert predictor.precision == "int8"
    sample, cands = predictor.dataset.test[0], list(predictor.dataset.candidates("test", seed=0)[0])
    assert predictor.predict(list(sample.history), cands, "rank").answers["hybrid"].item in cands
