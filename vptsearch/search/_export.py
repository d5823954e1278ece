"""Export a launch's bundles: one folder per task from its final seeds' saved weights.

The launch hands its :class:`~vptsearch.search._results.LaunchResults` over in process;
``vptsearch export`` loads them from the run dir's results.json. Where the folders go (one per
launch stamp, ``LATEST``) is :mod:`vptsearch.search._exports`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vptsearch import __version__
from vptsearch._errors import DataError
from vptsearch._training import resolve_precision
from vptsearch._trial_config import TrialConfig
from vptsearch.data import get_task, read_manifest
from vptsearch.search import _bundle
from vptsearch.search._exports import check_export_dir, point_latest, point_latest_remote
from vptsearch.search._results import LaunchResults, TaskResult
from vptsearch.search._rundir import SPEC_FILE, safe_leaf
from vptsearch.search._storage import filesystem, is_uri, upload
from vptsearch.spec import SearchSpec, read_yaml, spec_from_dict
from vptsearch.train import get_backbone, model_options

log = logging.getLogger(__name__)


def bundle_meta(
    spec: SearchSpec, task: str, result: TaskResult, backbone: Any, *, launch_id: str, run_dir: Path
) -> dict[str, Any]:
    """``bundle.json`` content of one task (see docs/search.md, bundle contract).

    Every final seed that completed with saved weights becomes a member (the exported seed first).
    """
    info = get_task(task, spec.data_root)
    best = result.best
    assert best is not None and result.exported_seed is not None  # only exported tasks get a bundle
    cfg = best.config
    trial = TrialConfig.from_sampled(cfg, spec.training)  # the defaults run_trial filled in
    method = trial.method
    b = spec.backbone
    name = str(Path(b.name).resolve()) if Path(b.name).is_file() else b.name
    exported = result.exported_seed
    seeds = result.member_seeds()
    accs = {str(s): acc for s, acc in result.test_accs.items()}
    members = [{"seed": s, "file": _bundle.member_file(s, s == exported), "test_accuracy": accs[str(s)]}
               for s in seeds]  # fmt: skip
    options = model_options(trial, spec)
    return {
        "task": task,
        "group": info.group,
        "num_classes": info.num_classes,
        "class_names": list(read_manifest(task, spec.data_root).class_names),
        "backbone": _bundle.backbone_record(backbone, name, b.weights),
        "image_size": spec.training.image_size or backbone.image_size,
        "preprocessing": info.preprocessing,  # vtab: resize; fgvc: resize 256/224 + centre crop
        "mean": list(backbone.mean),
        "std": list(backbone.std),
        "method": method,
        "method_options": options,
        # how the winner's head started and trained (not build options: the bundle's tensors are
        # the trained head; recorded so a bundle says which recipe produced it)
        "head": {
            "norm": options.get("head_norm", "none"),
            "init": trial.head_init,
            "lr_scale": trial.head_lr_scale,
            "refit": trial.head_refit,
        },
        "prompt": (
            {"depth": trial.prompt.depth, "length": trial.prompt.length, "init": trial.prompt.init}
            if trial.prompt is not None
            else None
        ),
        "hyperparameters": cfg,
        "training": dataclasses.asdict(spec.training),
        "seeds": result.seeds,
        "exported_seed": exported,
        "members": members,
        "ensemble": {
            "seeds": seeds,
            "combine": "mean of the members' logits",
            "test_accuracy": result.ensemble_test_acc,
        },
        "val_accuracy": best.val_acc,
        "test_accuracy": accs[str(exported)],
        "test_accuracies": accs,
        "test_mean": result.test_mean,
        "test_std": result.test_std,
        "tuned_percent": best.tuned_percent,
        "launch": launch_id,
        "run_dir": str(run_dir),
        "vptsearch_version": __version__,
    }


def export_bundles(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    results: LaunchResults | None = None,
    spec: SearchSpec | None = None,
    say: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    """(Re-)export the bundle of every task of a finished launch; ``{task: bundle folder}``.

    Bundles go to ``<export dir>/<launch stamp>/<suite>__<task>/`` and ``<export dir>/LATEST``
    (plus a ``latest`` symlink when local) names the newest launch there (see _exports), so a
    second launch never overwrites the first. A bundle of several final seeds gets its ensemble
    test accuracy here, once, by evaluating the written bundle on the test split in this process;
    it is stored in results.json (task ``ensemble_test_acc``, row ``ensemble_test``) and in
    bundle.json, and reused by later re-exports. ``results``: the launch's results (loaded from
    the run dir's results.json when omitted), updated in place; results.json is rewritten when
    export added to them. ``spec``: the launch's spec (read from the run dir's spec.yaml when
    omitted: what a re-export after the launch does).

    An ``s3://`` (or other pyarrow URI) export dir gets the bundles written under
    ``<run_dir>/export/<stamp>`` first, then copied there; the returned paths are the local copies.
    """
    run_dir = Path(run_dir)
    say = say or log.info
    if spec is None:
        spec = spec_from_dict(read_yaml(run_dir / SPEC_FILE))
    if results is None:
        results = LaunchResults.load(run_dir)
    dest = str(out_dir or spec.export_dir)
    # the launch's own folder name, resolved: `--run-dir runs/x/<stamp>/..` must not make the stamp `..`
    stamp = safe_leaf(run_dir.resolve().name, "launch stamp")
    remote = is_uri(dest)
    base = run_dir / "export" if remote else check_export_dir(dest)
    out = base / stamp
    backbone = get_backbone(spec)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = resolve_precision(spec.training.precision, torch.device(device))
    bundles: dict[str, Path] = {}
    changed = False
    for task, res in results.tasks.items():
        if res.exported_seed is None:
            continue
        states = {s: _final_weights(res, s, run_dir) for s in res.member_seeds()}
        meta = bundle_meta(spec, task, res, backbone, launch_id=results.launch_id, run_dir=run_dir)
        bundles[task] = _bundle.write_bundle(out / _bundle.task_dirname(task), states, meta)
        if len(states) > 1 and res.ensemble_test_acc is None:
            say(f"  {task}: testing the {len(states)}-seed ensemble of the written bundle ...")
            res.ensemble_test_acc = _bundle.evaluate_bundle(
                bundles[task], root=spec.data_root, device=device, precision=precision
            )
            changed = True
        if len(states) > 1:
            meta["ensemble"]["test_accuracy"] = res.ensemble_test_acc
            _bundle.write_meta(bundles[task], meta)
        res.bundled = True
    where = f"{dest.rstrip('/')}/{stamp}" if remote else str(out)
    if bundles:
        if remote:
            upload(out, where)
            fs, path = filesystem(dest)
            point_latest_remote(fs, path, stamp)
        else:
            point_latest(base, stamp)
        changed = changed or results.bundles_dir != where
        results.bundles_dir = where
    if changed:  # cached for `vptsearch report` and later re-exports (computed once)
        results.save(run_dir)
    return bundles


def bundles_line(results: LaunchResults, n: int) -> str:
    """Where this launch's bundles are, and the ``latest`` path that reaches them (see _exports)."""
    where = results.bundles_dir
    if not where:
        return f"bundles: none ({n} task(s) exported)"
    latest = where.rsplit("/", 1)[0] + "/latest"
    return f"bundles: {where}  ({n} task(s)); newest launch: {latest}/<suite>__<task>"


def _final_weights(res: TaskResult, seed: int, run_dir: Path) -> dict[str, Any]:
    path = Path(res.final[seed].weights or "")
    if not path.is_file():
        raise DataError(
            f"final weights {path} of seed {seed} are missing; the launch's {run_dir / 'final'} "
            f"folder must be kept to export (or rerun `vptsearch launch --resume`)"
        )
    return _bundle.read_tensors(path)
