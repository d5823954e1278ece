"""`vptsearch ui` serves the launch's MLflow store on 127.0.0.1; headless Chromium sees its task runs."""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
CHROMIUM = "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_ui_shows_task_runs(base_raw, tmp_path, monkeypatch, capsys) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    from vptsearch.cli import main
    from vptsearch.search import launch
    from vptsearch.spec import spec_from_dict

    raw = {
        **base_raw,
        "search": {**base_raw["search"], "trials_per_task": 2},
        "protocol": {"final_seeds": [0]},
    }
    summary = launch(spec_from_dict(raw), dashboard=False, say=lambda *_: None)
    monkeypatch.chdir(tmp_path)  # the UI's pid file lives in ./.vptsearch
    port = _free_port()
    assert main(["ui", "--tracking-uri", summary.tracking_uri, "--port", str(port)]) == 0
    out = capsys.readouterr().out
    page = out.split("MLflow UI: ")[1].split()[0]
    assert page.startswith(f"http://127.0.0.1:{port}/#/experiments/") and "/runs?" in page
    pid = json.loads((tmp_path / ".vptsearch" / "ui.json").read_text())["pid"]
    try:
        with playwright.sync_playwright() as p:
            flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
            browser = p.chromium.launch(executable_path=CHROMIUM, args=flags)
            tab = browser.new_page()
            tab.goto(page)  # the printed link opens the launch's runs table
            for task in ("mini/digits", "mini/textures"):
                tab.get_by_text(task).first.wait_for(timeout=30_000)
            browser.close()
    finally:
        assert main(["ui", "--stop"]) == 0
    with pytest.raises(OSError):
        os.kill(pid, 0)  # our server is gone


def test_ui_serves_the_store_and_stops_only_its_own_server(tmp_path, monkeypatch, capsys) -> None:
    from vptsearch.cli import main
    from vptsearch.search._tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "smoke", None, "smoke/1")
    tracker.task_run("mini/digits", "natural")
    monkeypatch.chdir(tmp_path)
    port = _free_port()
    assert main(["ui", "--tracking-uri", uri, "--port", str(port)]) == 0
    state = json.loads((tmp_path / ".vptsearch" / "ui.json").read_text())
    # what --stop checks before signalling (a pid alone may name another process by then)
    assert isinstance(state["started"], int) and "mlflow" in state["cmdline"] and "ui" in state["cmdline"]
    try:
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=smoke"
        with urllib.request.urlopen(url, timeout=10) as r:
            assert json.load(r)["experiment"]["name"] == "smoke"
        assert main(["ui", "--tracking-uri", uri, "--port", str(port)]) == 2  # one at a time
    finally:
        assert main(["ui", "--stop"]) == 0
    time.sleep(1)
    with pytest.raises(OSError):
        os.kill(state["pid"], 0)
    assert not (tmp_path / ".vptsearch" / "ui.json").exists()
