"""The search-space spec: YAML -> validated, frozen :class:`SearchSpec` -> Optuna define-by-run space.

Every section is a frozen dataclass; :func:`load_spec` reads a YAML file, applies ``--set key=value``
overrides and ``--smoke``, and validates everything before any trial starts. Errors are one line
naming the key path (``params.prompt.length.choice[2]``) and what is accepted.

Hyper-parameters live under ``params`` with dotted names (``prompt.length``, ``optim.base_lr``).
A value is either fixed (a scalar) or a distribution: ``{choice: [...]}``, ``{uniform: [lo, hi]}``,
``{loguniform: [lo, hi]}``, ``{int: [lo, hi]}`` (optionally ``log: true``). Parameters are
conditional on the method (``prompt.*`` only for ``vpt``, ``adapter.reduction`` only for ``adapter``,
``partial.k`` only for ``partial``) and ``method`` may itself be a choice.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from vptsearch._errors import ConfigError, suggest

METHODS = ("vpt", "linear", "full", "bias", "partial", "adapter")
INITS = ("random", "spt-mean", "spt-max", "spt-sample", "spt-kmeans", "cls-prototype")
DEPTHS = ("shallow", "deep")
DEEP_IMPLS = ("tokens", "prefix_kv")
DROPOUT_MASKS = ("sample", "batch")
HEAD_NORMS = ("none", "batchnorm")
OPTIMIZERS = ("sgd", "adamw")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")  # auto: bf16 autocast on cuda, fp32 on cpu
ALGORITHMS = ("tpe", "random", "grid")
SCHEDULERS = ("asha", "none")
DIST_KINDS = ("choice", "uniform", "loguniform", "int")


# --- parameter definitions ------------------------------------------------------------------------
def _check_pos_int(v: Any) -> str | None:
    ok = isinstance(v, int) and not isinstance(v, bool) and v >= 1
    return None if ok else "a positive integer"


def _check_pos_float(v: Any) -> str | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
    return None if ok else "a positive number"


def _check_nonneg_float(v: Any) -> str | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
    return None if ok else "a number >= 0"


def _check_bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def _one_of(options: Sequence[str]) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if v in options else "one of " + ", ".join(options)

    return check


@dataclass(frozen=True)
class ParamDef:
    """A known hyper-parameter: its validator, the methods it applies to, and its default."""

    check: Callable[[Any], str | None]
    methods: tuple[str, ...]
    default: Any
    numeric: bool = False


PARAMS: dict[str, ParamDef] = {
    "prompt.length": ParamDef(_check_pos_int, ("vpt",), 10, numeric=True),
    "prompt.depth": ParamDef(_one_of(DEPTHS), ("vpt",), "deep"),
    "prompt.init": ParamDef(_one_of(INITS), ("vpt",), "random"),
    "prompt.deep_impl": ParamDef(_one_of(DEEP_IMPLS), ("vpt",), "prefix_kv"),
    # SPT Table 4a ablation: prompts initialised, then frozen (only the head trains)
    "prompt.frozen": ParamDef(_check_bool, ("vpt",), False),
    "adapter.reduction": ParamDef(_check_pos_int, ("adapter",), 8, numeric=True),
    "partial.k": ParamDef(_check_pos_int, ("partial",), 1, numeric=True),
    # BatchNorm1d without affine in front of the head (MAE linear-probe protocol), any method
    "head.norm": ParamDef(_one_of(HEAD_NORMS), METHODS, "none"),
    "optim.base_lr": ParamDef(_check_pos_float, METHODS, 1.0, numeric=True),
    "optim.weight_decay": ParamDef(_check_nonneg_float, METHODS, 0.0, numeric=True),
}


def same_value(a: Any, b: Any) -> bool:
    """Equal values of one type, or equal numbers (4 == 4.0; never True == 1)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return type(a) is type(b) and a == b


def warm_start_journal(source: str | Path) -> Path | None:
    """The optuna.journal of an earlier launch given its run dir (or the journal file); None if absent."""
    path = Path(source).expanduser()
    journal = path / "optuna.journal" if path.is_dir() else path
    return journal if journal.is_file() and journal.name.endswith("journal") else None


