"""Speed and memory on this machine, each figure beside its target: the demo path, training, and llama.cpp.

    python -m llara.bench                                   # everything (about 10 minutes on 2 cores)
    python -m llara.bench --parts demo --precisions nf4     # just the demo path at 4-bit
    python -m llara.bench --json docs/bench.json            # also keep the raw figures
    python -m llara.bench --device cuda --parts demo,train,recipes --json docs/bench_cuda.json   # on a GPU
    python -m llara.bench --parts demo --precisions nf4 --cpu-paths native,avx2 --compute-dtypes auto,bf16

Parts: ``demo`` loads the committed checkpoint the way the app does (fresh process per precision, so cold start
and resident memory are clean) and times every request kind; ``train`` times LoRA training steps of a fresh model
(bf16 / nf4, gradient checkpointing off / on); ``recipes`` compares the training recipes (full prompt with title
loss vs prompts cut after the user slot with the next-item losses) in fresh processes: tokens per prompt,
samples/s, and resident memory after each phase; ``llamacpp`` runs the same SmolLM2 GGUF with llama-cpp-python when
it is installed (``pip install llama-cpp-python``, a C++ build: benchmark-only, never a runtime dependency) and
says so when it is not; ``switch`` (not in the default) loads the demo's datasets in turn through the app's registry
and records resident memory after each load (``llara.measurement.switching``). Every latency is the median (p50) and p95 of ``--repeats`` timed runs after one warm-up;
comparisons are ratios taken in the same run, because timings on shared machines drift.

CPU paths: every demo figure is measured in a fresh process per CPU path (``--cpu-paths``: ``native``, and ``avx2``,
which holds torch and oneDNN to AVX2 as on a CPU without native bf16; see ``llara.cpu_paths``) and compute dtype
(``--compute-dtypes``: ``auto`` picks float32 where bf16 is emulated), and records the CPU it ran on
(``llara.device.cpu_info``) with a bf16-vs-float32 matmul probe that shows whether the path's limit took effect. The
in-process parts (``train``, ``load``) run on the path the command was started on: prefix the command with
``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` to measure them on the AVX2 path.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import write_json
from ..constants import DEMO_CHECKPOINT, DEMO_TEXT_CHECKPOINT, PLACEHOLDER_TOKEN, PRECISIONS, RECOMMENDER_DIR, REPO_ROOT
from ..device import COMPUTE_ENV, add_device_arg, cpu_info, device_name, resolve_device, synchronize
from ..serving.demo_datasets import DEMO_DATASETS
from .bench_table import format_table
from .concurrency import app_start, load_test, mixed_load, rss_mb
from .cpu_paths import CPU_PATHS, matmul_probe, path_env, redundant_path
from .switching import demo_switch

_GPU = resolve_device("auto")  # timers wait for this device's queued kernels (a no-op on the CPU)


def _gpu_mb(device: torch.device, peak: bool = False) -> float | None:
    """Memory the CUDA caching allocator holds in tensors now (or at its peak), MB; None off CUDA."""
    if device.type != "cuda":
        return None
    return (torch.cuda.max_memory_allocated(device) if peak else torch.cuda.memory_allocated(device)) / 2**20


def _timed(fn, repeats: int) -> dict:
    fn()  # warm-up: first calls pay for allocations and kernel selection
    synchronize(_GPU)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(_GPU)  # GPU kernels run asynchronously: the clock stops after the queued work
        times.append(time.perf_counter() - start)
    return {"p50": statistics.median(times), "p95": float(np.percentile(times, 95)), "n": repeats}


# ---- the demo path (run in a child process per precision) ------------------------------------------------------

LORA_FORMS: dict[bool | None, str] = {None: "auto", True: "merged", False: "unmerged"}


def bench_demo(checkpoint: str, precision: str, repeats: int, merge: bool | None = None, device: str = "cpu") -> dict:
    from ..serving.inference import Predictor

    rss0 = rss_mb()
    # as the app serves it: the demo's checkpoint comes with its text-only twin for the text panel
    text = str(DEMO_TEXT_CHECKPOINT) if Path(checkpoint).resolve() == DEMO_CHECKPOINT.resolve() else None
    started = time.perf_counter()
    p = Predictor.load(checkpoint, precision=precision, merge=merge, device=device, text_checkpoint=text)
    cold = time.perf_counter() - started
    dev = p.model.device
    sample = p.dataset.test[0]
    cands = list(p.dataset.candidates("test", seed=0)[0])
    history = list(sample.history)
    prompts = p.prompts(history, cands)
    decodes = list(dict.fromkeys([p.decodes[0], "rank"]))  # the model's default, and title likelihood
    out: dict = {"precision": precision, "merged": p.merged, "cold_start_s": cold, "text_checkpoint": text, "rss_after_load_mb": rss_mb(),
                 "rss_before_load_mb": rss0, "prompt_tokens": len(prompts["hybrid"].input_ids), "latency": {},
                 "device": device_name(dev), "gpu_mb_after_load": _gpu_mb(dev)}
    lat = out["latency"]
    for kind in ("text", "hybrid"):
        for decode in [*decodes, "constrained"]:
            lat[f"{kind} {decode}"] = _timed(lambda: p.answer(prompts[kind], decode), repeats)
    lat["hybrid generate"] = _timed(lambda: p.answer(prompts["hybrid"], "generate"), max(1, repeats // 2))
    lat["hybrid rank, 20 independent passes"] = _timed(lambda: p.model.rank_uncached(prompts["hybrid"]), max(1, repeats // 3))
    for decode in decodes:
        lat[f"full demo predict ({decode})"] = _timed(lambda: p.predict(history, cands, decode), repeats)
    lat["token attribution (grad x input), hybrid"] = _timed(lambda: p.attribute(prompts["hybrid"], "grad_x_input"), max(1, repeats // 2))
    lat["item attribution (ablation), hybrid"] = _timed(lambda: p.attribute(prompts["hybrid"], "ablation"), 1)
    # what the demo's Explain button runs by default: both prompts, each watched movie deleted in turn
    lat["Explain (deletion, both prompts)"] = _timed(lambda: p.explain(history, cands, "deletion", "none", 0, decodes[0]),
                                                     max(1, repeats // 2))
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["gpu_peak_mb"] = _gpu_mb(dev, peak=True)
    out["machine"], out["matmul"] = cpu_info(), matmul_probe(repeats=10)  # the CPU path this process ran on
    return out


def run_demo_child(checkpoint: str, precision: str, repeats: int, merge: bool | None, device: str = "cpu",
                   path: str = "native", compute: str = "auto") -> dict:
    """``bench_demo`` in a fresh interpreter on CPU ``path`` with ``compute`` dtype: cold start and memory are not
    flattered by an earlier load, and the ISA limits of a path only take effect in a new process."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "demo.json"
        cmd = [sys.executable, "-m", "llara.bench", "--child-demo", precision, "--checkpoint", str(checkpoint),
               "--repeats", str(repeats), "--json", str(out), "--device", str(device), "--lora", LORA_FORMS[merge]]
        subprocess.run(cmd, check=True, env=path_env(path, compute))
        return {**json.loads(out.read_text()), "cpu_path": path, "compute": compute}


