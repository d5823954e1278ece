"""The simulated-GPU launch benchmark in --smoke mode: both engines, both launch paths, for real.

Timing is never asserted; the JSON's structure and its accounting are (fractions of the slot-seconds
sum to 1, efficiency is the compute share, the old engine checkpoints every epoch, the new one only
at its policy's epochs; the launch path before issue 29 sends a result every epoch, today's fewer;
the driver's per-event costs and the 8-GPU projection are there with their formula; every mode runs
the final trials too: the new launch path in the search's Tuner, the others in a second one).
"""

from __future__ import annotations

import pytest

BUCKETS = {"compute", "model_build", "data", "host_sync", "eval_bookkeeping", "checkpoint", "report",
           "train_loop_other", "other_in_trial", "worker_startup", "between_trials", "tail"}  # fmt: skip


def test_gpu_sim_smoke(run_benchmark, capsys):
    r = run_benchmark("bench_gpu_sim", ["--smoke", "--modes", "baseline,before,new"])
    assert '"benchmark": "gpu_sim"' in capsys.readouterr().out
    assert r["smoke"] is True and r["slots"] == 2 and r["epochs"] == 6
    assert set(r["runs"]) == {"local_baseline", "local_before", "local_new"}
    # the anchor: 0.18 s per 800-image epoch at p = 50 from ~89 GFLOP/image at 40 % of 989 TFLOP/s
    assert r["anchor"]["epoch_s_p50_800_images"] == pytest.approx(0.18, abs=0.005)
    assert r["anchor"]["train_gflop_per_image_p50_issue"] == pytest.approx(89, abs=1)
    gpu = r["anchor"]["gpu_s_train_epoch_and_val200"]
    assert gpu["p1"][0] < gpu["p50"][0] < gpu["p200"][0]
    for name, run in r["runs"].items():
        # 2 tasks x 2 search trials, then each task's winner with the 3 final seeds (ASHA promotes
        # a task's first trial at every rung, so each task has one)
        assert run["errored"] == 0 and run["trials_by_phase"] == {"final": 6, "search": 4}, name
        assert run["trials"] == 10 and sum(run["statuses"].values()) == 10
        assert 0 < run["efficiency"] <= run["steady_efficiency"] <= 1, name
        assert set(run["breakdown"]) == BUCKETS
        assert sum(run["breakdown"].values()) == pytest.approx(1.0, abs=0.01)
        assert run["breakdown"]["compute"] == pytest.approx(run["efficiency"], abs=1e-3)
        assert all(v >= -0.01 for v in run["breakdown"].values()), run["breakdown"]
        # simulated compute = the epochs the trials really ran x their analytic GPU seconds
        assert run["compute_s"] > 0 and run["storage_bytes_at_end"] > 0
        assert run["fixed_cost_s_per_trial"]["median"] > 0
        assert run["mlflow_unsynced"] == 0
        assert set(run["driver_components_s"]) >= {"searcher", "scheduler", "callbacks"}
        costs = run["driver_costs"]
        assert costs["results"] > 0 and costs["ms_per_result"] > 0 and costs["ms_per_trial"] > 0, name
        assert costs["main_thread_cpu_s"] > 0 and run["idle_between_trials_s"]["median"] is not None
        proj = r["projection_8gpu_node_16_slots"][name]
        assert proj["inputs"]["slots"] == 16 and 0 < proj["efficiency"] <= 1 and "rho" in proj["formula"]
    old, new = r["runs"]["local_baseline"], r["runs"]["local_new"]
    assert old["checkpoints_per_trial"] == old["epochs_per_trial"]  # every epoch
    assert new["checkpoints_per_trial"] < new["epochs_per_trial"]  # rungs (2, 6) and the last epoch
    assert old["breakdown"]["data"] > new["breakdown"]["data"]  # host normalisation + copies per batch
    # before issue 29 every epoch was a Tune result; now rungs, checkpoints and the last epoch
    before = r["runs"]["local_before"]
    # (and a final trial, which no scheduler stops at its last epoch, sends Tune its end as one more)
    assert before["driver_costs"]["results_per_trial"] == pytest.approx(before["epochs_per_trial"] + 6 / 10)
    assert new["driver_costs"]["results_per_trial"] < new["epochs_per_trial"]
    assert set(r["meets_target"]) == {"local_efficiency", "fixed_cost", "projection_8gpu_node"}
    assert all(isinstance(v, bool) for v in r["meets_target"].values())


def test_gpu_sim_flops_match_the_closed_form():
    """vit_flops: 12 blocks of 12 N d^2 + 2 N^2 d multiply-adds at N = 197 + p (without the CLS-only
    last block), x2 for FLOPs, x2 for training; prefix_kv costs less than tokens at every p > 0."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_gpu_sim.py"
    spec = importlib.util.spec_from_file_location("bench_gpu_sim", path)
    assert spec is not None and spec.loader is not None
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    d, patch = 768, 196 * 3 * 256 * 768
    for p in (1, 50, 200):
        n = 197 + p
        closed = 2 * 2 * (patch + 12 * (12 * n * d * d + 2 * n * n * d))
        assert m.vit_flops(p, cls_only_last=False) == pytest.approx(closed, rel=1e-12)
        assert m.vit_flops(p, impl="prefix_kv") < m.vit_flops(p)
        assert m.vit_flops(p, train=False) == pytest.approx(m.vit_flops(p) / 2)
    assert m.vit_flops(0, impl="prefix_kv") == pytest.approx(m.vit_flops(0))
    with pytest.raises(ValueError, match="prefix_kv"):
        m.vit_flops(1, impl="shallow")
