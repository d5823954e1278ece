"""The platform-overhead benchmark runs end to end in --smoke mode and reports the documented fields.

Timing is never asserted; only that every trial went through the driver path and finished.
The module is loaded without registering it in ``sys.modules`` (as when run as a script), so Ray
pickles its no-op trainable by value, the way a ``python benchmarks/...`` run does.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_platform_overhead.py"


def test_bench_platform_overhead_smoke(capsys):
    spec = importlib.util.spec_from_file_location("bench_platform_overhead", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--smoke"])
    out = json.loads(capsys.readouterr().out)
    assert out == json.loads(json.dumps(result))
    assert result["benchmark"] == "platform_overhead" and result["smoke"] is True
    assert result["trials"] == 20
    assert result["finished"] == 20 and result["errored"] == 0
    assert sum(result["statuses"].values()) == 20 and result["statuses"].get("failed", 0) == 0
    assert result["mlflow_trial_runs"] == 20  # one nested MLflow run per trial
    assert result["platform_wall_s"] > 0 and result["bare_wall_s"] >= 0
    assert isinstance(result["overhead_ms_per_trial"], float)
    assert result["target_ms_per_trial"] == 20.0 and isinstance(result["meets_target"], bool)
    assert {"searcher", "scheduler", "mlflow_callback"} <= set(result["breakdown_ms_per_trial"])
    floor = result["tune_floor"]  # stock Tune on the same cluster and trial count, side by side
    assert floor["errored"] == 0 and floor["reports"] >= 20 and floor["platform_reports"] >= 20
    added = result["overhead_ms_per_trial"] - floor["overhead_ms_per_trial"]
    assert abs(floor["vptsearch_added_ms_per_trial"] - added) < 2e-3  # both rounded to 3 decimals
    tpe = result["tune_floor_tpe"]  # stock Tune's OptunaSearch + ASHA, a Tuner per task
    assert tpe["errored"] == 0 and tpe["reports"] >= 20
    ratio = result["ratio_to_stock_tune"]
    assert ratio["target"] == 1.1 and isinstance(ratio["meets_target"], bool)
    expected = result["overhead_ms_per_trial"] / tpe["overhead_ms_per_trial"]
    assert abs(ratio["same_tpe_search"] - expected) < 0.01
