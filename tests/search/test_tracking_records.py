"""The spool's typed records keep the on-disk format, and run look-ups survive quotes in names.

Real sqlite MLflow stores, no mocks (~2 s each for MLflow's schema set-up).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from vptsearch.search._records import (
    ArtifactRecord,
    EndRecord,
    LogRecord,
    MetricPoint,
    PruneRecord,
    RunRecord,
    record_from_json,
    run_ref,
)
from vptsearch.search._spool import SPOOL_FILE, read_records
from vptsearch.search._tracking import Tracker
from vptsearch.search._tracking_store import tag_filter

TRIAL = run_ref({"vptsearch.trial_id": "exp/1/search/0"})
TASK = run_ref({"vptsearch.kind": "task", "vptsearch.launch": "exp/1", "vptsearch.task": "mini/digits"})
# What the spool held before its records were typed: an existing spool must still replay.
LINES = [
    '{"op":"run","ref":"{\\"vptsearch.trial_id\\":\\"exp/1/search/0\\"}","name":"trial-0","tags":'
    '{"vptsearch.kind":"trial","vptsearch.seed":"0","vptsearch.trial_id":"exp/1/search/0"},"parent":'
    '"{\\"vptsearch.kind\\":\\"task\\",\\"vptsearch.launch\\":\\"exp/1\\",\\"vptsearch.task\\":\\"mini/digits\\"}",'
    '"new":true}',
    '{"op":"log","ref":"{\\"vptsearch.trial_id\\":\\"exp/1/search/0\\"}","params":{"optim.base_lr":"0.5"}}',
    '{"op":"log","ref":"{\\"vptsearch.trial_id\\":\\"exp/1/search/0\\"}","metrics":[["val_acc",0.5,1700000000123,2]]}',
    '{"op":"log","ref":"{\\"vptsearch.trial_id\\":\\"exp/1/search/0\\"}","metrics":[]}',
    '{"op":"log","ref":"{\\"vptsearch.trial_id\\":\\"exp/1/search/0\\"}","params":{"a":"1"},"metrics":'
    '[["m",1.0,1700000000123,3]],"tags":{"b":"2"}}',
    '{"op":"end","ref":"{\\"vptsearch.trial_id\\":\\"exp/1/search/0\\"}","status":"FAILED"}',
    '{"op":"prune","ref":"","match":{"vptsearch.launch":"exp/1","vptsearch.kind":"trial"},"key":'
    '"vptsearch.trial_id","keep":["exp/1/search/0"]}',
    '{"op":"artifact","ref":"{\\"vptsearch.trial_id\\":\\"exp/1/search/0\\"}","path":"/x/tracking.json",'
    '"artifact_path":null}',
]


def test_records_read_and_write_the_spool_format_unchanged() -> None:
    records = [record_from_json(json.loads(line)) for line in LINES]
    assert records == [
        RunRecord(TRIAL, "trial-0", {"vptsearch.kind": "trial", "vptsearch.seed": "0",
                                     "vptsearch.trial_id": "exp/1/search/0"}, TASK, True),
        LogRecord(TRIAL, params={"optim.base_lr": "0.5"}),
        LogRecord(TRIAL, metrics=[MetricPoint("val_acc", 0.5, 1700000000123, 2)]),
        LogRecord(TRIAL, metrics=[]),
        LogRecord(TRIAL, {"a": "1"}, [MetricPoint("m", 1.0, 1700000000123, 3)], {"b": "2"}),
        EndRecord(TRIAL, "FAILED"),
        PruneRecord({"vptsearch.launch": "exp/1", "vptsearch.kind": "trial"}, "vptsearch.trial_id",
                    ["exp/1/search/0"]),
        ArtifactRecord(TRIAL, "/x/tracking.json"),
    ]  # fmt: skip
    assert [json.dumps(r.to_json(), separators=(",", ":")) for r in records] == LINES


def test_tracker_writes_the_spool_format_unchanged(tmp_path: Path, monkeypatch) -> None:
    import time

    monkeypatch.setattr(time, "time", lambda: 1700000000.123)
    t = Tracker(f"sqlite:///{tmp_path / 'a.db'}", "exp", None, "exp/1", run_dir=tmp_path)
    task = t.task_run("mini/digits", "natural")
    assert task == TASK
    key = {"trial_id": "exp/1/search/0"}
    ref = t.run("trial-0", {"kind": "trial", "seed": 0}, key, parent=task, new=True)
    t.log_params_once(ref, {"optim.base_lr": 0.5})
    t.log_metrics(ref, {"val_acc": 0.5, "test_acc": None}, step=2)
    t.log_metrics(ref, {"test_acc": None})  # given, all None: an empty write, as before
    t.log(ref, params={"a": 1}, metrics={"m": 1}, tags={"b": 2}, step=3)
    t.set_tags(ref, {})  # nothing given: nothing written
    t.end(ref, "FAILED")
    assert t.close() == 0
    lines = (tmp_path / SPOOL_FILE).read_text().splitlines()
    assert lines[1:] == LINES[:6]


def test_an_unknown_op_is_named() -> None:
    with pytest.raises(ValueError, match="unknown op 'rename'"):
        record_from_json({"op": "rename", "ref": ""})


def test_tag_filter_quotes_each_value_so_mlflow_reads_it_back() -> None:
    assert tag_filter({"vptsearch.kind": "task", "vptsearch.task": "mini/digits"}) == (
        "tags.`vptsearch.kind` = 'task' and tags.`vptsearch.task` = 'mini/digits'"
    )
    assert tag_filter({"vptsearch.task": "it's"}) == "tags.`vptsearch.task` = \"it's\""
    assert tag_filter({"vptsearch.task": "say \"it's\""}) == "tags.`vptsearch.task` LIKE 'say _it_s_'"
    with pytest.raises(ValueError, match="tag key 'a`b'"):
        tag_filter({"a`b": "x"})


@pytest.mark.parametrize("name", ["o'brien/digits", 'say "it\'s"/digits'])
def test_runs_named_with_quotes_are_found_again_not_duplicated(tmp_path: Path, name: str) -> None:
    """A task (and so a launch id and trial ids) with quotes in its name: a resumed launch finds
    its runs by their tags instead of failing on the filter or creating them twice; prune keeps
    the trials it is told to keep."""
    uri = f"sqlite:///{tmp_path / 'a.db'}"
    launch = f"{name}/1"
    for _ in range(2):  # the second Tracker is a resumed launch: it must find every run
        t = Tracker(uri, "exp", None, launch)
        task = t.task_run(name, "natural")
        for i in range(2):
            t.run(f"trial-{i}", {"kind": "trial", "phase": "search", "launch": launch},
                  {"trial_id": f"{launch}/search/{i}"}, parent=task)  # fmt: skip
    assert t.applier.counts["runs_found"] == 3 and t.applier.counts.get("runs_created", 0) == 0
    t.prune({"launch": launch, "kind": "trial", "phase": "search"}, "trial_id", [f"{launch}/search/1"])
    assert t.applier.counts["runs_deleted"] == 1
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("exp").experiment_id
    names = sorted(r.info.run_name for r in c.search_runs([exp], max_results=100))
    assert names == sorted([name, "trial-1"])


def test_a_look_alike_name_is_not_taken_for_a_name_with_both_quotes(tmp_path: Path) -> None:
    """Both quote kinds in a value: the filter is a LIKE (a quote matches any one character), and
    only the exact value counts."""
    t = Tracker(f"sqlite:///{tmp_path / 'a.db'}", "exp", None, "exp/1")
    first = t.task_run("say _it_s_", "natural")
    second = t.task_run('say "it\'s"', "natural")
    assert first != second and t.applier.counts["runs_created"] == 2
    assert t.run_id(first) != t.run_id(second)
    again = Tracker(f"sqlite:///{tmp_path / 'a.db'}", "exp", None, "exp/1")
    again.task_run('say "it\'s"', "natural")
    assert again.run_id(second) == t.run_id(second) and again.applier.counts["runs_found"] == 1


def test_read_records_yields_typed_records(tmp_path: Path) -> None:
    (tmp_path / SPOOL_FILE).write_text("\n".join(LINES) + "\n" + LINES[0][:20])  # a torn last line
    got = [rec for _, rec in read_records(tmp_path / SPOOL_FILE)]
    assert len(got) == len(LINES) and isinstance(got[0], RunRecord) and isinstance(got[-1], ArtifactRecord)


def test_an_unpickled_callback_writes_through_the_launchs_open_tracker(tmp_path: Path) -> None:
    """Tune unpickles callbacks on --resume: theirs must be the launch's Tracker (one spool writer),
    and once it is closed a callback opens a Tracker of its own."""
    import pickle

    from vptsearch.search._tracking import TrackingCallback

    uri = f"sqlite:///{tmp_path / 'a.db'}"
    t = Tracker(uri, "exp", None, "exp/1", run_dir=tmp_path)
    cb = TrackingCallback(uri, "exp", None, "exp/1", {}, 2, resume=False, run_dir=tmp_path)
    restored = pickle.loads(pickle.dumps(cb))
    assert restored.resume and restored.tracker is t and Tracker.of_run_dir(tmp_path) is t
    assert t.close() == 0 and Tracker.of_run_dir(tmp_path) is None
    again = pickle.loads(pickle.dumps(cb)).tracker
    assert again is not t and Tracker.of_run_dir(tmp_path) is again
    assert again.close() == 0