@dataclass(frozen=True)
class Param:
    """A hyper-parameter: ``kind`` is ``fixed`` (``values[0]``) or one of :data:`DIST_KINDS`."""

    name: str
    kind: str
    values: tuple[Any, ...]
    log: bool = False

    @property
    def fixed(self) -> bool:
        return self.kind == "fixed"

    def to_yaml(self) -> Any:
        if self.kind == "fixed":
            return self.values[0]
        if self.kind == "choice":
            return {"choice": list(self.values)}
        out: dict[str, Any] = {self.kind: list(self.values)}
        if self.log:
            out["log"] = True
        return out

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one this parameter can take (a warm-start config must fit the space)."""
        if self.kind in ("fixed", "choice"):
            return any(same_value(value, v) for v in self.values)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        lo, hi = self.values
        return lo <= value <= hi and (self.kind != "int" or float(value).is_integer())

    def grid_values(self) -> tuple[Any, ...]:
        if self.kind in ("fixed", "choice"):
            return self.values
        raise ConfigError(
            f"params.{self.name}: search.algorithm 'grid' needs fixed values or choice lists, got {self.kind}"
        )

    def suggest(self, trial: Any) -> Any:
        """Sample this parameter from an Optuna trial (fixed values are returned as they are)."""
        if self.kind == "fixed":
            return self.values[0]
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.values))
        lo, hi = self.values
        if self.kind == "int":
            return trial.suggest_int(self.name, lo, hi, log=self.log)
        return trial.suggest_float(self.name, lo, hi, log=self.kind == "loguniform")


# --- sections --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BackboneSpec:
    name: str = "vptsearch-tiny-sup"
    weights: str | None = None  # hub | none | None (backbone's default)
    architecture: str | None = None  # timm name, for local checkpoints
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchConfig:
    algorithm: str = "tpe"
    trials_per_task: int = 20
    max_concurrent: int = 2
    seed: int = 0
    n_startup_trials: int = 5  # TPE: random trials before the model kicks in
    # Seed each task's study with configurations that did well elsewhere (see docs/search.md):
    # "none"; "launch" = the other tasks of this launch, as their trials complete; or an earlier
    # launch's run dir (its optuna.journal). Only full-budget val results move, never a test split.
    warm_start: str = "none"
    warm_start_top_k: int = 2  # warm-start trials per task, at most


@dataclass(frozen=True)
class SchedulerConfig:
    type: str = "asha"
    grace_period: int = 10
    reduction_factor: int = 3


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = 100
    warmup_epochs: int = 10
    batch_size: int = 64
    eval_batch_size: int = 256
    # sgd: lr = base_lr * batch_size / 256 (VPT paper); adamw: lr = base_lr (PETL benchmarks quote it
    # as is, at their batch size), decoupled weight decay, betas (0.9, 0.999); momentum is SGD's only
    optimizer: str = "sgd"
    momentum: float = 0.9
    image_size: int | None = None  # None: the backbone's own
    prompt_dropout: float = 0.1
    prompt_dropout_mask: str = "sample"  # sample: a mask per sample (VPT); batch: one per batch
    init_images: int = 800  # training images fed to SPT / cls-prototype initialisers
    track_nmi: bool = False  # vpt: log NMI(prompts; patch tokens) per layer every epoch (SPT eqs. 7-8)
    device: str = "auto"  # auto: cuda when the trial holds a GPU (resources.gpu > 0), else cpu
    precision: str = "auto"  # bf16: forward/backward under torch.autocast (trained tensors stay fp32)
    # Tune checkpoints every this many epochs (0: none in between), always also at the scheduler's
    # ASHA rungs and at the last epoch: at GPU speed per-epoch checkpoints cost more than the epoch.
    checkpoint_every: int = 10


@dataclass(frozen=True)
class ProtocolConfig:
    final_seeds: tuple[int, ...] = (0, 1, 2)
    probe: bool = True  # the frozen-feature probe reference per task, in the driver (vptsearch.probe)


@dataclass(frozen=True)
class ResourcesConfig:
    cpu: float = 1.0
    gpu: float = 0.0


@dataclass(frozen=True)
class TrackingConfig:
    uri: str = "sqlite:///mlflow.db"
    experiment: str | None = None  # None: the space's name
    artifact_location: str | None = "mlartifacts"  # relative paths resolve against the working dir


@dataclass(frozen=True)
class ExportConfig:
    dir: str | None = None  # None: exports/<name>; a local path or an s3:// URI


@dataclass(frozen=True)
class StorageConfig:
    """Where Tune keeps experiment state and checkpoints (see vptsearch.search._storage)."""

    path: str | None = None  # None: <run dir>/ray; a local/NFS path or s3://bucket/prefix
    shared: bool = False  # a local path that every node sees (NFS); s3:// is always shared


@dataclass(frozen=True)
class SearchSpec:
    """A validated search space. Build it with :func:`load_spec` or :func:`spec_from_dict`."""

    name: str
    suite: str | tuple[str, ...]
    backbone: BackboneSpec
    method: Param
    params: Mapping[str, Param]
    data_root: str | None = None
    build_missing: bool = False  # build the offline mini suite when it is missing
    run_dir: str = "runs"
    search: SearchConfig = SearchConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    training: TrainingConfig = TrainingConfig()
    protocol: ProtocolConfig = ProtocolConfig()
    resources: ResourcesConfig = ResourcesConfig()
    tracking: TrackingConfig = TrackingConfig()
    export: ExportConfig = ExportConfig()
    storage: StorageConfig = StorageConfig()
    smoke: bool = False

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(self.method.values)

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def export_dir(self) -> str:
        return self.export.dir or f"exports/{self.name}"

    def params_for(self, method: str) -> list[Param]:
        return [p for p in self.params.values() if method in PARAMS[p.name].methods]

    def to_dict(self) -> dict[str, Any]:
        """The merged spec as plain YAML-able data (what is saved with the run)."""
        out: dict[str, Any] = {"name": self.name}
        out["suite"] = self.suite if isinstance(self.suite, str) else list(self.suite)
        out["data_root"] = self.data_root
        out["build_missing"] = self.build_missing
        out["run_dir"] = self.run_dir
        out["backbone"] = {**asdict(self.backbone), "model_kwargs": dict(self.backbone.model_kwargs)}
        out["method"] = self.method.to_yaml()
        out["params"] = {k: p.to_yaml() for k, p in self.params.items()}
        for sec in (
            "search", "scheduler", "training", "protocol", "resources", "tracking", "export", "storage"
        ):
            d = asdict(getattr(self, sec))
            out[sec] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}
        out["smoke"] = self.smoke
        return out

    def dump(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        return path


# --- define-by-run space ---------------------------------------------------------------------------
@dataclass(frozen=True)
class DefineByRun:
    """Optuna define-by-run space (picklable, so Tune can checkpoint the searcher that holds it).

    ``method`` is sampled first; only the parameters that apply to the sampled method are sampled
    next, which is what makes the space conditional.
    """

    method: Param
    params: tuple[Param, ...]

    def __call__(self, trial: Any) -> dict[str, Any]:
        method = self.method.suggest(trial) if not self.method.fixed else self.method.values[0]
        config: dict[str, Any] = {"method": method}
        for p in self.params:
            if method in PARAMS[p.name].methods:
                config[p.name] = p.suggest(trial)
        return config


def define_by_run(spec: SearchSpec) -> DefineByRun:
    """The Optuna define-by-run function of ``spec`` (pass it as ``OptunaSearch(space=...)``)."""
    return DefineByRun(spec.method, tuple(spec.params.values()))


def grid_configs(spec: SearchSpec) -> list[dict[str, Any]]:
    """Every combination of the choice/fixed parameters, conditional on the method (grid search)."""
    out: list[dict[str, Any]] = []
    for method in spec.method.grid_values():
        ps = spec.params_for(method)
        for combo in itertools.product(*(p.grid_values() for p in ps)):
            out.append({"method": method, **{p.name: v for p, v in zip(ps, combo, strict=True)}})
    return out


def trial_defaults(method: str) -> dict[str, Any]:
    """Defaults of the parameters that apply to ``method`` (filled into configs missing them)."""
    return {k: d.default for k, d in PARAMS.items() if method in d.methods}


# --- parsing ---------------------------------------------------------------------------------------
_TOP_KEYS = (
    "name",
    "suite",
    "data_root",
    "build_missing",
    "run_dir",
    "backbone",
    "method",
    "params",
    "search",
    "scheduler",
    "training",
    "protocol",
    "resources",
    "tracking",
    "export",
    "storage",
    "smoke",
)
_SECTIONS: dict[str, type] = {
    "backbone": BackboneSpec,
    "search": SearchConfig,
    "scheduler": SchedulerConfig,
    "training": TrainingConfig,
    "protocol": ProtocolConfig,
    "resources": ResourcesConfig,
    "tracking": TrackingConfig,
    "export": ExportConfig,
    "storage": StorageConfig,
}


def _err(path: str, msg: str) -> ConfigError:
    return ConfigError(f"{path}: {msg}")


def _unknown_key(path: str, key: str, accepted: Iterable[str]) -> ConfigError:
    accepted = list(accepted)
    where = f"{path}.{key}" if path else key
    return ConfigError(f"{where}: unknown key{suggest(key, accepted)}; accepted: {', '.join(accepted)}")


def _type_name(v: Any) -> str:
    return repr(v) if not isinstance(v, (dict, list)) else type(v).__name__


def _list_name(v: Any) -> str:
    """What a value that should be a non-empty list is: "an empty list" beats "list"."""
    if isinstance(v, list) and not v:
        return "an empty list"
    return "null" if v is None else _type_name(v)


def _expect(path: str, v: Any, kind: str) -> Any:
    """Check a scalar's type; ints are accepted where floats are expected."""
    ok = {
        "int": isinstance(v, int) and not isinstance(v, bool),
        "float": isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
        "str": isinstance(v, str) and v != "",
        "bool": isinstance(v, bool),
    }[kind]
    if not ok:
        words = {
            "int": "an integer",
            "float": "a number",
            "str": "a non-empty string",
            "bool": "true or false",
        }
        raise _err(path, f"expected {words[kind]}, got {_type_name(v)}")
    return float(v) if kind == "float" else v


