"""Did the reproduction's winners converge? Their learning curves at the reproduction's budget and longer.

    .venv/bin/python pipelines/repro_convergence.py            # the cells below, 15 and 60 epochs
    .venv/bin/python pipelines/repro_convergence.py --long 30  # a shorter long budget
    .venv/bin/python pipelines/repro_convergence.py --head-only  # the linear cells' head on cached features
    .venv/bin/python pipelines/repro_convergence.py --list     # what is measured / still to do

The reproduction (``pipelines/reproduce.py``) trains every trial for 15 epochs. On the structured
tasks several winners test far below the frozen-feature probe, even the ``linear`` row, whose model
class contains the probe's (a standardised linear classifier: BatchNorm without affine + linear).
This script retrains the winning configuration of such cells (method, lr and every other key read
from the launch record) with the search protocol (train800 -> val200, seed 0), once at the
reproduction's budget and once at a longer one (same warm-up, cosine over the longer run), and
records both validation curves beside the probe's val accuracy: a cell that closes the gap with
more epochs was under-trained at 15 epochs, one that does not has another cause.

``--head-only`` asks how long the linear cells would need: the head alone, on the frozen features
computed once (the probe's features, standardised exactly with train800's statistics instead of
BatchNorm's batch statistics), trained with the winner's SGD recipe (lr = base x batch/256, momentum
0.9, cosine without warm-up, batch 32) for 15 to 1 500 epochs, in seconds rather than hours.

Output: ``docs/results/convergence.json`` (one entry per cell and budget; cells already there are
skipped, so the run continues after a stop). ``pipelines/reproduce.py --report-only`` renders it
in docs/results.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _repro_plan import BACKBONES, FULL, Launch, spec_dict

ROOT = Path(__file__).resolve().parent.parent
RECORDS = ROOT / "docs" / "results" / "launches"
OUT = ROOT / "docs" / "results" / "convergence.json"

# (launch record, task): the linear rows on the tasks whose probe wants almost no regularisation
# (C = 10, the grid's end: large weights, which SGD reaches slowly), and VPT-deep where it sits
# furthest under the probe or under linear.
CELLS: tuple[tuple[str, str], ...] = (
    ("repro_main_mae_linear", "mini/dsprites_loc"),
    ("repro_main_sup_linear", "mini/dsprites_loc"),
    ("repro_main_mae_linear", "mini/dsprites_ori"),
    ("repro_main_mae_vpt_deep", "mini/dsprites_loc"),
    ("repro_main_sup_vpt_deep", "mini/dsprites_loc"),
    ("repro_main_sup_vpt_deep", "mini/digits"),
)


HEAD_EPOCHS = (15, 60, 300, 1500)


def cell_id(launch: str, task: str, epochs: int) -> str:
    return f"{launch}:{task}:{epochs}"


def head_cell_id(launch: str, task: str, epochs: int) -> str:
    return f"head:{launch}:{task}:{epochs}"


def backbone_of(launch: str) -> str:
    """The BACKBONES key in a main-study launch name: ``repro_main_<backbone>_<variant>``."""
    return launch.split("_")[2]


def winner(launch: str, task: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The launch record's winning config, its search val accuracy and the task's probe."""
    path = RECORDS / f"{launch}.json"
    if not path.exists():
        raise SystemExit(f"no launch record {path}: run pipelines/reproduce.py first "
                         "(it writes one per finished launch)")
    rec = json.loads(path.read_text())
    tasks = rec["results"]["tasks"]
    if task not in tasks:
        raise SystemExit(f"{path} has no task {task!r}; it has {sorted(tasks)}")
    entry = tasks[task]
    return dict(entry["best"]["config"]), entry["best"], entry.get("probe") or {}


def measure(launch: str, task: str, epochs: int, threads: int) -> dict[str, Any]:
    from vptsearch.spec import spec_from_dict
    from vptsearch.train import ListReporter, run_trial

    config, best, probe = winner(launch, task)
    backbone = backbone_of(launch)
    sizes = dataclasses.replace(FULL, epochs=epochs)
    params = {k: v for k, v in config.items() if k != "method"}
    lc = Launch("main", backbone, config["method"], config["method"], params, (task,),
                (config["optim.base_lr"],))
    run_dir = str(ROOT / "runs" / "convergence")
    raw = spec_dict(lc, sizes, run_dir=run_dir, tracking_uri=f"sqlite:///{run_dir}/unused.db",
                    experiment="convergence")
    raw["params"] = params  # exactly the winner's keys (spec_dict would add the lr grid)
    rep = ListReporter()
    t0 = time.time()
    res = run_trial(dict(config), task=task, spec=spec_from_dict(raw), reporter=rep, threads=threads)
    val = [round(float(r["val_acc"]), 4) for r in rep.results]
    last3 = sum(val[-3:]) / len(val[-3:])
    final = rep.results[-1]
    return {
        "launch": launch, "task": task, "epochs": epochs, "warmup_epochs": sizes.warmup_epochs,
        "config": config, "status": res.status, "val_curve": val, "val_last3": round(last3, 4),
        "val_best": max(val), "train_acc_last": round(float(final.get("train_acc", float("nan"))), 4),
        "train_loss_last": round(float(final.get("train_loss", float("nan"))), 4),
        "record_val": best.get("val_acc"), "probe_val": probe.get("val_acc"), "probe_C": probe.get("C"),
        "seconds": round(time.time() - t0, 1),
    }


