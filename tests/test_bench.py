"""The benchmark's table and argument checks (the timed runs themselves are `make bench`, not tests)."""
from __future__ import annotations

import pytest

from llara.measurement import bench, bench_table


def _t(p50: float) -> dict:
    return {"p50": p50, "p95": p50 * 1.5, "n": 3}


def test_table_shows_targets_and_ratios():
    demo = {"precision": "nf4", "merged": True, "cold_start_s": 12.3, "rss_after_load_mb": 900.0, "peak_rss_mb": 1200.0,
            "latency": {"hybrid rank": _t(0.5), "hybrid rank, 20 independent passes": _t(4.0), "full demo predict (head)": _t(1.5)}}
    res = {"demo": [demo, {**demo, "merged": False}],
           "train": [{"precision": "bf16", "gradient_checkpointing": True, "samples_per_s": 0.8, "step": _t(5.0), "peak_rss_mb": 3000}],
           "llamacpp": {"prompt_tokens": 200, "prefill": _t(0.2), "prompt+16 tokens": _t(0.5), "quant": "Q4_1"},
           "forward": {"precision": "bf16", "prompt_tokens": 230, "forward": _t(0.46)}}
    table = bench_table.format_table(res)
    assert "| nf4 | nf4, LoRA unmerged | target |" in table
    assert "8.0x faster than 20 independent passes (target ≥ 3x)" in table
    assert "bf16 ≤ 1,000, nf4 ≤ 2,000" in table and "≤ 30 s" in table
    assert "1,500 / 2,250" in table  # p50 / p95 in ms
    assert "2.00x llama.cpp's time per prompt token (target ≤ 2x)" in table  # (0.46/230) / (0.2/200)
    assert "gradient checkpointing on | 0.80" in table


def test_llamacpp_absent_is_a_note(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "llama_cpp", None)  # import fails as when not installed
    result = bench.bench_llamacpp("x", 1, 1)
    assert "make bench-deps" in result["skipped"]
    assert "llama.cpp reference: skipped: pip" in bench_table.format_table({"llamacpp": {"skipped": "pip ..."}})


@pytest.mark.parametrize("argv", [["--parts", "gpu"], ["--precisions", "int3"], ["--repeats", "0"],
                                  ["--parts", "demo", "--checkpoint", "/nonexistent"]])
def test_bad_arguments(argv):
    with pytest.raises(SystemExit):
        bench.main(argv)


def test_llamacpp_crash_is_a_note_not_a_lost_table(monkeypatch):
    """A llama.cpp built for other CPU instructions dies with SIGILL; the child process keeps the table alive."""
    class Done:
        returncode = -4

    monkeypatch.setattr(bench.subprocess, "run", lambda cmd: Done())
    assert "SIGILL" in bench.run_llamacpp_child("a prompt", 1, 1)["skipped"]


def test_app_start_rows_name_the_cache_and_targets():
    starts = [{"precision": "nf4", "empty_cache": True, "ready_s": 31.4, "rss_mb": 930.2},
              {"precision": "nf4", "empty_cache": False, "ready_s": 17.0, "rss_mb": 899.6}]
    table = bench_table.format_table({"app": starts})
    assert "| nf4, empty cache (first start) | 31.4 | 930 | ≤ 30 s; ≤ 1,000 MB |" in table
    assert "| nf4, warm cache | 17.0 | 900 | ≤ 1,000 MB |" in table


def test_app_start_reports_an_app_that_dies(tmp_path):
    """``llara.measurement.concurrency.app_start`` launches a real process; one that exits before serving is an error,
    not a hang."""
    from llara.measurement.concurrency import app_start

    broken = tmp_path / "app.py"
    broken.write_text("raise SystemExit(3)\n")
    with pytest.raises(RuntimeError, match="exited with code 3 before serving"):
        app_start(app_file=broken, timeout_s=30)


# ---- CPU paths: which CPU a figure came from, and the AVX2 path on any CPU --------------------------------------

