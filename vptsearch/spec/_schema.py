"""The spec's schema: every key once, as a dataclass field with its type, default, accepted values and help.

A field's annotation is its type; :func:`~vptsearch.spec._fields.key` attaches the rest (range,
choices, help; see ``_fields``). Parsing a spec (``_fields.parse_fields``) and the docs tables
(``_docs``) both read ``fields()``, so a key added here is validated and documented without another
list to keep in step.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from vptsearch._atomic import write_atomic
from vptsearch._catalogue import DROPOUT_MASKS, METHODS
from vptsearch.spec._fields import about, key, unsafe_name
from vptsearch.spec._messages import err, expect
from vptsearch.spec._spaces import PARAMS, Param, parse_method, parse_params

OPTIMIZERS = ("sgd", "adamw")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")  # auto: bf16 autocast on cuda, fp32 on cpu
ALGORITHMS = ("tpe", "random", "grid")
SCHEDULERS = ("asha", "none")


# --- sections ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BackboneSpec:
    name: str = key(
        "vptsearch-tiny-sup", "a shipped backbone, a timm model name, or a `.safetensors`/`.pth` path"
    )
    weights: str | None = key(
        None, "`hub`: download through timm; `none`: random weights; null: the backbone's own",
        choices=("hub", "none", None),
    )
    architecture: str | None = key(None, "the timm model name, for a local checkpoint")
    model_kwargs: Mapping[str, Any] = key(
        {}, "timm keyword arguments, for a local checkpoint", what="a mapping of timm keyword arguments"
    )


@dataclass(frozen=True)
class SearchConfig:
    algorithm: str = key("tpe", "the Optuna sampler, or every combination", choices=ALGORITHMS)
    trials_per_task: int = key(20, "search trials per task", ge=1)
    max_concurrent: int = key(2, "trials of one task running at once", ge=1)
    seed: int = key(0, "the sampler's seed")
    n_startup_trials: int = key(5, "TPE: random trials before the model kicks in", ge=0)
    # Only full-budget val results move between tasks, never a test split (docs/search.md).
    warm_start: str = key(
        "none", "seed each task's study with configurations that did well elsewhere: `none`; `launch`: "
        "the other tasks of this launch, as their trials complete; or an earlier launch's run dir "
        "(its optuna.journal); see \"Cross-task warm start\"",
    )
    warm_start_top_k: int = key(2, "warm-start trials per task, at most", ge=1)


@dataclass(frozen=True)
class SchedulerConfig:
    type: str = key(
        "asha", "ASHA stops poor trials early; `none` runs every trial to the end", choices=SCHEDULERS
    )
    grace_period: int = key(10, "epochs before ASHA may stop a trial", ge=1, shown_default="epochs / 10")
    reduction_factor: int = key(3, "ASHA keeps 1 in this many trials at each rung", ge=2)


_DROPOUT_MASK_NOTES = {"sample": "per-sample masks, as in VPT", "batch": "one mask shared by the batch"}


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = key(100, "training epochs of a trial", ge=1)
    warmup_epochs: int = key(
        10, "linear warm-up epochs (0 <= warmup_epochs < epochs), then cosine decay",
        shown_default="epochs / 10",
    )
    batch_size: int = key(64, "training batch size", ge=1)
    eval_batch_size: int = key(256, "evaluation batch size", ge=1)
    # sgd: lr = base_lr * batch_size / 256 (VPT paper); adamw: lr = base_lr (PETL benchmarks quote it
    # as is, at their batch size), decoupled weight decay, betas (0.9, 0.999); momentum is SGD's only
    optimizer: str = key(
        "sgd", "sgd: momentum SGD, peak lr `base_lr × batch_size / 256`; adamw: peak lr `base_lr` as "
        "given, decoupled weight decay, with base_lr ~1e-3…1e-2 and wd ~1e-4…1e-3; both with linear "
        "warm-up then cosine decay",
        choices=OPTIMIZERS, notes={"sgd": "the VPT paper recipe", "adamw": "PETL benchmarks"},
    )
    momentum: float = key(0.9, "momentum (sgd only)", ge=0, lt=1)
    image_size: int | None = key(None, "input size; null: the backbone's own", ge=8)
    prompt_dropout: float = key(0.1, "dropout on the prompts during training", ge=0, lt=1)
    prompt_dropout_mask: str = key(
        "sample", "prompt-dropout masks: `batch` is cheaper on `prefix_kv` but measured to cripple VPT, "
        "kept only for comparison",
        choices=DROPOUT_MASKS, notes=_DROPOUT_MASK_NOTES,
    )
    init_images: int = key(800, "training images fed to the SPT and cls-prototype initialisers", ge=1)
    # The running averages follow train-mode features (prompt dropout, prompts still moving fast):
    # eval-mode features met mis-scaled statistics (docs/search.md, "Precise BN").
    precise_bn_images: int = key(
        256,
        "before every evaluation the head norm's statistics are recomputed from this many "
        "training images' eval-mode features (precise BN; `head.norm` batchnorm and standardize)",
        ge=0,
        note=" (0: the running averages of training)",
    )
    track_nmi: bool = key(
        False, "vpt: log `nmi_mean` and `nmi_layer<i>`, NMI(prompts; patch tokens) per prompted layer "
        "(SPT eqs. 7-8), every epoch on 128 fixed training images",
    )
    device: str = key("auto", "auto: cuda when the trial reserves a GPU through `resources.gpu`, else cpu",
                      choices=DEVICES)
    precision: str = key(
        "auto", "auto: bf16 on cuda, fp32 on cpu; bf16: forward/backward under torch.autocast "
        "(trained tensors and checkpoints stay fp32)", choices=PRECISIONS,
    )
    # At GPU speed per-epoch checkpoints cost more than the epoch.
    checkpoint_every: int = key(
        10, "Tune checkpoints every this many epochs (0: none in between), and always at ASHA's rungs and "
        "the last epoch",
        ge=0, note=" (epochs; 0: only at rungs and the end)",
    )
    # Every result Tune receives is a round trip through the one driver: at GPU speed (0.2 s epochs,
    # 16 trials at once) per-epoch results kept the trials waiting on it (benchmarks/bench_gpu_sim.py).
    report_every_s: float = key(
        5.0, "a trial sends Tune the results its scheduler needs (ASHA's rungs, checkpoints, the last "
        "epoch) and between them at most one progress result per this many seconds; the epochs in "
        "between travel with the next result, so MLflow still gets every epoch",
        ge=0, note=" (seconds; 0: a result every epoch)",
    )
    max_failures: int = key(
        2, "times Tune retries a trial whose worker died (killed by Ray's memory monitor, or its node "
        "lost), each time from its last checkpoint; bad data or config is never retried",
        ge=0, note=" (0: a trial's first such failure ends it)",
    )


def _unique_seeds(seeds: tuple[int, ...]) -> str | None:
    return f"duplicate seeds in {list(seeds)}" if len(set(seeds)) != len(seeds) else None


@dataclass(frozen=True)
class ProtocolConfig:
    final_seeds: tuple[int, ...] = key(
        (0, 1, 2), "distinct seeds the winner is retrained with on the final splits",
        what="a non-empty list of integer seeds", rule=_unique_seeds,
    )
    probe: bool = key(
        True, "the frozen-feature probe reference per task after the final phase (`false` skips it)"
    )


def _whole_gpus_above_one(gpu: float) -> str | None:
    return f"fractions are only allowed below 1, got {gpu}" if gpu > 1 and gpu != int(gpu) else None


@dataclass(frozen=True)
class ResourcesConfig:
    cpu: float = key(1.0, "CPUs per trial (fractions allowed)", gt=0, note=" (fractions allowed)")
    gpu: float = key(
        0.0, "GPUs per trial (fractions allowed below 1)", ge=0, note=" (fractions allowed)",
        rule=_whole_gpus_above_one,
    )


@dataclass(frozen=True)
class TrackingConfig:
    uri: str = key(
        "sqlite:///mlflow.db", "the MLflow tracking URI (`--tracking-uri` and `$MLFLOW_TRACKING_URI` win)"
    )
    experiment: str | None = key(None, "the MLflow experiment; null: the space's name")
    artifact_location: str | None = key("mlartifacts", "relative paths resolve against the working dir")


@dataclass(frozen=True)
class ExportConfig:
    dir: str | None = key(
        None, "bundles go under `<dir>/<launch stamp>/`; a local path or `s3://BUCKET/PREFIX`",
        shown_default="exports/<name>",
    )


@dataclass(frozen=True)
class StorageConfig:
    """Where Tune keeps experiment state and checkpoints (see vptsearch.search._storage)."""

    path: str | None = key(
        None, "Tune's experiment state and checkpoints: a local/NFS path or `s3://BUCKET/PREFIX`",
        shown_default="<run dir>/ray",
    )
    shared: bool = key(False, "declare a local path that every node mounts (NFS); s3:// is always shared")


# --- the spec ------------------------------------------------------------------------------------
# the keys that need more than their type: (raw value, the fields parsed before it) -> value
def _parse_suite(raw: Any, done: Mapping[str, Any]) -> str | tuple[str, ...]:
    if not isinstance(raw, list):
        return typing.cast(str, expect("suite", raw, "str"))
    if not raw:
        raise err("suite", "expected a suite name or a non-empty list of tasks")
    return tuple(expect(f"suite[{i}]", t, "str") for i, t in enumerate(raw))


def _parse_method(raw: Any, done: Mapping[str, Any]) -> Param:
    return parse_method(raw)


def _parse_params(raw: Any, done: Mapping[str, Any]) -> dict[str, Param]:
    return parse_params(raw, done["method"])  # a parameter must apply to one of the methods


@dataclass(frozen=True)
class SearchSpec:
    """A validated search space. Build it with :func:`load_spec` or :func:`spec_from_dict`."""

    name: str = key(
        help="space name: experiment name, run folder `runs/<name>/<stamp>`, bundles `exports/<name>/`",
        what="one folder name: letters, digits, `.`, `_`, `-`, not starting with `.`", rule=unsafe_name,
    )
    suite: str | tuple[str, ...] = key(
        help="`mini`, `vtab1k`, `fgvc`, or a list of tasks `[vtab1k/dtd, ...]`",
        what="a suite name or a non-empty list of tasks", parse=_parse_suite,
    )
    data_root: str | None = key(
        None, "where shards live", shown_default="$VPTSEARCH_DATA or ~/.cache/vptsearch/shards"
    )
    build_missing: bool = key(False, "build missing mini tasks instead of failing")
    run_dir: str = key("runs", "root of the launch folders")
    backbone: BackboneSpec = field(default=BackboneSpec(), metadata=about("the frozen backbone"))
    method: Param = field(
        default=Param("method", "fixed", ("vpt",)),
        metadata=about(
            "the tuning method (searched when a choice): " + ", ".join(f"`{m}`" for m in METHODS),
            what="a method or `{choice: [...]}` of methods", parse=_parse_method,
        ),
    )
    params: Mapping[str, Param] = key(
        {}, "hyper-parameters (below)", what="a mapping of parameter names", parse=_parse_params
    )
    search: SearchConfig = field(default=SearchConfig(), metadata=about("the searcher"))
    scheduler: SchedulerConfig = field(default=SchedulerConfig(), metadata=about("early stopping of trials"))
    training: TrainingConfig = field(default=TrainingConfig(), metadata=about("the trial recipe (VPT's)"))
    protocol: ProtocolConfig = field(default=ProtocolConfig(), metadata=about("after the search"))
    resources: ResourcesConfig = field(default=ResourcesConfig(), metadata=about("what one trial reserves"))
    tracking: TrackingConfig = field(default=TrackingConfig(), metadata=about("MLflow"))
    export: ExportConfig = field(default=ExportConfig(), metadata=about("the exported bundles"))
    storage: StorageConfig = field(default=StorageConfig(), metadata=about("Tune experiment storage"))
    smoke: bool = key(False, "the same as `--smoke`")

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(self.method.values)

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def export_dir(self) -> str:
        return self.export.dir or f"exports/{self.name}"

    @property
    def asha_rungs(self) -> frozenset[int]:
        """The epochs where ASHA compares a trial with its rung (``grace_period * reduction_factor**k``
        up to ``training.epochs``); none without ASHA."""
        sch, rungs = self.scheduler, set()
        if sch.type == "asha":
            rung = sch.grace_period
            while rung <= self.training.epochs:
                rungs.add(rung)
                rung *= sch.reduction_factor
        return frozenset(rungs)

    def params_for(self, method: str) -> list[Param]:
        return [p for p in self.params.values() if method in PARAMS[p.name].methods]

    def to_dict(self) -> dict[str, Any]:
        """The merged spec as plain YAML-able data (what is saved with the run)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Param):
                v = v.to_yaml()
            elif isinstance(v, Mapping):  # params, the one mapping at the top
                v = {k: p.to_yaml() for k, p in v.items()}
            elif dataclasses.is_dataclass(v) and not isinstance(v, type):  # a section
                v = {k: (list(x) if isinstance(x, tuple) else x) for k, x in asdict(v).items()}
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def dump(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # whole or not at all: a resume reads it back (a full disk once left it truncated)
        return write_atomic(path, yaml.safe_dump(self.to_dict(), sort_keys=False))