def _section(path: str, raw: Any, cls: type) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, Mapping):
        raise _err(path, f"expected a mapping, got {_type_name(raw)}")
    names = [f.name for f in fields(cls)]
    for k in raw:
        if k not in names:
            raise _unknown_key(path, str(k), names)
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in raw:
            continue
        v = raw[f.name]
        key = f"{path}.{f.name}"
        t = str(f.type)
        if v is None and "None" in t:
            values[f.name] = None
        elif f.name == "model_kwargs":
            if not isinstance(v, Mapping):
                raise _err(key, f"expected a mapping of timm keyword arguments, got {_type_name(v)}")
            values[f.name] = dict(v)
        elif f.name == "final_seeds":
            if not isinstance(v, list) or not v:
                raise _err(key, f"expected a non-empty list of integer seeds, got {_list_name(v)}")
            values[f.name] = tuple(_expect(f"{key}[{i}]", s, "int") for i, s in enumerate(v))
        elif t.startswith("int"):
            values[f.name] = _expect(key, v, "int")
        elif t.startswith("float"):
            values[f.name] = _expect(key, v, "float")
        elif t.startswith("bool"):
            values[f.name] = _expect(key, v, "bool")
        else:
            values[f.name] = _expect(key, v, "str")
    return cls(**values)