# ---- training ------------------------------------------------------------------------------------------------

def bench_train(precision: str, repeats: int, checkpointing: bool, base_model: str = "smollm2-135m",
                device: str = "cpu", compute: str = "auto") -> dict:
    from ..data import load_dataset
    from ..model.build import build_llara

    ds = load_dataset("movielens")
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # each configuration's own peak, though they share a process
    saved, os.environ[COMPUTE_ENV] = os.environ.get(COMPUTE_ENV), compute  # read by the load below
    try:
        model = build_llara(ds, str(RECOMMENDER_DIR / "movielens" / "sasrec"), base_model=base_model, precision=precision,
                            lora={"r": 8, "alpha": 32, "dropout": 0.1}, head_weight=1.0, device=device)
    finally:
        os.environ.pop(COMPUTE_ENV) if saved is None else os.environ.__setitem__(COMPUTE_ENV, saved)
    if checkpointing:
        model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.llm.enable_input_require_grads() if hasattr(model.llm, "enable_input_require_grads") else None
    rng = random.Random(0)
    cands = ds.candidates("test", seed=0)
    prompts = [model.builder.build(s.history, c, hybrid=True, target=s.target, rng=rng) for s, c in zip(ds.test[:4], cands)]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    model.train()

    def step() -> None:
        model.loss(prompts).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t = _timed(step, repeats)
    return {"precision": precision, "gradient_checkpointing": checkpointing, "batch": len(prompts),
            "compute_dtype": str(model.llm.get_input_embeddings().weight.dtype).removeprefix("torch."),
            "samples_per_s": len(prompts) / t["p50"], "step": t, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "gpu_peak_mb": _gpu_mb(model.device, peak=True)}


