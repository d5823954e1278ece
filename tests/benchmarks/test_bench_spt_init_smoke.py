"""The SPT-init benchmark in --smoke mode: every initialiser next to one trial (timing never asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vptsearch.spec import load_spec

SPACE = Path(__file__).resolve().parents[2] / "search_spaces" / "mini_deep_full.yaml"

STRATEGIES = {"random", "spt-mean", "spt-max", "spt-sample", "spt-kmeans"}


def test_spt_init_smoke(run_benchmark, digits_data, capsys):
    r = run_benchmark("bench_spt_init", ["--smoke"])
    assert '"benchmark": "spt_init"' in capsys.readouterr().out
    assert r["smoke"] is True and r["images"] == 16 and r["tokens_per_layer"] == 16 * 64
    # digits has 10 classes: cls-prototype is timed at p = 10 next to the others
    assert set(r["init_seconds"]) == {"p10"}
    assert set(r["init_seconds"]["p10"]) == STRATEGIES | {"cls-prototype"}
    assert all(v >= 0 for v in r["init_seconds"]["p10"].values())
    trial = r["trial"]
    epochs = load_spec(SPACE).training.epochs  # the full mini recipe's length
    assert trial["measured_epochs"] == 1 and trial["epochs"] == epochs
    assert trial["seconds"] == pytest.approx(trial["median_epoch_seconds"] * epochs, rel=1e-3)
    for s, v in r["init_seconds"]["p10"].items():
        assert r["ratio_to_trial"]["p10"][s] == pytest.approx(v / trial["seconds"], abs=1e-4)
    assert isinstance(r["meets_target"], bool)


def test_spt_init_bad_lengths(run_benchmark, capsys):
    with pytest.raises(SystemExit):
        run_benchmark("bench_spt_init", ["--lengths", "10,x"])
    assert "--lengths '10,x'" in capsys.readouterr().err