def _param(name: str, raw: Any, path: str) -> Param:
    d = PARAMS[name]
    if not isinstance(raw, Mapping):
        problem = d.check(raw)
        if problem:
            raise _err(path, f"expected {problem}, got {_type_name(raw)}")
        return Param(name, "fixed", (raw,))
    kinds = [k for k in raw if k in DIST_KINDS]
    extra = [k for k in raw if k not in (*DIST_KINDS, "log")]
    if extra:
        raise _unknown_key(path, str(extra[0]), [*DIST_KINDS, "log"])
    if len(kinds) != 1:
        raise _err(path, f"expected exactly one of {', '.join(DIST_KINDS)} (or a fixed value)")
    kind = kinds[0]
    vals = raw[kind]
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise _err(f"{path}.log", f"expected true or false, got {_type_name(log)}")
    if log and kind != "int":
        raise _err(f"{path}.log", "only applies to int ranges (use loguniform for floats)")
    kpath = f"{path}.{kind}"
    if kind == "choice":
        if not isinstance(vals, list) or not vals:
            raise _err(kpath, f"expected a non-empty list of values, got {_list_name(vals)}")
        for i, v in enumerate(vals):
            problem = d.check(v)
            if problem:
                raise _err(f"{kpath}[{i}]", f"expected {problem}, got {_type_name(v)}")
        if len(set(map(repr, vals))) != len(vals):
            raise _err(kpath, f"duplicate values in {vals}")
        return Param(name, "choice", tuple(vals))
    if not d.numeric:
        raise _err(kpath, f"{name} is categorical; use choice: [...] or a fixed value")
    if not isinstance(vals, list) or len(vals) != 2:
        raise _err(kpath, f"expected [low, high], got {_type_name(vals)}")
    lo, hi = vals
    want = "int" if kind == "int" else "float"
    lo = _expect(f"{kpath}[0]", lo, want)
    hi = _expect(f"{kpath}[1]", hi, want)
    for i, v in enumerate((lo, hi)):
        problem = d.check(int(v) if kind == "int" else v)
        if problem and not (kind == "uniform" and v == 0 and name == "optim.weight_decay"):
            raise _err(f"{kpath}[{i}]", f"expected {problem}, got {v!r}")
    if not lo < hi:
        raise _err(kpath, f"low must be < high, got [{lo}, {hi}]")
    if kind == "loguniform" and lo <= 0:
        raise _err(f"{kpath}[0]", f"loguniform needs low > 0, got {lo}")
    if kind == "int" and PARAMS[name].check(1) is not None:
        raise _err(kpath, f"{name} is not an integer parameter; use uniform or loguniform")
    return Param(name, kind, (lo, hi), log=log)