def head_only(launch: str, task: str, epochs_grid: tuple[int, ...] = HEAD_EPOCHS) -> list[dict[str, Any]]:
    """The linear winner's head trained on cached, exactly standardised features (see the docstring)."""
    import torch
    import torch.nn.functional as F

    from vptsearch.data import get_task
    from vptsearch.models import build_model, load_backbone
    from vptsearch.probe import fit_score, split_features

    config, _, probe = winner(launch, task)
    if config["method"] != "linear":
        raise SystemExit(f"--head-only: {launch} is method {config['method']!r}; only linear cells qualify")
    bb = load_backbone(BACKBONES[backbone_of(launch)])
    info = get_task(task)
    model = build_model(bb, info.num_classes, method="linear")
    train, val = (split_features(model, task, s, root=None, image_size=bb.image_size, mean=bb.mean,
                                 std=bb.std) for s in info.search_splits)
    mu, sd = train[0].mean(0), train[0].std(0)
    x, xv = (train[0] - mu) / sd, (val[0] - mu) / sd
    batch = FULL.batch_size
    lr = config["optim.base_lr"] * batch / 256
    weak = fit_score(train, val, C=1e4)  # the probe's classifier almost unregularised
    out = []
    for epochs in epochs_grid:
        torch.manual_seed(0)
        head = torch.nn.Linear(x.shape[1], info.num_classes)
        opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9)
        steps_per_epoch = len(x) // batch
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps_per_epoch)
        t0 = time.time()
        for _ in range(epochs):
            perm = torch.randperm(len(x))
            for i in range(steps_per_epoch):
                idx = perm[i * batch:(i + 1) * batch]
                loss = F.cross_entropy(head(x[idx]), train[1][idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        with torch.no_grad():
            out.append({
                "kind": "head_only", "launch": launch, "task": task, "epochs": epochs, "lr": lr,
                "val_acc": round(float((head(xv).argmax(1) == val[1]).float().mean()), 4),
                "train_acc": round(float((head(x).argmax(1) == train[1]).float().mean()), 4),
                "train_loss": round(float(F.cross_entropy(head(x), train[1])), 4),
                "weight_norm": round(float(head.weight.norm()), 1),
                "probe_val": probe.get("val_acc"), "probe_C": probe.get("C"), "probe_val_C1e4": weak,
                "seconds": round(time.time() - t0, 1),
            })
    return out


def load() -> dict[str, Any]:
    return json.loads(OUT.read_text()) if OUT.exists() else {}


def save(done: dict[str, Any]) -> None:
    """Merge ``done`` into the file (another invocation may have added entries meanwhile)."""
    merged = {**load(), **done}
    tmp = OUT.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(merged, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, OUT)  # atomic: a stop mid-write keeps the previous file


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--long", type=int, default=60, help="the longer budget in epochs (default 60)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per trial (default 1)")
    ap.add_argument("--head-only", action="store_true",
                    help="train the linear cells' head on cached features for 15..1500 epochs (seconds)")
    ap.add_argument("--list", action="store_true", help="print the cells and which are done; run nothing")
    args = ap.parse_args(argv)
    if args.long <= FULL.epochs:
        ap.error(f"--long {args.long}: must exceed the reproduction's {FULL.epochs} epochs")
    done = load()
    if args.head_only:
        for lnch, t in CELLS:
            if lnch.endswith("_linear") and head_cell_id(lnch, t, HEAD_EPOCHS[-1]) not in done:
                for entry in head_only(lnch, t):
                    done[head_cell_id(lnch, t, entry["epochs"])] = entry
                    print(json.dumps(entry), flush=True)
                save(done)
        return 0
    budgets = (FULL.epochs, args.long)
    todo = [(lnch, t, e) for lnch, t in CELLS for e in budgets if cell_id(lnch, t, e) not in done]
    if args.list:
        for lnch, t in CELLS:
            for e in budgets:
                print(f"{cell_id(lnch, t, e):55s} {'done' if cell_id(lnch, t, e) in done else 'to do'}")
        return 0
    for lnch, t, e in todo:
        entry = measure(lnch, t, e, args.threads)
        done[cell_id(lnch, t, e)] = entry
        save(done)
        print(json.dumps({k: entry[k] for k in ("launch", "task", "epochs", "val_last3", "val_best",
                                                  "probe_val", "train_acc_last", "seconds")}), flush=True)
    print(f"convergence: {OUT.relative_to(ROOT)} ({len(done)} entries)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
