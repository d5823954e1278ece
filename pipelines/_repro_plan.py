"""What the reproduction runs: the launches (one search space each) and their sizes.

Every launch is an ordinary vptsearch search space (a dict that :func:`vptsearch.spec.spec_from_dict`
validates), run through :func:`vptsearch.search.launch` like a user's YAML file. The sizes are set so
the full plan fits the 2-core development machine in about 80 minutes (see docs/results.md); the
``quick`` plan runs every code path in a few minutes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

BACKBONES = {"sup": "vptsearch-tiny-sup", "mae": "vptsearch-tiny-mae"}
# Two natural and three structured tasks (the mini registry has no "specialized" task).
TASKS = ("mini/digits", "mini/textures", "mini/dsprites_loc", "mini/dsprites_ori", "mini/clevr_count")
LENGTH_TASKS = ("mini/digits", "mini/dsprites_loc")
FROZEN_TASKS = ("mini/digits", "mini/dsprites_loc", "mini/clevr_count")
LENGTHS = (1, 5, 10, 50)
SPT_INITS = ("spt-mean", "spt-max", "spt-sample", "spt-kmeans")
# The train-size sweep ("VPT or full fine-tuning?"): MNIST with 100, 800 and all 3 800 available
# training images (val200 and test are the mini task's own); built by _repro_data.
SIZE_TASKS = ("repro/mnist_n100", "repro/mnist_n800", "repro/mnist_nall")

# base_lr grids (lr = base_lr * batch / 256); the paper grid is {50 .. 0.05}: two points per method
# family is the "small search" the budget allows. Weight decay is fixed at 0 (in the paper grid).
# Quick runs take the last (smallest) point: a 1-epoch run without warm-up diverged at base_lr 10.
LR_PROMPT = (5.0, 1.0)
LR_HEAD = (5.0, 1.0)
LR_BODY = (2.5, 0.5)  # bias, adapter
LR_FULL = (0.5, 0.1)
LR_LENGTH = 2.5  # the one base_lr of the prompt-length study (p is its grid dimension)


@dataclass(frozen=True)
class Sizes:
    epochs: int
    warmup_epochs: int
    batch_size: int
    final_seeds: tuple[int, ...]
    prompt_length: int
    lr_points: int  # how many points of each lr grid are searched (quick: 1)


FULL = Sizes(epochs=2, warmup_epochs=1, batch_size=32, final_seeds=(0, 1, 2), prompt_length=10, lr_points=2)
QUICK = Sizes(epochs=1, warmup_epochs=0, batch_size=32, final_seeds=(0, 1), prompt_length=5, lr_points=1)


@dataclass(frozen=True)
class Launch:
    """One launch: ``study`` is ``main``, ``length``, ``frozen`` or ``size``; ``variant`` its row."""

    study: str
    backbone: str  # key of BACKBONES
    variant: str
    method: str
    params: dict[str, Any]
    tasks: tuple[str, ...]
    lrs: tuple[float, ...]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"repro_{self.study}_{self.backbone}_{self.variant}".replace("-", "_")


def main_variants(p: int) -> list[tuple[str, str, dict[str, Any], tuple[float, ...]]]:
    """(variant, method, fixed params, lr grid) of the main table, in table order."""
    deep = {"prompt.depth": "deep", "prompt.length": p}
    rows = [
        ("full", "full", {}, LR_FULL),
        ("linear", "linear", {}, LR_HEAD),
        ("bias", "bias", {}, LR_BODY),
        ("adapter", "adapter", {"adapter.reduction": 8}, LR_BODY),
        ("vpt-shallow", "vpt", {"prompt.depth": "shallow", "prompt.length": p, "prompt.init": "random"},
         LR_PROMPT),
        ("vpt-deep", "vpt", {**deep, "prompt.init": "random"}, LR_PROMPT),
    ]
    rows += [(f"{s}-deep", "vpt", {**deep, "prompt.init": s}, LR_PROMPT) for s in SPT_INITS]
    return rows


def plan(quick: bool = False) -> list[Launch]:
    """Every launch of the reproduction, ordered so that a run stopped early has finished whole
    claims: VPT-deep / linear / full (claim 2, the table's reference), SPT (claim 1), prompt length
    (claim 3), train size (claim 4), the rest of the main table, then frozen prompts (no claim)."""
    sizes = QUICK if quick else FULL
    k = sizes.lr_points
    backbones = ("sup",) if quick else tuple(BACKBONES)
    tasks = ("mini/digits", "mini/dsprites_loc") if quick else TASKS
    variants = main_variants(sizes.prompt_length)
    if quick:  # one of each kind of row: full, linear, random-init VPT, SPT
        variants = [v for v in variants if v[0] in ("full", "linear", "vpt-deep", "spt-mean-deep")]

    def main(names: tuple[str, ...]) -> list[Launch]:
        rows = [v for v in variants if v[0] in names]
        return [Launch("main", b, v, m, prm, tasks, lrs[-k:]) for v, m, prm, lrs in rows for b in backbones]

    first = ("vpt-deep", "linear", "full")
    spt_rows = tuple(f"{s}-deep" for s in SPT_INITS)
    out = main(first) + main(spt_rows)
    lengths = (1, 5) if quick else LENGTHS
    spt = "spt-mean" if quick else "spt-kmeans"
    for b in backbones:
        for init in ("random", spt):
            prm = {"prompt.depth": "deep", "prompt.init": init, "prompt.length": {"choice": list(lengths)}}
            out.append(Launch("length", b, init, "vpt", prm, LENGTH_TASKS[:1] if quick else LENGTH_TASKS,
                              (LR_LENGTH,)))
    size_tasks = SIZE_TASKS[:2] if quick else SIZE_TASKS
    for variant, method, prm, lrs in (
        ("full", "full", {}, LR_FULL),
        ("vpt-deep", "vpt", {"prompt.depth": "deep", "prompt.length": sizes.prompt_length,
                             "prompt.init": "random"}, LR_PROMPT),
    ):
        out.append(Launch("size", "sup", variant, method, prm, size_tasks, lrs[-k:]))
    out += main(tuple(v[0] for v in variants if v[0] not in (*first, *spt_rows)))
    for b in backbones:
        for init in ("random", spt):
            prm = {"prompt.depth": "deep", "prompt.length": sizes.prompt_length, "prompt.init": init,
                   "prompt.frozen": True}
            out.append(Launch("frozen", b, init, "vpt", prm, tasks[:1] if quick else FROZEN_TASKS,
                              LR_PROMPT[-k:]))
    return out


def spec_dict(launch: Launch, sizes: Sizes, *, run_dir: str, tracking_uri: str, experiment: str,
              data_root: str | None = None) -> dict[str, Any]:
    """The search space of one launch, as a user would write it in YAML."""
    n_lengths = len(launch.params["prompt.length"]["choice"]) if launch.study == "length" else 1
    return {
        "name": launch.name,
        "suite": list(launch.tasks),
        "data_root": data_root,
        "run_dir": run_dir,
        "backbone": {"name": BACKBONES[launch.backbone]},
        "method": launch.method,
        "params": {**launch.params, "optim.base_lr": {"choice": list(launch.lrs)}, "optim.weight_decay": 0.0},
        # grid: every lr (x every p in the length study) once per task; no ASHA with so few trials
        "search": {"algorithm": "grid", "trials_per_task": len(launch.lrs) * n_lengths, "max_concurrent": 2,
                   "seed": 0},
        "scheduler": {"type": "none"},
        "training": {"epochs": sizes.epochs, "warmup_epochs": sizes.warmup_epochs,
                     "batch_size": sizes.batch_size, "prompt_dropout": 0.1, "init_images": 800},
        "protocol": {"final_seeds": list(sizes.final_seeds)},
        "resources": {"cpu": 1, "gpu": 0},
        "tracking": {"uri": tracking_uri, "experiment": experiment, "artifact_location": "mlartifacts"},
        "export": {"dir": f"{run_dir}/exports/{launch.name}"},
    }
