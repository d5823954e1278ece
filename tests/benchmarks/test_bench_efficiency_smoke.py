"""The search-efficiency benchmark in --smoke mode: JSON fields, invariants, and the grid cache.

Timing is never asserted. The second run drops one cached cell and counts ``run_trial`` calls: only
that cell may be trained again (the rest of the grid is reused, and a partial grid resumes).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

METHODS = {"tpe_asha", "random_asha", "tpe"}


def test_search_efficiency_smoke_then_cached(
    run_benchmark, digits_data, local_ray, tmp_path, monkeypatch, capsys
):
    first = run_benchmark("bench_search_efficiency", ["--smoke", "--results", str(tmp_path)])
    out = capsys.readouterr().out
    assert json.loads(out[: out.rindex("}") + 1]) == json.loads(json.dumps(first))
    assert first["benchmark"] == "search_efficiency" and first["smoke"] is True
    grid = first["grid"]
    assert grid["size"] == 4 and grid["trained_now"] == 4 and grid["reused"] == 0
    cache = Path(grid["cache"])
    assert cache.parent == tmp_path and cache.name == f"grid_{grid['hash']}.parquet"
    assert (tmp_path / "search_efficiency.png").stat().st_size > 0
    assert json.loads((tmp_path / "search_efficiency.json").read_text())["grid"]["hash"] == grid["hash"]

    (task, info), = first["tasks"].items()
    assert task == "mini/digits" and info["statuses"] == {"completed": 4, "diverged": 0}
    assert info["grid_trial_epochs"] == 4 * grid["recipe"]["epochs"]
    assert 0.0 <= info["grid_best_val"] <= 1.0 and info["configs_within_tolerance"] >= 1
    assert set(first["methods"]) == METHODS and set(first["overall_fraction_to_best"]) == METHODS
    trials, epochs = first["search"]["trials_per_task"], grid["recipe"]["epochs"]
    for method, per_task in first["methods"].items():
        s = per_task[task]
        assert s["reached"] == f"{sum(f is not None for f in s['fractions'])}/1"
        assert all(f is None or 0.0 <= f <= 1.0 for f in s["fractions"])
        assert s["selected_val"]["median"] is None or s["selected_val"]["median"] <= info["grid_best_val"]
        assert 1 <= s["epochs_spent"]["median"] <= trials * epochs, method
        (curve,) = s["curves"]  # one seed: [spent, selected] after every finished trial
        assert len(curve) == trials and curve[-1][0] == s["epochs_spent"]["median"]
        assert [p[0] for p in curve] == sorted(p[0] for p in curve)
        selected = [p[1] for p in curve if p[1] is not None]
        assert selected == sorted(selected)
        # the JSON rounds the median to 4 digits
        assert not selected or abs(selected[-1] - s["selected_val"]["median"]) <= 1e-4
    spent = {m: first["methods"][m][task]["epochs_spent"]["median"] for m in METHODS}
    # No diverged cell (checked above), so plain TPE runs every trial to the end; ASHA can only stop early.
    assert spent["tpe"] == trials * epochs
    assert spent["tpe_asha"] <= spent["tpe"] and spent["random_asha"] <= spent["tpe"]

    rows = pd.read_parquet(cache)
    assert len(rows) == 4 and all(len(c) == epochs for c in rows["val_curve"])
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
    assert [c["prompt.length"] for c in calls] == [dropped["prompt.length"]]
    assert [c["prompt.init"] for c in calls] == [dropped["prompt.init"]]
    assert second["grid"]["trained_now"] == 1 and second["grid"]["reused"] == 3
    assert set(second["methods"]) == {"tpe"}
    assert len(pd.read_parquet(cache)) == 4


def test_search_efficiency_replay_needs_a_grid(run_benchmark, tmp_path):
    import pytest

    from vptsearch._errors import ConfigError

    with pytest.raises(ConfigError, match=r"no cached grid at .*--full"):
        run_benchmark("bench_search_efficiency", ["--results", str(tmp_path), "--tasks", "mini/digits"])
