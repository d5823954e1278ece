"""``python -m benchmarks``: one combined JSON on stdout, a table on stderr, errors reported, not hidden."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _entry():
    spec = importlib.util.spec_from_file_location("benchmarks_entry", ROOT / "benchmarks" / "__main__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _python_m(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_entry_smoke_subset(digits_data):
    proc = _python_m("--smoke", "--only", "spt_init,model_step")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)  # stdout is the combined JSON only: each benchmark's goes to stderr
    assert out["smoke"] is True and out["errors"] == {}
    assert set(out["benchmarks"]) == {"spt_init", "model_step"}
    assert out["benchmarks"]["spt_init"]["benchmark"] == "spt_init"
    assert out["benchmarks"]["model_step"]["smoke"] is True
    assert "spt-kmeans" in out["headline"]["spt_init"] and "prefix_kv" in out["headline"]["model_step"]
    assert set(out["meets_target"]) == {"spt_init", "model_step"} == set(out["seconds"])
    table = proc.stderr.splitlines()[-3:]  # header + one line per benchmark
    assert table[0].startswith("benchmark")
    assert [t.split()[0] for t in table[1:]] == ["spt_init", "model_step"]


def test_entry_unknown_benchmark():
    proc = _python_m("--only", "model_stpe")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "--only 'model_stpe': unknown benchmark; accepted: model_step, data_reader, platform_overhead, "
        "spt_init, import_memory, gpu_sim, search_efficiency"
    )


def test_entry_modes_and_failures(monkeypatch, capsys):
    entry = _entry()
    seen: list[tuple[str, list[str]]] = []

    def fake_load(name):
        def main(argv):
            seen.append((name, argv))
            if name == "data_reader":
                raise RuntimeError("disk full")
            return {"benchmark": name, "meets_target": name != "spt_init"}

        return main

    monkeypatch.setattr(entry, "load", fake_load)
    assert entry.main([]) == 1  # one benchmark raised: exit 1, the others still ran
    out = json.loads(capsys.readouterr().out)
    fast = ["model_step", "data_reader", "platform_overhead", "spt_init", "import_memory"]
    assert [n for n, _ in seen] == fast
    assert out["errors"] == {"data_reader": "RuntimeError: disk full"}
    assert out["meets_target"] == {n: n != "spt_init" for n in fast if n != "data_reader"}
    # the fakes' JSON has no figures: empty headlines, no crash
    assert out["headline"] == {n: "" for n in fast if n != "data_reader"}

    seen.clear()
    assert entry.main(["--full", "--only", "search_efficiency"]) == 0
    assert seen == [("search_efficiency", ["--full"])]
    seen.clear()
    assert entry.main(["--smoke", "--only", "platform_overhead,model_step"]) == 0
    assert seen == [("platform_overhead", ["--smoke"]), ("model_step", ["--smoke"])]
    seen.clear()
    assert entry.main(["--smoke"]) == 1
    assert [n for n, _ in seen][-1] == "search_efficiency" and all(a == ["--smoke"] for _, a in seen)


@pytest.mark.slow
def test_entry_smoke_everything(digits_data):
    proc = _python_m("--smoke")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert set(out["benchmarks"]) == {
        "model_step", "data_reader", "platform_overhead", "spt_init", "import_memory", "gpu_sim",
        "search_efficiency",
    }
