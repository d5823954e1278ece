"""The model-step benchmark runs end to end in --smoke mode and reports the documented fields."""

from __future__ import annotations


def test_bench_model_step_smoke(run_benchmark, capsys):
    result = run_benchmark("bench_model_step", ["--smoke", "--threads", "1"])
    assert set(result["step_ms"]) == {"full"} | {
        f"{impl}/p{p}" for impl in ("tokens", "prefix_kv", "prefix_kv_batchmask") for p in (1, 10, 50, 200)
    }
    assert set(result["ratios"]) == {
        "prefix_kv_p200_over_p1", "tokens_p200_over_p1",
        "vpt_deep_prefix_kv_over_full_p10", "vpt_deep_tokens_over_full_p10",
    } | {f"prefix_kv_over_tokens_p{p}" for p in (1, 10, 50, 200)}
    assert len(result["targets_met"]) == 3 and result["spt_kmeans_init_seconds"]["p10"] > 0
    assert '"benchmark": "model_step"' in capsys.readouterr().out
