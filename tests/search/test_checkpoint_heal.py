"""A snapshot naming a checkpoint Tune already pruned: the trial's newer checkpoint takes its place."""

from __future__ import annotations

from pathlib import Path

from ray import tune

from vptsearch.search._trainable import heal_pruned_checkpoint


def _ckpt(trial: Path, name: str, payload: bytes) -> Path:
    d = trial / name
    d.mkdir(parents=True)
    (d / "state.pt").write_bytes(payload)
    return d


def test_missing_checkpoint_is_replaced_by_the_newest_sibling(tmp_path) -> None:
    trial = tmp_path / "trial_0001"
    _ckpt(trial, "checkpoint_000002", b"epoch 3")
    _ckpt(trial, "checkpoint_000003", b"epoch 4")  # left over: both newer than the expected one
    expected = trial / "checkpoint_000001"
    assert heal_pruned_checkpoint(tune.Checkpoint.from_directory(str(expected))) is True
    assert (expected / "state.pt").read_bytes() == b"epoch 4"  # the newest, not merely a newer one
    assert not (trial / "checkpoint_000003").exists()  # moved, not copied: nothing left unpruned
    assert (trial / "checkpoint_000002").exists()


def test_existing_or_unrecoverable_checkpoints_are_left_alone(tmp_path) -> None:
    trial = tmp_path / "trial_0002"
    present = _ckpt(trial, "checkpoint_000004", b"epoch 5")
    assert heal_pruned_checkpoint(tune.Checkpoint.from_directory(str(present))) is False
    assert (present / "state.pt").read_bytes() == b"epoch 5"
    # Only older checkpoints around: restoring those would repeat epochs the snapshot already counted.
    missing = trial / "checkpoint_000009"
    assert heal_pruned_checkpoint(tune.Checkpoint.from_directory(str(missing))) is False
    assert not missing.exists()
    assert heal_pruned_checkpoint(tune.Checkpoint.from_directory(str(tmp_path / "gone" / "x"))) is False
