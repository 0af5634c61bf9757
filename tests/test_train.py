"""llara.training.train end to end on the tiny toy setup (conftest ``toy_setup``): what moves and what stays frozen, exact
save -> load, bit-for-bit resume, the curriculum schedule as training sees it, and a 2-process CPU launch."""
from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import llara.training.train as train_mod
from llara.checkpoint import read_llara_meta
from llara.model.llm import load_base_model
from llara.model.loader import load_llara
from llara.prompt.batch import collate

from .conftest import toy_train_args, write_toy_dataset

REPO = Path(__file__).resolve().parents[1]
REAL = (train_mod.build_llara, train_mod.PromptStream.prompt, train_mod.save_llara)


def is_trainable_name(name: str) -> bool:
    return "lora_" in name or name.startswith("projector.")


def run_train(args: list[str], monkeypatch, kill_after_step: int | None = None) -> dict:
    """``llara.training.train.main(args)`` in process; returns the built model, its parameters before training and every
    training prompt (with the step it was built for). ``kill_after_step``: die right after that step's checkpoint."""
    seen: dict = {"prompts": []}
    real_build, real_prompt, real_save = REAL  # not the attributes: an earlier call may have patched them

    def build(*a, **kw):
        model = real_build(*a, **kw)
        seen["model"], seen["initial"] = model, {n: p.detach().clone() for n, p in model.named_parameters()}
        return model

    def prompt(self, g, step):
        p = real_prompt(self, g, step)
        seen["prompts"].append((step, p))
        return p

    def save(folder, model, meta, trainer_state=None):
        out = real_save(folder, model, meta, trainer_state=trainer_state)
        if kill_after_step is not None and meta["step"] == kill_after_step:
            raise Killed(f"killed after the checkpoint of step {kill_after_step}")
        return out

    monkeypatch.setattr(train_mod, "build_llara", build)
    monkeypatch.setattr(train_mod.PromptStream, "prompt", prompt)
    monkeypatch.setattr(train_mod, "save_llara", save)
    seen["rc"] = train_mod.main(args)
    return seen


class Killed(BaseException):
    """Stands in for SIGKILL: not an Exception, so nothing in the trainer catches it."""


def trained_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """LoRA adapter + projector tensors of a checkpoint folder, keyed ``adapter/...`` and ``projector/...``."""
    out = {f"adapter/{k}": v for k, v in load_file(folder / "adapter" / "adapter_model.safetensors").items()}
    out.update({f"projector/{k}": v for k, v in load_file(folder / "projector.safetensors").items()})
    return out


# ---- one training run: what moves, what stays -----------------------------------------------------------------