def _method(raw: Any) -> Param:
    if isinstance(raw, Mapping):
        if set(raw) != {"choice"}:
            raise _err("method", "expected a method name or {choice: [...]}; accepted: " + ", ".join(METHODS))
        vals = raw["choice"]
        if not isinstance(vals, list) or not vals:
            raise _err(
                "method.choice",
                f"expected a non-empty list of methods ({', '.join(METHODS)}), got {_list_name(vals)}",
            )
        for i, v in enumerate(vals):
            if v not in METHODS:
                raise _err(
                    f"method.choice[{i}]",
                    f"unknown method {v!r}{suggest(str(v), METHODS)}; accepted: {', '.join(METHODS)}",
                )
        return Param("method", "choice", tuple(vals))
    if raw not in METHODS:
        hint = suggest(str(raw), METHODS)
        raise _err("method", f"unknown method {raw!r}{hint}; accepted: {', '.join(METHODS)}")
    return Param("method", "fixed", (raw,))


def spec_from_dict(raw: Any, *, source: str = "<spec>") -> SearchSpec:
    """Validate a parsed YAML mapping into a :class:`SearchSpec` (raises :class:`ConfigError`)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: expected a YAML mapping at the top level, got {_type_name(raw)}")
    for k in raw:
        if k not in _TOP_KEYS:
            raise _unknown_key("", str(k), _TOP_KEYS)
    for req in ("name", "suite"):
        if req not in raw:
            raise ConfigError(f"{req}: missing required key in {source}")
    name = _expect("name", raw["name"], "str")
    suite_raw = raw["suite"]
    if isinstance(suite_raw, list):
        if not suite_raw:
            raise _err("suite", "expected a suite name or a non-empty list of tasks")
        suite: str | tuple[str, ...] = tuple(
            _expect(f"suite[{i}]", t, "str") for i, t in enumerate(suite_raw)
        )
    else:
        suite = _expect("suite", suite_raw, "str")
    method = _method(raw.get("method", "vpt"))
    params_raw = raw.get("params") or {}
    if not isinstance(params_raw, Mapping):
        raise _err("params", f"expected a mapping of parameter names, got {_type_name(params_raw)}")
    params: dict[str, Param] = {}
    for k, v in params_raw.items():
        if k not in PARAMS:
            raise _unknown_key("params", str(k), PARAMS)
        params[k] = _param(k, v, f"params.{k}")
        applies = PARAMS[k].methods
        if not any(m in applies for m in method.values):
            raise _err(
                f"params.{k}",
                f"only applies to method {' or '.join(repr(m) for m in applies)}, "
                f"but method is {' | '.join(method.values)}",
            )
    sections = {k: _section(k, raw.get(k), cls) for k, cls in _SECTIONS.items()}
    # Paper ratios when not given: 10 % of the epochs for warm-up and for ASHA's grace period.
    epochs = sections["training"].epochs
    if "warmup_epochs" not in (raw.get("training") or {}):
        sections["training"] = replace(sections["training"], warmup_epochs=epochs // 10)
    if "grace_period" not in (raw.get("scheduler") or {}):
        sections["scheduler"] = replace(sections["scheduler"], grace_period=max(1, epochs // 10))
    spec = SearchSpec(
        name=name,
        suite=suite,
        method=method,
        params=params,
        data_root=None if raw.get("data_root") is None else _expect("data_root", raw["data_root"], "str"),
        build_missing=_expect("build_missing", raw.get("build_missing", False), "bool"),
        run_dir=_expect("run_dir", raw.get("run_dir", "runs"), "str"),
        smoke=_expect("smoke", raw.get("smoke", False), "bool"),
        **sections,
    )
    _validate(spec)
    return spec


def _validate(spec: SearchSpec) -> None:
    """Cross-field checks: values in range and combinations that make sense."""
    s, sch, tr, res = spec.search, spec.scheduler, spec.training, spec.resources
    if s.algorithm not in ALGORITHMS:
        raise _err("search.algorithm", f"unknown {s.algorithm!r}; accepted: {', '.join(ALGORITHMS)}")
    for key, v in (
        ("search.trials_per_task", s.trials_per_task),
        ("search.max_concurrent", s.max_concurrent),
        ("training.epochs", tr.epochs),
        ("training.batch_size", tr.batch_size),
        ("training.eval_batch_size", tr.eval_batch_size),
        ("training.init_images", tr.init_images),
        ("scheduler.grace_period", sch.grace_period),
    ):
        if v < 1:
            raise _err(key, f"expected an integer >= 1, got {v}")
    if s.n_startup_trials < 0:
        raise _err("search.n_startup_trials", f"expected an integer >= 0, got {s.n_startup_trials}")
    if s.warm_start_top_k < 1:
        raise _err("search.warm_start_top_k", f"expected an integer >= 1, got {s.warm_start_top_k}")
    if s.warm_start != "none":
        if s.algorithm == "grid":
            raise _err("search.warm_start", "a grid search tries every configuration anyway; accepted: none")
        if s.warm_start != "launch" and warm_start_journal(s.warm_start) is None:
            raise _err(
                "search.warm_start",
                f"{s.warm_start!r} is neither none, launch nor an earlier launch's run dir "
                "(no optuna.journal there)",
            )
    if sch.type not in SCHEDULERS:
        raise _err("scheduler.type", f"unknown {sch.type!r}; accepted: {', '.join(SCHEDULERS)}")
    if sch.reduction_factor < 2:
        raise _err("scheduler.reduction_factor", f"expected an integer >= 2, got {sch.reduction_factor}")
    if sch.type == "asha" and sch.grace_period > tr.epochs:
        raise _err("scheduler.grace_period", f"{sch.grace_period} exceeds training.epochs ({tr.epochs})")
    if not 0 <= tr.warmup_epochs < tr.epochs:
        raise _err(
            "training.warmup_epochs",
            f"expected 0 <= warmup_epochs < epochs ({tr.epochs}), got {tr.warmup_epochs}",
        )
    if tr.optimizer not in OPTIMIZERS:
        raise _err(
            "training.optimizer",
            f"unknown {tr.optimizer!r}; accepted: sgd (the VPT paper recipe), adamw (PETL benchmarks)",
        )
    if tr.prompt_dropout_mask not in DROPOUT_MASKS:
        raise _err(
            "training.prompt_dropout_mask",
            f"unknown {tr.prompt_dropout_mask!r}; accepted: sample (per-sample masks, as in VPT), "
            "batch (one mask shared by the batch)",
        )
    if not 0 <= tr.momentum < 1:
        raise _err("training.momentum", f"expected 0 <= momentum < 1, got {tr.momentum}")
    if not 0 <= tr.prompt_dropout < 1:
        raise _err("training.prompt_dropout", f"expected 0 <= prompt_dropout < 1, got {tr.prompt_dropout}")
    if tr.device not in DEVICES:
        raise _err("training.device", f"unknown {tr.device!r}; accepted: {', '.join(DEVICES)}")
    if tr.precision not in PRECISIONS:
        raise _err("training.precision", f"unknown {tr.precision!r}; accepted: {', '.join(PRECISIONS)}")
    if tr.checkpoint_every < 0:
        raise _err(
            "training.checkpoint_every",
            f"expected an integer >= 0 (epochs; 0: only at rungs and the end), got {tr.checkpoint_every}",
        )
    if tr.device == "cuda" and res.gpu <= 0:
        raise _err("training.device", "cuda needs resources.gpu > 0 (Ray hides GPUs from trials without one)")
    if tr.image_size is not None and tr.image_size < 8:
        raise _err("training.image_size", f"expected an integer >= 8 or null, got {tr.image_size}")
    if res.cpu <= 0:
        raise _err("resources.cpu", f"expected a number > 0 (fractions allowed), got {res.cpu}")
    if res.gpu < 0:
        raise _err("resources.gpu", f"expected a number >= 0 (fractions allowed), got {res.gpu}")
    if res.gpu > 1 and res.gpu != int(res.gpu):
        raise _err("resources.gpu", f"fractions are only allowed below 1, got {res.gpu}")
    if spec.backbone.weights not in (None, "hub", "none"):
        raise _err("backbone.weights", f"unknown {spec.backbone.weights!r}; accepted: hub, none, null")
    if s.algorithm == "grid":
        if spec.method.kind not in ("fixed", "choice"):
            raise _err("method", "grid search needs a fixed method or a choice list")
        for p in spec.params.values():
            p.grid_values()
    if len(set(spec.protocol.final_seeds)) != len(spec.protocol.final_seeds):
        raise _err("protocol.final_seeds", f"duplicate seeds in {list(spec.protocol.final_seeds)}")


# --- overrides, smoke and loading ------------------------------------------------------------------
def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``key=value`` overrides (value parsed as YAML) to a raw spec mapping, in place.

    ``params.<name>=...`` addresses a dotted parameter name (``params.prompt.length=5``).
    """
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. search.trials_per_task=4")
        try:
            value = yaml.safe_load(text) if text else None
        except yaml.YAMLError as exc:
            why = exc.__class__.__name__
            raise ConfigError(f"--set {key}: value {text!r} is not valid YAML ({why})") from None
        parts = key.split(".")
        if parts[0] == "params" and len(parts) > 1:
            parts = ["params", ".".join(parts[1:])]
        node = raw
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a mapping")
            node = child
        node[parts[-1]] = value
    return raw