# Training recipes compared in fresh processes (``--parts recipes``): what one prompt costs and where memory goes.
# recipe name -> (what it trains, the keyword arguments build_llara takes for it)
RECIPES: dict[str, tuple[str, dict[str, Any]]] = {
    "title": ("the paper's: full prompt, loss on the answer's title tokens", {}),
    "title+head": ("full prompt, title loss + candidate head (the first demo model)", {"head_weight": 1.0}),
    "next-item": ("prompt cut after the user slot, next-item head at every history slot + user token + residual + "
                  "distillation (the personalized models)",
                  {"next_item": True, "user_token": True, "residual": True,
                   "weights": {"title": 0.0, "next": 1.0, "dense": 1.0, "distill": 1.0}}),
}


def bench_recipe(recipe: str, repeats: int, batch: int = 8, device: str = "cpu") -> dict:
    """RSS after each phase of training with one recipe (bf16, batch ``batch`` of real training prompts)."""
    from ..data import load_dataset
    from ..model.build import build_llara
    from ..training.train import quick_validation

    rss = {"start": rss_mb()}
    ds = load_dataset("movielens")
    options = RECIPES[recipe][1]
    model = build_llara(ds, str(RECOMMENDER_DIR / "movielens" / "sasrec"), precision="bf16",
                        lora={"r": 8, "alpha": 32, "dropout": 0.1}, device=device, **options)
    rss["model loaded"] = rss_mb()
    rng = random.Random(0)
    short = recipe == "next-item"
    prompts = []
    for s, c in zip(ds.test[: batch * 4], ds.candidates("test", seed=0)):  # prompts of real length; no update is kept
        p = model.builder.build(s.history, c, hybrid=True, target=s.target, rng=rng)
        prompts.append(p.truncated() if short else p)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    model.train()
    from ..prompt.batch import collate

    def step(k: int) -> None:
        chunk = prompts[(k % 4) * batch : (k % 4 + 1) * batch]  # four batches of different lengths, in turn
        model(collate(chunk, model.pad_id, with_targets=True, padding_side="right", device=model.device)).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    counter = iter(range(10**6))
    t = _timed(lambda: step(next(counter)), repeats)
    rss["after training steps"] = rss_mb()
    rss["peak during training"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    model.eval()
    quick_validation(model, ds, 16, hybrid=True)
    rss["after a validation pass"] = rss_mb()
    rss["peak"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"recipe": recipe, "what": RECIPES[recipe][0], "batch": batch,
            "tokens_per_prompt": float(np.mean([len(p.input_ids) + len(p.target_ids) for p in prompts])),
            "samples_per_s": batch / t["p50"], "step": t, "rss_mb": rss}


def run_recipe_child(recipe: str, repeats: int, device: str = "cpu") -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "recipe.json"
        subprocess.run([sys.executable, "-m", "llara.bench", "--child-recipe", recipe, "--repeats", str(repeats),
                        "--json", str(out), "--device", str(device)], check=True)
        return json.loads(out.read_text())


# ---- llama.cpp reference -------------------------------------------------------------------------------------

def bench_llamacpp(prompt_text: str, repeats: int, threads: int) -> dict:
    """Prompt processing and per-token decoding of the packaged SmolLM2 GGUF (Q4_1) with llama-cpp-python."""
    deps = Path(os.environ.get("LLARA_BENCH_DEPS", REPO_ROOT / ".bench-deps"))
    if deps.is_dir() and str(deps) not in sys.path:
        sys.path.append(str(deps))  # the benchmark's own packages (`make bench-deps`), never the app's environment
    try:
        from llama_cpp import Llama
    except ImportError:
        return {"skipped": "llama-cpp-python is not installed (`make bench-deps`: a C++ build of llama.cpp, several minutes)"}
    from ..model.gguf_convert import packaged_gguf

    with tempfile.TemporaryDirectory() as tmp:
        gguf = packaged_gguf("smollm2-135m", Path(tmp))
        llm = Llama(model_path=str(gguf), n_ctx=2048, n_threads=threads or torch.get_num_threads(), verbose=False)
        tokens = llm.tokenize(prompt_text.encode())

        def prefill() -> None:
            llm.reset()
            llm.eval(tokens)

        pp = _timed(prefill, repeats)
        decode = _timed(lambda: llm.create_completion(prompt_text, max_tokens=16, temperature=0.0), max(1, repeats // 2))
    return {"prompt_tokens": len(tokens), "prefill": pp, "prompt+16 tokens": decode, "quant": "Q4_1 (packaged GGUF)"}


def run_llamacpp_child(prompt_text: str, repeats: int, threads: int) -> dict:
    """``bench_llamacpp`` in a child process: a llama.cpp built for another CPU dies with SIGILL, which Python
    cannot catch; the table then says so instead of losing every other figure."""
    with tempfile.TemporaryDirectory() as tmp:
        out, prompt = Path(tmp) / "llama.json", Path(tmp) / "prompt.txt"
        prompt.write_text(prompt_text)
        cmd = [sys.executable, "-m", "llara.bench", "--child-llamacpp", str(prompt), "--repeats", str(repeats),
               "--threads", str(threads), "--json", str(out)]
        rc = subprocess.run(cmd).returncode
        if rc != 0:
            why = "SIGILL: built for instructions this CPU lacks; rebuild with `make bench-deps`" if rc in (-4, 132) else f"exit {rc}"
            return {"skipped": f"llama.cpp crashed ({why})"}
        return json.loads(out.read_text())


def bench_forward(checkpoint: str, precision: str, repeats: int, device: str = "cpu") -> dict:
    """One forward pass over the text-only prompt (no KV reuse), comparable to llama.cpp's prompt processing of the
    same text (without the ``<PH>`` markers, which llama.cpp would split into several ordinary tokens)."""
    from ..prompt.batch import collate
    from ..serving.inference import Predictor

    p = Predictor.load(checkpoint, precision=precision, device=device)
    sample = p.dataset.test[0]
    prompt = p.prompts(list(sample.history), list(p.dataset.candidates("test", seed=0)[0]))["text"]
    batch = collate([prompt], p.model.pad_id, device=p.model.device)
    with torch.inference_mode():
        t = _timed(lambda: p.model.llm(inputs_embeds=p.model.embed(batch), attention_mask=batch.attention_mask,
                                        logits_to_keep=1), repeats)
    return {"precision": precision, "prompt_tokens": len(prompt.input_ids), "forward": t,
            "text": " ".join(prompt.text.replace(PLACEHOLDER_TOKEN, "").split())}


PARTS = ("demo", "train", "recipes", "llamacpp", "load", "app", "switch")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llara.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="demo,train,recipes,llamacpp",
                        help="comma-separated parts: demo, train, recipes, llamacpp; not in the default: load (20 clients "
                             "x 5 predicts on the first precision, then 100 mixed predicts and explanations), app "
                             "(`python app.py` launched on an empty cache, then on the user's cache, timed until it "
                             "serves) and switch (the demo's datasets loaded in turn, MovieLens - LastFM - MovieLens - "
                             "LastFM - MovieLens, as the dataset switch loads them; resident memory after each) "
                             "(default: %(default)s)")
    parser.add_argument("--precisions", default="bf16,nf4", help="demo precisions (default: %(default)s; fp32 and int8 also valid)")
    parser.add_argument("--cpu-paths", default="native",
                        help=f"comma-separated CPU paths of the demo part, each in fresh processes: {', '.join(CPU_PATHS)} "
                             "(avx2: torch and oneDNN held to AVX2, as on a CPU without native bf16; skipped where the "
                             "native path already is that) (default: %(default)s)")
    parser.add_argument("--compute-dtypes", default="auto",
                        help="comma-separated compute dtypes of the demo and train parts: auto, bf16, fp32 "
                             "(default: %(default)s)")
    parser.add_argument("--checkpoint", default=str(DEMO_CHECKPOINT), help="LLaRA checkpoint of the demo (default: the committed one)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per figure after one warm-up (default: %(default)s)")
    parser.add_argument("--lora", choices=list(LORA_FORMS.values()), default="auto",
                        help="how the demo path applies the LoRA update: merged into the weights, unmerged (int8: beside "
                             "int8 layers the two models share), or auto, as the app serves it (merged; unmerged at "
                             "int8) (default: %(default)s)")
    parser.add_argument("--no-merge", action="store_true", help="the same as --lora unmerged")
    parser.add_argument("--merge-ablation", action="store_true",
                        help="also run the first precision with the LoRA update applied the other way than --lora "
                             "gives it, in the same run and on the first CPU path: what merging buys")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw figures here")
    add_device_arg(parser)
    parser.add_argument("--child-demo", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-recipe", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-llamacpp", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.no_merge and args.lora == "merged":
        parser.error("--no-merge contradicts --lora merged")
    merge = False if args.no_merge else {form: key for key, form in LORA_FORMS.items()}[args.lora]
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    try:
        device = str(resolve_device(args.device))
    except ValueError as err:
        parser.error(str(err))
    if args.child_llamacpp:
        write_json(args.json, bench_llamacpp(Path(args.child_llamacpp).read_text(), args.repeats, args.threads))
        return 0
    if args.child_recipe:
        write_json(args.json, bench_recipe(args.child_recipe, args.repeats, device=device))
        return 0
    if args.child_demo:
        write_json(args.json, bench_demo(args.checkpoint, args.child_demo, args.repeats, merge=merge, device=device))
        return 0
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    paths = [p.strip() for p in args.cpu_paths.split(",") if p.strip()]
    computes = [c.strip().lower() for c in args.compute_dtypes.split(",") if c.strip()]
    bad = ([p for p in precisions if p not in PRECISIONS] + [p for p in parts if p not in PARTS]
           + [p for p in paths if p not in CPU_PATHS] + [c for c in computes if c not in ("auto", "bf16", "fp32")])
    if bad:
        parser.error(f"unknown part, precision, CPU path or compute dtype: {', '.join(bad)}")
    if parts & {"demo", "load"} and not (Path(args.checkpoint) / "meta.json").is_file():
        parser.error(f"no LLaRA checkpoint at {args.checkpoint}")
    res: dict = {"machine": {**cpu_info(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                             "device": device_name(torch.device(device))}}
    if "demo" in parts:
        runs = [(path, c, p) for path in paths if not redundant_path(path) for c in computes for p in precisions
                if p not in ("fp32", "int8") or c == computes[0]]  # these compute in fp32 whatever is asked
        if any(redundant_path(path) for path in paths):
            print("the avx2 path is skipped: this CPU's native path already is AVX2 without native bf16", file=sys.stderr)
        res["demo"] = [run_demo_child(args.checkpoint, p, args.repeats, merge, device, path, c) for path, c, p in runs]
        if args.merge_ablation:  # on the first path measured, so the two columns compare
            from ..serving.inference import merged_by_default

            first = next((path for path, _, _ in runs), "native")
            served = merge if merge is not None else merged_by_default(precisions[0])
            res["demo"].append(run_demo_child(args.checkpoint, precisions[0], args.repeats, merge=not served,
                                              device=device, path=first, compute=computes[0]))
    if "app" in parts:  # the first start ever, then a start from the cache it leaves (in the user's cache: warm)
        res["app"] = [app_start(precisions[0], empty_cache=True), app_start(precisions[0], empty_cache=False)]
    if "load" in parts:
        from ..serving.inference import Predictor

        text = str(DEMO_TEXT_CHECKPOINT) if Path(args.checkpoint).resolve() == DEMO_CHECKPOINT.resolve() else None
        p = Predictor.load(args.checkpoint, precision=precisions[0], device=device, text_checkpoint=text)
        res["load"] = [{**load_test(p, max_batch=1), "precision": precisions[0]},  # one at a time, then batched
                       {**load_test(p), "precision": precisions[0]}]
        res["mixed"] = mixed_load(p)
    if "switch" in parts:
        try:
            res["switch"] = demo_switch(list(DEMO_DATASETS), precision=precisions[0], device=device)
        except ValueError as err:
            parser.error(str(err))
    if "train" in parts:
        res["train"] = [bench_train(p, max(2, args.repeats // 2), ckpt, device=device, compute=c) for c in computes
                        for p in ("bf16", "nf4") for ckpt in (False, True)]
    if "recipes" in parts:
        res["recipes"] = [run_recipe_child(r, args.repeats, device) for r in RECIPES]
    if "llamacpp" in parts:
        fwd = bench_forward(args.checkpoint, "bf16", args.repeats, device=device)
        res["llamacpp"] = run_llamacpp_child(fwd.pop("text"), args.repeats, args.threads)
        res["forward"] = fwd
    table = format_table(res)
    print(table)
    if args.json:
        write_json(args.json, {**res, "table": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