def test_training_moves_lora_and_projector_only(toy_run, toy_setup):
    model, initial = toy_run["model"], toy_run["initial"]
    meta = read_llara_meta(toy_run["output"])
    assert meta["step"] == meta["total_steps"] == 4  # 8 prompts / batch 2
    assert [row["step"] for row in meta["log"]] == [1, 2, 3, 4]
    assert all(math.isfinite(row["loss"]) and row["loss"] > 0 for row in meta["log"])

    params = dict(model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    assert trainable and all(is_trainable_name(n) for n in trainable)
    assert any(n.startswith("projector.") for n in trainable) and any("lora_B" in n for n in trainable)
    for name, p in params.items():
        before = initial[name]
        if is_trainable_name(name):
            if "lora_B" in name:
                assert torch.count_nonzero(before) == 0 and torch.count_nonzero(p) > 0, name  # B starts at zero
            assert not torch.equal(p.detach(), before), f"{name} did not move"
        else:
            assert torch.equal(p.detach(), before), f"frozen weight {name} changed"

    # the embedding matrix (placeholder rows included) is exactly the freshly loaded base model's
    fresh, _ = load_base_model(toy_setup["base_model"], precision="fp32", seed=0)
    trained_emb = model.llm.get_input_embeddings().weight.detach()
    assert torch.equal(trained_emb, fresh.get_input_embeddings().weight.detach())


def test_save_then_load_reproduces_logits(toy_run):
    model = toy_run["model"].eval()
    loaded, meta, ds = load_llara(str(toy_run["output"]))
    assert meta["precision"] == "fp32" and ds.n_items == 40
    sample, cands = ds.test[0], ds.candidates("test", seed=0)[0]
    for hybrid in (True, False):
        prompt = model.builder.build(sample.history, cands, hybrid=hybrid)
        assert loaded.builder.build(sample.history, cands, hybrid=hybrid).input_ids == prompt.input_ids
        batch = collate([prompt], model.pad_id)
        with torch.no_grad():
            want, got = model(batch).logits, loaded(batch).logits
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
        assert [c for c, _ in loaded.rank(prompt)] == [c for c, _ in model.rank(prompt)]
    torch.testing.assert_close(loaded.projector.state_dict(), model.projector.state_dict(), rtol=0, atol=0)
    assert loaded.projector.target_norm == pytest.approx(model.projector.target_norm)


# ---- resume ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dropout", ["0.0", "0.1"], ids=["no-dropout", "lora-dropout"])
def test_resume_after_kill_matches_uninterrupted_run(toy_setup, tmp_path, monkeypatch, dropout):
    """Kill a run right after its step-2 checkpoint, --resume it: the result equals the run that was never killed.

    With LoRA dropout the resumed run must also draw the same dropout masks as the uninterrupted one."""
    flags = ("--max-steps", "4", "--save-every", "2", "--lora-dropout", dropout)
    full = run_train(toy_train_args(toy_setup, tmp_path / "full", *flags), monkeypatch)
    assert full["rc"] == 0

    killed_args = toy_train_args(toy_setup, tmp_path / "killed", *flags)
    with pytest.raises(Killed):
        run_train(killed_args, monkeypatch, kill_after_step=2)
    assert read_llara_meta(tmp_path / "killed")["step"] == 2
    assert (tmp_path / "killed" / "trainer_state.pt").is_file()

    resumed = run_train([*killed_args, "--resume"], monkeypatch)
    assert resumed["rc"] == 0
    assert "model" not in resumed  # rebuilt from the checkpoint, not from scratch
    assert {s for s, _ in resumed["prompts"]} == {2, 3}  # only the missing steps were run
    # the same prompts as the uninterrupted run made at those steps
    assert [p.input_ids for s, p in full["prompts"] if s >= 2] == [p.input_ids for _, p in resumed["prompts"]]

    meta_full, meta_res = read_llara_meta(tmp_path / "full"), read_llara_meta(tmp_path / "killed")
    assert meta_res["step"] == meta_full["step"] == 4
    assert [r["step"] for r in meta_res["log"]] == [1, 2, 3, 4]
    # which steps ran where: one entry per run of the command, with its compute dtype
    assert [r["from_step"] for r in meta_res["runs"]] == [0, 2] and [r["from_step"] for r in meta_full["runs"]] == [0]
    assert all(r["compute_dtype"] in ("bfloat16", "float32") and "cpu" in r for r in meta_res["runs"])
    assert [r["loss"] for r in meta_res["log"]] == pytest.approx([r["loss"] for r in meta_full["log"]], abs=1e-5)
    want, got = trained_tensors(tmp_path / "full"), trained_tensors(tmp_path / "killed")
    assert want.keys() == got.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-6, msg=lambda m, key=key: f"{key}: {m}")


@pytest.mark.parametrize("change, key", [(("--lr", "0.001"), "'lr'"), (("--data-dir", "OTHER"), "dataset")],
                         ids=["lr", "other-dataset"])
