"""benchmarks/gpu_check.py without a GPU: one JSON saying it skipped, exit 0; its task and space are valid."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

GPU_CHECK = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def test_without_cuda_prints_one_skipped_json(run_benchmark, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on a GPU machine
    r = run_benchmark("gpu_check", [])
    captured = capsys.readouterr()
    assert json.loads(captured.out) == r
    assert r["benchmark"] == "gpu_check" and r["skipped"] == "no CUDA device"
    assert "speed" not in r and "launch_smoke" not in r
    assert "no CUDA device" in captured.err


def test_script_exits_cleanly_on_this_machine():
    import torch

    if torch.cuda.is_available():  # the skip path is tested above; here: the script as users run it
        return
    out = subprocess.run([sys.executable, str(GPU_CHECK), "--no-launch"], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout)["skipped"] == "no CUDA device"
    assert "Traceback" not in out.stderr


def _module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", GPU_CHECK)
    assert spec is not None and spec.loader is not None
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


def test_synthetic_task_and_space_are_what_the_gpu_run_reads(tmp_path):
    """The task is written with the shard writer (readable by load_split); the launch space is valid."""
    from vptsearch.data import load_split, read_manifest
    from vptsearch.spec import spec_from_dict

    m = _module()
    name = m.write_synthetic_task(tmp_path / "data", images=4)
    x, y = load_split(name, "train800", tmp_path / "data")
    assert tuple(x.shape) == (4, 3, 224, 224) and str(x.dtype) == "torch.uint8" and int(y.max()) < 10
    assert read_manifest(name, tmp_path / "data").task.num_classes == 10
    spec = spec_from_dict(m._spec_raw(tmp_path, tmp_path / "data"))
    assert spec.backbone.name == "vit_base_patch16_224" and spec.backbone.weights == "none"
    assert list(spec.suite) == [name] and spec.resources.gpu == 0.5
    assert spec.training.precision == "auto"  # bf16 on cuda
    trial = spec_from_dict(m._spec_raw(tmp_path, tmp_path / "data", epochs=2))
    assert trial.training.epochs == 2 and trial.scheduler.grace_period == 1
