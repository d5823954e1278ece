"""The search-efficiency benchmark in --smoke mode: JSON fields, invariants, and the grid cache.

Timing is never asserted. The second run drops one cached cell and counts ``run_trial`` calls: only
that cell may be trained again (the rest of the grid is reused, and a partial grid resumes).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

METHODS = {
    "tpe_asha", "random_asha", "tpe", "random", "screen_topk", "tpe_asha_warm_launch", "tpe_asha_warm_loto"
}


def test_search_efficiency_smoke_then_cached(
    run_benchmark, digits_data, local_ray, tmp_path, monkeypatch, capsys
):
    first = run_benchmark("bench_search_efficiency", ["--smoke", "--results", str(tmp_path)])
    out = capsys.readouterr().out
    assert json.loads(out[: out.rindex("}") + 1]) == json.loads(json.dumps(first))
    assert first["benchmark"] == "search_efficiency" and first["smoke"] is True
    grid = first["grid"]
    assert grid["size"] == 2 and grid["seeds"] == [0, 1]
    assert grid["cells"] == 4 and grid["trained_now"] == 4 and grid["reused"] == 0
    assert grid["space"] == "search_spaces/mini_deep_full.yaml" and grid["fixed"]["head.norm"] == "batchnorm"
    cache = Path(grid["cache"])
    assert cache.parent == tmp_path and cache.name == f"grid_{grid['hash']}.parquet"
    assert (tmp_path / "search_efficiency.png").stat().st_size > 0
    assert json.loads((tmp_path / "search_efficiency.json").read_text())["grid"]["hash"] == grid["hash"]

    (task, info), = first["tasks"].items()
    assert task == "mini/digits" and info["statuses"] == {"completed": 4, "diverged": 0}
    epochs = grid["recipe"]["epochs"]
    assert info["grid_trial_epochs"] == 2 * epochs  # one grid search: each config once
    assert 0.0 <= info["grid_best_quality"] <= 1.0 and info["standard_error"] >= 0.0
    assert 1 <= info["configs_found"] <= 2
    assert set(info["rung_spearman"]) == set(range(1, epochs + 1))
    assert set(first["methods"]) == METHODS and set(first["overall_fraction_to_found"]) == METHODS
    trials = first["search"]["trials_per_task"]
    for method, per_task in first["methods"].items():
        s = per_task[task]
        assert s["found"] == f"{sum(h is not None for h in s['epochs_to_found'])}/1"
        assert 1 <= s["epochs_spent"]["median"] <= trials * epochs, method
        (curve,) = s["curves"]  # one search seed: [spent, regret] after every finished trial
        continued = min(3, trials) if method == "screen_topk" else 0  # screening: its top 3 run on
        assert len(curve) == trials + continued and curve[-1][0] == s["epochs_spent"]["median"]
        assert [p[0] for p in curve] == sorted(p[0] for p in curve)
        regrets = [p[1] for p in curve if p[1] is not None]
        # regrets are against the seed-averaged truth: never negative, never above the grid's spread
        spread = info["quality_spread"]["best"] - info["quality_spread"]["worst"]
        assert all(-1e-9 <= r <= spread + 1e-4 for r in regrets), (method, regrets)  # JSON rounds to 4
    spent = {m: first["methods"][m][task]["epochs_spent"]["median"] for m in METHODS}
    # No diverged cell (checked above), so plain TPE runs every trial to the end; ASHA can only stop early.
    assert spent["tpe"] == trials * epochs
    assert spent["tpe_asha"] <= spent["tpe"] and spent["random_asha"] <= spent["tpe"]

    rows = pd.read_parquet(cache)
    assert len(rows) == 4 and all(len(c) == epochs for c in rows["val_curve"])
    assert sorted(rows["seed"]) == [0, 0, 1, 1]
    dropped = rows.iloc[-1]
    rows.iloc[:-1].to_parquet(cache, index=False)  # an interrupted grid: one cell missing

    import vptsearch.train

    calls: list[dict] = []
    real = vptsearch.train.run_trial

    def counting(config, **kw):
        calls.append(config)
        return real(config, **kw)

    monkeypatch.setattr(vptsearch.train, "run_trial", counting)
    second = run_benchmark(
        "bench_search_efficiency", ["--smoke", "--results", str(tmp_path), "--methods", "tpe", "--no-plot"]
    )
    assert [(c["prompt.length"], c["seed"]) for c in calls] == [
        (dropped["prompt.length"], dropped["seed"])
    ]
    assert calls[0]["head.norm"] == "batchnorm"  # the shipped space's fixed params reach run_trial
    assert second["grid"]["trained_now"] == 1 and second["grid"]["reused"] == 3
    assert set(second["methods"]) == {"tpe"}
    assert len(pd.read_parquet(cache)) == 4


def test_search_efficiency_replay_needs_a_grid(run_benchmark, tmp_path):
    import pytest

    from vptsearch._errors import ConfigError

    with pytest.raises(ConfigError, match=r"no cached grid at .*--full"):
        run_benchmark("bench_search_efficiency", ["--results", str(tmp_path), "--tasks", "mini/digits"])