def test_resume_with_changed_config_names_the_key(toy_setup, tmp_path, monkeypatch, capsys, change, key):
    """A resumed run must train what the checkpoint trained: another learning rate, or other training data (same
    item count, other rows), is refused with the differing key named."""
    args = toy_train_args(toy_setup, tmp_path / "run", "--max-steps", "4", "--save-every", "2")
    with pytest.raises(Killed):
        run_train(args, monkeypatch, kill_after_step=2)
    before = (tmp_path / "run" / "meta.json").read_bytes()
    other = write_toy_dataset(tmp_path / "other-data", seed=1)  # 40 items too, different samples
    change = tuple(str(other) if c == "OTHER" else c for c in change)
    capsys.readouterr()
    assert run_train([*args, "--resume", *change], monkeypatch)["rc"] == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and key in lines[0], err
    assert "Traceback" not in err
    assert (tmp_path / "run" / "meta.json").read_bytes() == before  # the checkpoint was left alone


def test_checkpoint_trained_with_relative_data_dir_loads_from_elsewhere(toy_setup, tmp_path, monkeypatch):
    """meta.json must locate the dataset independently of the working directory the run was started from."""
    shutil.copytree(toy_setup["data_dir"], tmp_path / "work" / "data")
    monkeypatch.chdir(tmp_path / "work")
    args = toy_train_args(toy_setup, tmp_path / "run", "--max-steps", "1", "--val-samples", "0")
    args[args.index("--data-dir") + 1] = "data"  # relative, as typed on a command line
    assert run_train(args, monkeypatch)["rc"] == 0
    monkeypatch.chdir(tmp_path)
    model, meta, ds = load_llara(str(tmp_path / "run"))
    assert ds.n_items == 40 and ds.fingerprint() == meta["dataset"]["fingerprint"]


# ---- the curriculum as training sees it -----------------------------------------------------------------------


def test_text_mode_never_builds_a_hybrid_prompt(toy_setup, tmp_path, monkeypatch):
    run = run_train(toy_train_args(toy_setup, tmp_path / "text", "--mode", "text", "--val-samples", "0"), monkeypatch)
    assert run["rc"] == 0 and len(run["prompts"]) == 8
    assert not any(p.hybrid or p.slot_items for _, p in run["prompts"])
    assert all(row["p_hybrid"] == 0.0 for row in read_llara_meta(tmp_path / "text")["log"])
    # no hybrid prompt -> no gradient ever reached the projector
    for name, p in run["model"].projector.named_parameters():
        assert torch.equal(p.detach(), run["initial"][f"projector.{name}"]), name


def test_curriculum_goes_from_text_to_hybrid(toy_setup, tmp_path, monkeypatch):
    args = toy_train_args(toy_setup, tmp_path / "cur", "--mode", "curriculum", "--max-train-samples", "16",
                          "--max-steps", "8", "--val-samples", "0")
    run = run_train(args, monkeypatch)
    assert run["rc"] == 0
    p = [row["p_hybrid"] for row in read_llara_meta(tmp_path / "cur")["log"]]
    assert p == pytest.approx([s / 8 for s in range(8)])  # p = step / T, from 0 to ~1
    assert p[0] == 0.0 and p[-1] >= 0.85 and p == sorted(p)
    by_step: dict[int, list[bool]] = {}
    for step, prompt in run["prompts"]:
        by_step.setdefault(step, []).append(prompt.hybrid)
    assert not any(by_step[0])  # p = 0: text only
    assert sum(sum(v) for v in by_step.values()) > 0  # later steps do splice embeddings
    assert sum(by_step[0] + by_step[1] + by_step[2]) <= sum(by_step[5] + by_step[6] + by_step[7])


# ---- data-parallel launch ---------------------------------------------------------------------------------------


def launcher(accelerate: Path, env_and_flags: list[str]) -> tuple[dict, list[str]]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    flags = []
    for tok in env_and_flags:
        if "=" in tok and not tok.startswith("-"):
            key, value = tok.split("=", 1)
            env[key] = value
        else:
            flags.append(tok)
    # a fresh port per launch: back-to-back launches on the default port can collide while it is in TIME_WAIT
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return env, [str(accelerate), "launch", "--main_process_port", str(port), *flags]


@pytest.fixture
def accelerate_bin() -> Path:
    path = Path(sys.executable).parent / "accelerate"
    if not path.is_file():
        pytest.skip("accelerate launcher is not installed")
    return path