def smoke_spec(spec: SearchSpec) -> SearchSpec:
    """Shrink a spec to a few short trials (same code paths: search, ASHA, final, export)."""
    tr = spec.training
    epochs = min(tr.epochs, 3)
    return replace(
        spec,
        smoke=True,
        search=replace(
            spec.search,
            trials_per_task=min(spec.search.trials_per_task, 4),
            n_startup_trials=min(spec.search.n_startup_trials, 2),
        ),
        scheduler=replace(spec.scheduler, grace_period=1, reduction_factor=2),
        training=replace(
            tr, epochs=epochs, warmup_epochs=min(tr.warmup_epochs, 1), init_images=min(tr.init_images, 128)
        ),
        protocol=replace(spec.protocol, final_seeds=spec.protocol.final_seeds[:1]),
    )


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    accepted = "accepted: a search space YAML file, e.g. search_spaces/*.yaml"
    if path.is_dir():
        raise ConfigError(f"search space {str(path)!r} is a directory, not a file; {accepted}")
    if not path.is_file():
        raise ConfigError(f"search space file {str(path)!r} does not exist; {accepted}")
    try:
        raw = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            "accepted: a UTF-8 YAML file"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"search space file {str(path)!r} cannot be read ({exc.strerror}); {accepted}"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or exc.__class__.__name__
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    if raw is None:
        raise ConfigError(f"{path}: the file is empty; expected a search space mapping (name, suite, ...)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a YAML mapping at the top level, got {type(raw).__name__}")
    return raw


def load_spec(path: str | Path, overrides: Iterable[str] = (), smoke: bool = False) -> SearchSpec:
    """Read, override, validate and (with ``smoke``) shrink a search space YAML file."""
    raw = apply_overrides(read_yaml(path), overrides)
    spec = spec_from_dict(raw, source=str(path))
    return smoke_spec(spec) if smoke or spec.smoke else spec
