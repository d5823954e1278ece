"""The search-space spec: YAML -> validated, frozen :class:`SearchSpec` -> Optuna define-by-run space.

Every section is a frozen dataclass whose fields declare the keys (``_schema``); :func:`load_spec`
reads a YAML file, applies ``--set key=value`` overrides and ``--smoke``, and validates everything
before any trial starts (``_load``). Errors are one line naming the key path
(``params.prompt.length.choice[2]``) and what is accepted.

Hyper-parameters live under ``params`` with dotted names (``prompt.length``, ``optim.base_lr``), each
a fixed value or a distribution, conditional on the method (``_spaces``).
"""

from vptsearch._catalogue import DEEP_IMPLS, DEPTHS, DROPOUT_MASKS, HEAD_NORMS, INITS, METHODS
from vptsearch.spec._load import (
    apply_overrides,
    load_spec,
    read_yaml,
    smoke_spec,
    spec_from_dict,
    warm_start_journal,
)
from vptsearch.spec._schema import (
    ALGORITHMS,
    DEVICES,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULERS,
    BackboneSpec,
    ExportConfig,
    ProtocolConfig,
    ResourcesConfig,
    SchedulerConfig,
    SearchConfig,
    SearchSpec,
    StorageConfig,
    TrackingConfig,
    TrainingConfig,
)
from vptsearch.spec._spaces import (
    DIST_KINDS,
    PARAMS,
    DefineByRun,
    Param,
    ParamDef,
    define_by_run,
    grid_configs,
    param_value,
    same_value,
    trial_defaults,
)

__all__ = [
    "ALGORITHMS",
    "DEEP_IMPLS",
    "DEPTHS",
    "DEVICES",
    "DIST_KINDS",
    "DROPOUT_MASKS",
    "HEAD_NORMS",
    "INITS",
    "METHODS",
    "OPTIMIZERS",
    "PARAMS",
    "PRECISIONS",
    "SCHEDULERS",
    "BackboneSpec",
    "DefineByRun",
    "ExportConfig",
    "Param",
    "ParamDef",
    "ProtocolConfig",
    "ResourcesConfig",
    "SchedulerConfig",
    "SearchConfig",
    "SearchSpec",
    "StorageConfig",
    "TrackingConfig",
    "TrainingConfig",
    "apply_overrides",
    "define_by_run",
    "grid_configs",
    "load_spec",
    "param_value",
    "read_yaml",
    "same_value",
    "smoke_spec",
    "spec_from_dict",
    "trial_defaults",
    "warm_start_journal",
]
