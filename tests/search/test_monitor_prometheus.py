"""A real Prometheus (Debian's package) on 127.0.0.1 with the scrape config vptsearch generates for a
local Ray reads back the launch's vptsearch metrics, equal to results.json."""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import time
from pathlib import Path

import pytest

from vptsearch.search import _monitor
from vptsearch.search._metrics import NAMES
from vptsearch.spec import spec_from_dict

from .conftest import TASKS

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(_monitor.find_prometheus() is None,
                    reason="no prometheus binary on PATH (Debian: apt-get install prometheus)")  # fmt: skip
def test_prometheus_reads_the_launch_metrics(base_raw, tmp_path) -> None:
    import ray

    from vptsearch.search import launch

    raw = {**base_raw, "search": {**base_raw["search"], "trials_per_task": 3},
           "training": {"epochs": 2, "warmup_epochs": 1, "batch_size": 64},
           "protocol": {"final_seeds": [0]}}  # fmt: skip
    if ray.is_initialized():
        ray.shutdown()
    # A temp dir of our own (short: Ray's socket paths must stay under 108 bytes), so another Ray on
    # this machine cannot re-point the discovery link Prometheus reads.
    temp = tempfile.mkdtemp(prefix="vr", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=True, _temp_dir=temp, _metrics_export_port=_free_port(),
             log_to_driver=False)  # fmt: skip
    prom = _monitor.start_prometheus(tmp_path / "prom", _free_port(), temp_dir=temp, scrape_interval="1s",
                                     refresh_interval="2s")  # fmt: skip
    try:
        assert prom.url.startswith("http://127.0.0.1:")
        summary = launch(spec_from_dict(raw), dashboard=True, say=lambda *_: None)
        results = json.loads((summary.run_dir / "results.json").read_text())
        want: dict[tuple[str, str], float] = {}
        for task in TASKS:
            want[(NAMES["completed"], task)] = results["tasks"][task]["counts"].get("completed", 0)
            best = results["tasks"][task]["best"]
            if best is not None:
                want[(NAMES["best_val_acc"], task)] = best["val_acc"]
        assert any(k[0] == NAMES["best_val_acc"] for k in want)

        def read() -> dict[tuple[str, str], float]:
            got = {}
            for name, task in want:
                rows = _monitor.query(prom.url, f'ray_{name}{{task="{task}",phase="search"}}')
                if rows:
                    got[(name, task)] = float(rows[0]["value"][1])
            return got

        got: dict = {}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            got = read()
            if got == pytest.approx(want):
                break
            time.sleep(2)
        assert got == pytest.approx(want)

        # The Grafana dashboard's queries are valid PromQL and chart this launch.
        board = Path(__file__).parents[2] / "docker" / "grafana" / "dashboards" / "vptsearch.json"
        dash = json.loads(board.read_text())
        for panel in dash["panels"]:
            for target in panel["targets"]:
                rows = _monitor.query(prom.url, target["expr"].replace("$task", ".+"))
                assert rows, (panel["title"], target["expr"])
    finally:
        _monitor.stop_group(prom.pid)
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    with pytest.raises(OSError):
        _monitor.query(prom.url, "vector(1)", timeout=2)  # our Prometheus is gone
