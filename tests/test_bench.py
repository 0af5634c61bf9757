"""The benchmark's table and argument checks (the timed runs themselves are `make bench`, not tests)."""
from __future__ import annotations

import pytest

from llara import bench


def _t(p50: float) -> dict:
    return {"p50": p50, "p95": p50 * 1.5, "n": 3}


def test_table_shows_targets_and_ratios():
    demo = {"precision": "nf4", "merged": True, "cold_start_s": 12.3, "rss_after_load_mb": 900.0, "peak_rss_mb": 1200.0,
            "latency": {"hybrid rank": _t(0.5), "hybrid rank, 20 independent passes": _t(4.0), "full demo predict (head)": _t(1.5)}}
    res = {"demo": [demo, {**demo, "merged": False}],
           "train": [{"precision": "bf16", "gradient_checkpointing": True, "samples_per_s": 0.8, "step": _t(5.0), "peak_rss_mb": 3000}],
           "llamacpp": {"prompt_tokens": 200, "prefill": _t(0.2), "prompt+16 tokens": _t(0.5), "quant": "Q4_1"},
           "forward": {"precision": "bf16", "prompt_tokens": 230, "forward": _t(0.46)}}
    table = bench.format_table(res)
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
    assert "llama.cpp reference: skipped: pip" in bench.format_table({"llamacpp": {"skipped": "pip ..."}})


@pytest.mark.parametrize("argv", [["--parts", "gpu"], ["--precisions", "int8"], ["--repeats", "0"],
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
    table = bench.format_table({"app": starts})
    assert "| nf4, empty cache (first start) | 31.4 | 930 | ≤ 30 s; ≤ 1,000 MB |" in table
    assert "| nf4, warm cache | 17.0 | 900 | ≤ 1,000 MB |" in table


def test_app_start_reports_an_app_that_dies(tmp_path):
    """``llara.concurrency.app_start`` launches a real process; one that exits before serving is an error, not a hang."""
    from llara.concurrency import app_start

    broken = tmp_path / "app.py"
    broken.write_text("raise SystemExit(3)\n")
    with pytest.raises(RuntimeError, match="exited with code 3 before serving"):
        app_start(app_file=broken, timeout_s=30)
