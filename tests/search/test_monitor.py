"""`vptsearch monitor`: Ray's scrape config, a real Prometheus started/stopped by pid, the token hint."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import yaml

from vptsearch.cli import main
from vptsearch.search import _monitor


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_config_is_rays_template_on_the_temp_dir_discovery_file(tmp_path) -> None:
    from ray.dashboard.consts import PROMETHEUS_CONFIG_INPUT_PATH

    rays = yaml.safe_load(Path(PROMETHEUS_CONFIG_INPUT_PATH).read_text())  # `ray metrics launch-prometheus`'s
    ours = _monitor.prometheus_config("/tmp/ray")
    for conf in (rays, ours):
        for sd in conf["scrape_configs"][0]["file_sd_configs"]:
            sd.pop("refresh_interval", None)
    assert ours == rays
    conf = _monitor.prometheus_config(tmp_path, scrape_interval="2s")
    assert conf["scrape_configs"][0]["file_sd_configs"][0]["files"] == [
        str(tmp_path / "prom_metrics_service_discovery.json")
    ]
    assert conf["global"]["scrape_interval"] == "2s"


def test_print_config_and_bad_input(capsys, tmp_path, monkeypatch) -> None:
    assert main(["monitor", "--print-config", "--ray-temp-dir", str(tmp_path)]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == _monitor.prometheus_config(tmp_path)
    assert main(["monitor", "--print-config", "--scrape-interval", "ten"]) == 2
    assert "--scrape-interval 'ten'" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    assert main(["monitor", "--prometheus", "no-such-prometheus", "--port", str(_free_port())]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no Prometheus binary 'no-such-prometheus'" in err


def test_token_hint_names_rays_token_source(monkeypatch) -> None:
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    local = _monitor.token_hint(joined=False)
    assert "`ray get-auth-token`" in local and str(Path.home() / ".ray" / "auth_token") in local
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", "/etc/ray/token")
    assert "/etc/ray/token" in _monitor.token_hint(joined=True)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "secret-value")  # Ray's order: the variable wins
    joined = _monitor.token_hint(joined=True)
    assert "$RAY_AUTH_TOKEN" in joined and "secret-value" not in joined and "cluster" in joined


def test_writes_rays_generated_grafana_dashboards(tmp_path) -> None:
    paths = _monitor.write_ray_dashboards(tmp_path)
    default = json.loads((tmp_path / "default_grafana_dashboard.json").read_text())
    assert default["uid"] == "rayDefaultDashboard" and len(paths) >= 2


@pytest.mark.skipif(_monitor.find_prometheus() is None, reason="no prometheus binary on PATH")
def test_monitor_starts_prometheus_on_loopback_and_stops_only_it(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    port = _free_port()
    assert main(["monitor", "--port", str(port), "--ray-temp-dir", str(tmp_path / "ray")]) == 0
    out = capsys.readouterr().out
    assert f"Prometheus: http://127.0.0.1:{port}" in out and "ray_vptsearch_trials_completed" in out
    assert "RAY_PROMETHEUS_HOST" in out  # not the default port: the launch must be told
    pid = json.loads((tmp_path / ".vptsearch" / "monitor.json").read_text())["pid"]
    try:
        assert _monitor.query(f"http://127.0.0.1:{port}", "vector(1)")[0]["value"][1] == "1"
        assert main(["monitor", "--port", str(_free_port())]) == 2  # one per folder
    finally:
        assert main(["monitor", "--stop"]) == 0
    with pytest.raises(OSError):
        os.kill(pid, 0)
