"""The import-memory benchmark in --smoke mode: both importers, both sizes, real child processes."""

from __future__ import annotations


def test_bench_import_memory_smoke(run_benchmark, capsys):
    r = run_benchmark("bench_import_memory", ["--smoke"])
    assert '"benchmark": "import_memory"' in capsys.readouterr().out
    assert r["images"] == 300 and set(r["imports"]) == {"folder", "vtab"}
    for kind, sizes in r["imports"].items():
        assert sizes["small"]["images"] == 50 and sizes["full"]["images"] == 300, kind
        for run in sizes.values():
            assert run["peak_rss_mb"] > 10 and run["images_per_s"] > 0
        assert r["growth_mb"][kind] == round(sizes["full"]["peak_rss_mb"] - sizes["small"]["peak_rss_mb"], 1)
    assert r["peak_rss_mb"] == max(s["peak_rss_mb"] for v in r["imports"].values() for s in v.values())
    assert r["meets_target"] == (r["peak_rss_mb"] <= r["target_mb"] == 1024.0)
