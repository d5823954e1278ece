"""`vptsearch monitor`: Ray's scrape config, a real Prometheus started/stopped by pid, the token hint;
a fake Prometheus (classic or new UI) for the printed links; `--stop` (of `monitor` and `ui`) with a
state file that no longer names our server."""

from __future__ import annotations

import calendar
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
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
    ray = _monitor.ray_command()  # the venv's own ray: not on PATH unless the venv is activated
    assert ray == str(Path(sys.executable).parent / "ray") and os.access(ray, os.X_OK)
    assert f"`{ray} get-auth-token`" in local and str(Path.home() / ".ray" / "auth_token") in local
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


# --- a fake Prometheus: the pages of a classic-only (Debian 2.42) or a new-UI server ---------------
FAKE = """#!{python}
import http.server, json, os, sys
port = int([a for a in sys.argv if a.startswith("--web.listen-address=")][0].rsplit(":", 1)[1])
classic = os.environ["FAKE_PROM_UI"] == "classic"
pages = ("/classic/targets", "/classic/graph") if classic else ("/targets", "/graph")
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        path = self.path.split("?")[0]
        if path == "/api/v1/status/buildinfo":
            body = json.dumps({{"status": "success", "data": {{"version": os.environ["FAKE_PROM_VERSION"]}}}})
        elif path == "/-/ready" or path in pages:
            body = "ok"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body.encode())
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


@pytest.fixture()
def fake_prometheus(tmp_path, monkeypatch):
    exe = tmp_path / "bin" / "prometheus"
    exe.parent.mkdir()
    exe.write_text(FAKE.format(python=sys.executable))
    exe.chmod(0o755)
    monkeypatch.setenv("VPTSEARCH_PROMETHEUS", str(exe))
    monkeypatch.chdir(tmp_path)
    return exe


def _links(out: str) -> dict[str, str]:
    return {ln.split(":", 1)[0].strip(): ln.split(":", 1)[1].strip() for ln in out.splitlines()
            if ln.strip().startswith(("targets:", "trials:", "best val:"))}  # fmt: skip


@pytest.mark.parametrize(("ui", "version"), [("classic", "2.42.0+ds"), ("new", "3.5.0")])
def test_printed_links_answer_on_the_classic_and_the_new_ui(ui, version, fake_prometheus, tmp_path,
                                                            monkeypatch, capsys) -> None:  # fmt: skip
    monkeypatch.setenv("FAKE_PROM_UI", ui)
    monkeypatch.setenv("FAKE_PROM_VERSION", version)
    port = _free_port()
    before = time.time()
    args = ["monitor", "--port", str(port), "--ray-temp-dir", str(tmp_path / "ray"), "--graph-window", "6h"]
    assert main(args) == 0
    out = capsys.readouterr().out
    state = tmp_path / ".vptsearch" / "monitor.json"
    try:
        assert f"version {version}" in out
        links = _links(out)
        prefix = "/classic" if ui == "classic" else ""
        assert links["targets"] == f"http://127.0.0.1:{port}{prefix}/targets"
        for name in ("targets", "trials", "best val"):
            with urllib.request.urlopen(links[name], timeout=10) as r:  # no 404 on this server's UI
                assert r.status == 200, name
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(links["trials"]).query)
        assert q["g0.range_input"] == ["6h"] and "ray_vptsearch_trials_completed" in q["g0.expr"][0]
        # the window starts when the launch can (this Prometheus' start): its end is start + 6 h
        end = calendar.timegm(time.strptime(q["g0.end_input"][0], "%Y-%m-%d %H:%M"))  # UTC
        assert before + 6 * 3600 - 60 <= end <= time.time() + 6 * 3600 + 120
        rec = json.loads(state.read_text())
        assert str(fake_prometheus) in rec["cmdline"] and isinstance(rec["started"], int)
    finally:
        assert main(["monitor", "--stop"]) == 0
    assert not state.exists()
    with pytest.raises(OSError):
        os.kill(rec["pid"], 0)


def test_graph_window_is_checked(capsys) -> None:
    assert main(["monitor", "--graph-window", "1h30m", "--prometheus", "no-such"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--graph-window '1h30m'" in err and "12h" in err


def test_graph_url_without_a_start_ends_now() -> None:
    q = urllib.parse.parse_qs(urllib.parse.urlsplit(_monitor.graph_url("http://h:9090", "up")).query)
    assert q == {"g0.expr": ["up"], "g0.tab": ["0"], "g0.range_input": ["1h"]}


def test_launch_start_is_the_running_sessions_start(tmp_path) -> None:
    session = tmp_path / "session_2026-01-02_08-15-00_123456_4242"
    session.mkdir()
    (session / "prom_metrics_service_discovery.json").write_text("[]")
    link = tmp_path / "prom_metrics_service_discovery.json"
    link.symlink_to(session / "prom_metrics_service_discovery.json")
    assert _monitor.launch_start(tmp_path) == time.mktime((2026, 1, 2, 8, 15, 0, 0, 0, -1)) + 0.123456
    old = time.time() - 3600  # an ended session: its dashboard no longer rewrites the file
    os.utime(session / "prom_metrics_service_discovery.json", (old, old))
    assert _monitor.launch_start(tmp_path) is None


def test_an_ended_launchs_targets_are_forgotten(tmp_path) -> None:
    old, new = tmp_path / "session_old", tmp_path / "session_new"
    for d in (old, new):
        d.mkdir()
        (d / "prom_metrics_service_discovery.json").write_text('[{"labels": {"job": "ray"}, "targets": []}]')
    link = tmp_path / "prom_metrics_service_discovery.json"
    link.symlink_to(new / "prom_metrics_service_discovery.json")
    assert _monitor.forget_targets(old, tmp_path) is False and link.is_symlink()  # a newer launch's
    assert _monitor.forget_targets(new, tmp_path) is True and not link.exists() and not link.is_symlink()
    assert (new / "prom_metrics_service_discovery.json").is_file()  # Ray's own file is left
    assert _monitor.forget_targets(new, tmp_path) is False


# --- --stop only ever signals the server the state file recorded ---------------------------------
STATES = {"monitor": Path(".vptsearch") / "monitor.json", "ui": Path(".vptsearch") / "ui.json"}


@pytest.fixture()
def bystander():
    """An unrelated process in its own session (what a reused pid would name)."""
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    yield proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _write_state(tmp_path: Path, command: str, rec: dict) -> Path:
    state = tmp_path / STATES[command]
    state.parent.mkdir(exist_ok=True)
    state.write_text(json.dumps(rec))
    return state


@pytest.mark.parametrize("command", sorted(STATES))
@pytest.mark.parametrize("case", ["pid reused", "no identity recorded", "other command line", "exited",
                                  "not json"])  # fmt: skip
def test_stop_with_a_stale_state_file_kills_nothing(command, case, bystander, tmp_path, monkeypatch,
                                                     capsys) -> None:  # fmt: skip
    from vptsearch.search._processes import identity

    monkeypatch.chdir(tmp_path)
    me = identity(bystander.pid)
    assert me is not None
    rec = {
        "pid reused": {**me, "started": me["started"] - 1},  # the pid, but a process started earlier
        "no identity recorded": {"pid": bystander.pid, "url": "http://127.0.0.1:1"},  # an older vptsearch's
        "other command line": {**me, "cmdline": ["prometheus", "--config.file=x"]},
        "exited": {"pid": 2**22 + 1, "started": 1, "cmdline": ["prometheus"]},
        "not json": None,
    }[case]
    state = _write_state(tmp_path, command, rec) if rec is not None else tmp_path / STATES[command]
    if rec is None:
        state.parent.mkdir(exist_ok=True)
        state.write_text("{not json")
    assert main([command, "--stop"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("vptsearch: error: ") and "\n" not in err and captured.out == ""
    assert str(STATES[command]) in err and "is stale" in err and "stopped nothing" in err
    assert not state.exists()  # removed
    time.sleep(0.2)
    assert bystander.poll() is None  # the unrelated process still runs


@pytest.mark.parametrize("command", sorted(STATES))
def test_stop_with_a_matching_state_file_stops_it(command, bystander, tmp_path, monkeypatch, capsys) -> None:
    from vptsearch.search._processes import write_state

    monkeypatch.chdir(tmp_path)
    (tmp_path / ".vptsearch").mkdir()
    write_state(STATES[command], bystander.pid, url="http://127.0.0.1:1")
    assert main([command, "--stop"]) == 0
    assert f"(pid {bystander.pid})" in capsys.readouterr().out
    with pytest.raises(OSError):  # stopped (and reaped by --stop: this test is its parent)
        os.kill(bystander.pid, 0)
    assert not (tmp_path / STATES[command]).exists()


def test_a_stale_state_file_does_not_block_a_new_monitor(fake_prometheus, bystander, tmp_path,
                                                         monkeypatch, capsys) -> None:  # fmt: skip
    from vptsearch.search._processes import identity

    monkeypatch.setenv("FAKE_PROM_UI", "new")
    monkeypatch.setenv("FAKE_PROM_VERSION", "3.5.0")
    me = identity(bystander.pid)
    assert me is not None
    _write_state(tmp_path, "monitor", {**me, "started": me["started"] - 1})
    assert main(["monitor", "--port", str(_free_port()), "--ray-temp-dir", str(tmp_path / "ray")]) == 0
    capsys.readouterr()
    rec = json.loads((tmp_path / STATES["monitor"]).read_text())
    assert rec["pid"] != bystander.pid
    assert main(["monitor", "--stop"]) == 0
    assert bystander.poll() is None


def test_a_launchs_own_ray_takes_its_scrape_targets_along_when_it_stops() -> None:
    """``Launch.run`` stops the Ray it started with ``_monitor.shutdown_ray``: the discovery link its
    dashboard wrote in Ray's temp dir goes too (Prometheus drops the targets of a file that is
    gone), and nothing writes it again afterwards."""
    import shutil
    import tempfile

    import ray

    if ray.is_initialized():
        ray.shutdown()
    temp = tempfile.mkdtemp(prefix="vr", dir="/tmp")  # short: Ray's socket paths stay under 108 bytes
    link = Path(temp) / "prom_metrics_service_discovery.json"
    try:
        ray.init(num_cpus=1, include_dashboard=True, _temp_dir=temp, log_to_driver=False)
        deadline = time.monotonic() + 60
        while not link.is_symlink() and time.monotonic() < deadline:  # the dashboard writes it
            time.sleep(0.2)
        assert link.is_symlink(), "the dashboard wrote no discovery link"
        session = Path(ray._private.worker._global_node.get_session_dir_path())
        assert _monitor.shutdown_ray() is True and not ray.is_initialized()
        assert not link.exists() and not link.is_symlink()
        time.sleep(6)  # longer than the dashboard's rewrite period: it has exited, the link stays gone
        assert not link.is_symlink() and (session / link.name).is_file()  # Ray's own file is left
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