def test_every_demo_column_and_the_table_name_their_cpu_path():
    avx512 = {"cpu": "Intel Xeon", "cores": 2, "torch_capability": "AVX512", "native_bf16": True, "cpu_has_bf16": True,
              "isa_limit": {}, "compute_dtype": "bfloat16"}
    limited = {**avx512, "torch_capability": "AVX2", "native_bf16": False, "compute_dtype": "float32",
               "isa_limit": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}
    demo = {"precision": "nf4", "merged": True, "cold_start_s": 12.3, "rss_after_load_mb": 900.0, "peak_rss_mb": 1200.0,
            "latency": {"hybrid rank": _t(0.5), "hybrid rank, 20 independent passes": _t(4.0)}}
    res = {"machine": {**avx512, "torch": "2.13.0", "device": "cpu", "threads": 2},
           "demo": [{**demo, "machine": avx512, "matmul": {"bf16_over_fp32": 0.6}},
                    {**demo, "machine": limited, "matmul": {"bf16_over_fp32": 7.4}}]}
    table = bench_table.format_table(res)
    assert table.splitlines()[0] == "CPU: Intel Xeon, 2 cores, torch AVX512, native bf16 (compute bfloat16)"
    assert "| nf4, bfloat16 compute | nf4, float32 compute, AVX2 limit | target |" in table
    assert "| bf16 / fp32 time of one matmul in that process | 0.6x | 7.4x |" in table
    assert bench_table.format_table({}).startswith("CPU: not recorded")


def test_demo_children_run_on_each_path_and_compute_dtype(monkeypatch, tmp_path, capsys):
    import json
    from pathlib import Path

    from llara.measurement import cpu_paths

    seen, real_run = [], bench.subprocess.run

    def fake_run(cmd, check=False, env=None, **kw):
        if "--child-demo" not in cmd:  # the module is shared: other callers get the real thing
            return real_run(cmd, check=check, env=env, **kw)
        seen.append((cmd[cmd.index("--child-demo") + 1], env.get("ATEN_CPU_CAPABILITY"), env.get("LLARA_COMPUTE_DTYPE")))
        out = cmd[cmd.index("--json") + 1]
        Path(out).write_text(json.dumps({"precision": cmd[cmd.index("--child-demo") + 1], "latency": {}}))

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    monkeypatch.setattr(bench, "format_table", lambda res: "table")
    monkeypatch.setattr(bench, "redundant_path", lambda path: False)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "meta.json").write_text("{}")
    assert bench.main(["--parts", "demo", "--checkpoint", str(ckpt), "--precisions", "nf4,fp32",
                       "--cpu-paths", "native,avx2", "--compute-dtypes", "auto,bf16"]) == 0
    # fp32 weights run once per path (they compute in fp32 whatever is asked)
    assert seen == [("nf4", None, "auto"), ("fp32", None, "auto"), ("nf4", None, "bf16"),
                    ("nf4", "avx2", "auto"), ("fp32", "avx2", "auto"), ("nf4", "avx2", "bf16")]
    monkeypatch.setattr(bench, "redundant_path", cpu_paths.redundant_path)
    assert cpu_paths.redundant_path("avx2", {"cpu_has_bf16": False, "torch_capability": "AVX2"})
    assert not cpu_paths.redundant_path("avx2", {"cpu_has_bf16": True, "torch_capability": "AVX512"})
    assert not cpu_paths.redundant_path("native", {"cpu_has_bf16": False, "torch_capability": "AVX2"})


@pytest.mark.parametrize("argv", [["--cpu-paths", "avx9"], ["--compute-dtypes", "fp16"]])
def test_unknown_cpu_paths_and_compute_dtypes_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        bench.main(argv)
    assert "unknown part, precision, CPU path or compute dtype" in capsys.readouterr().err


def test_the_avx2_path_takes_effect_in_a_fresh_process(monkeypatch):
    from llara.measurement import cpu_paths

    monkeypatch.setenv("LLARA_COMPUTE_DTYPE", "auto")

    row = cpu_paths.probe_path("avx2", threads=1)
    machine = row["machine"]
    assert machine["torch_capability"] == "AVX2" and machine["native_bf16"] is False
    assert machine["isa_limit"] == {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert machine["compute_dtype"] == "float32"  # auto, where bf16 is emulated
    # held to AVX2, a bf16 matmul is emulated: several times slower than float32 (a ratio, never an absolute time)
    assert row["bf16_over_fp32"] > 1.5
    with pytest.raises(ValueError, match="unknown CPU path 'avx9'"):
        cpu_paths.path_env("avx9")