@pytest.mark.integration
def test_accelerate_launch_two_cpu_processes(toy_setup, tmp_path, accelerate_bin):
    """Two CPU processes with DDP (gloo): each takes its own batch of 2, one checkpoint is written."""
    out = tmp_path / "ddp"
    env, cmd = launcher(accelerate_bin, ["ACCELERATE_USE_CPU=1", "--multi_gpu", "--num_processes", "2", "--num_machines",
                                         "1", "--mixed_precision", "no", "--dynamo_backend", "no"])
    cmd += ["-m", "llara.train", *toy_train_args(toy_setup, out, "--max-steps", "2", "--mode", "curriculum")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 steps of 4" in proc.stdout, proc.stdout  # batch 2 on each of 2 processes
    meta = read_llara_meta(out)
    assert meta["step"] == meta["total_steps"] == 2
    assert [r["p_hybrid"] for r in meta["log"]] == [0.0, 0.5]  # text-only first step: projector unused under DDP
    assert all(math.isfinite(r["loss"]) for r in meta["log"])
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and (out / "projector.safetensors").is_file()
    loaded, _, _ = load_llara(str(out))  # the checkpoint a 2-process run wrote loads like any other
    assert loaded.projector.d_out == 32


@pytest.mark.integration
def test_documented_accelerate_command_starts_two_processes(tmp_path, accelerate_bin):
    """The ``accelerate launch`` lines in the train / evaluate docstrings must really start 2 processes (a launcher
    that silently runs one process would train with half the effective batch and no data parallelism)."""
    import shlex

    import llara.evaluation.evaluate

    documented = set()
    for doc in (train_mod.__doc__, llara.evaluation.evaluate.__doc__):
        for line in doc.splitlines():
            if "accelerate launch" in line:
                tokens = shlex.split(line.split("#")[0])
                at = tokens.index("accelerate")
                documented.add(tuple(tokens[:at] + tokens[at + 2 : tokens.index("-m")]))
    assert documented
    probe = tmp_path / "probe.py"
    # one write() per process: two processes share the pipe, and a short single write is never interleaved
    probe.write_text("import os, sys\nfrom accelerate import Accelerator\n"
                     "n = Accelerator().num_processes\nos.write(sys.stdout.fileno(), f'processes {n}\\n'.encode())\n")
    for flags in sorted(documented):
        env, cmd = launcher(accelerate_bin, list(flags))
        proc = subprocess.run([*cmd, str(probe)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.split().count("processes") == 2 and "processes 2" in proc.stdout, (flags, proc.stdout)


def test_candidate_head_is_trained_saved_and_evaluated(toy_setup, toy_run, tmp_path, capsys):
    """--head-weight adds the candidate head: it moves, is saved beside the projector and answers --decode head."""
    import json

    import llara.evaluation.evaluate as evaluate_mod

    out = tmp_path / "head"
    assert train_mod.main(toy_train_args(toy_setup, out, "--head-weight", "1.0", "--max-steps", "3")) == 0
    loaded, meta, ds = load_llara(str(out))
    assert "head.safetensors" in meta["files"] and loaded.head is not None
    assert loaded.head.weight.abs().sum() > 0  # initialised at zero, moved by training
    report = tmp_path / "eval.json"
    assert evaluate_mod.main(["--checkpoint", str(out), "--decode", "head", "--prompt", "both", "--seeds", "1",
                              "--limit", "3", "--json", str(report)]) == 0
    metrics = json.loads(report.read_text())["metrics"]
    assert set(metrics) == {"text/head", "hybrid/head"} and metrics["hybrid/head"]["valid_ratio"] == 1.0
    capsys.readouterr()
    assert evaluate_mod.main(["--checkpoint", str(toy_run["output"]), "--decode", "head", "--limit", "1"]) == 2
    assert "needs a checkpoint trained for it (--head-weight > 0)" in capsys.readouterr().err
