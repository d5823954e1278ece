"""Hyper-parameters and their spaces: the known parameters, a value or distribution per parameter,
and the Optuna define-by-run space and grid they make.

A value under ``params`` is either fixed (a scalar) or a distribution: ``{choice: [...]}``,
``{uniform: [lo, hi]}``, ``{loguniform: [lo, hi]}``, ``{int: [lo, hi]}`` (optionally ``log: true``).
Each parameter applies to some methods (``prompt.*`` only to ``vpt``); ``method`` is sampled first
and only the parameters of the sampled method next, which is what makes the space conditional.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vptsearch._catalogue import DEEP_IMPLS, DEPTHS, HEAD_INITS, HEAD_NORMS, HEAD_REFITS, INITS, METHODS
from vptsearch._errors import ConfigError, suggest
from vptsearch.spec._messages import err, expect, list_name, type_name, unknown_key

if TYPE_CHECKING:
    from vptsearch.spec._schema import SearchSpec

DIST_KINDS = ("choice", "uniform", "loguniform", "int")


# --- the known parameters ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ParamDef:
    """A known hyper-parameter: its type (``int``, ``float``, ``bool`` or ``str`` with ``choices``),
    the methods it applies to, its default and what it does (``help``, for the docs table).

    Numbers must be positive (``int``: >= 1, ``float``: > 0), or >= 0 with ``positive=False``."""

    type: type
    methods: tuple[str, ...]
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    positive: bool = True
    # (method, default) where a method needs another default than ``default``
    method_defaults: tuple[tuple[str, Any], ...] = ()

    def default_for(self, method: str | None) -> Any:
        """The default a trial of ``method`` gets (``default`` unless ``method_defaults`` names it)."""
        return dict(self.method_defaults).get(method or "", self.default)

    @property
    def numeric(self) -> bool:
        """Whether ranges (``uniform``, ``loguniform``, ``int``) apply, not only values and choices."""
        return self.type in (int, float)

    @property
    def accepted(self) -> str:
        """What one value must be, as the errors say it (``a positive integer``)."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.type is bool:
            return "true or false"
        if self.positive:
            return "a positive integer" if self.type is int else "a positive number"
        return ("an integer" if self.type is int else "a number") + " >= 0"

    def check(self, v: Any) -> str | None:
        """``None`` when ``v`` is an accepted value, else :attr:`accepted`."""
        if self.choices:
            ok = v in self.choices
        elif self.type is bool:
            ok = isinstance(v, bool)
        else:
            types = (int,) if self.type is int else (int, float)
            ok = isinstance(v, types) and not isinstance(v, bool) and math.isfinite(v)
            ok = ok and (v > 0 if self.positive else v >= 0)
        return None if ok else self.accepted


def _vpt(type_: type, default: Any, help: str, **kw: Any) -> ParamDef:
    return ParamDef(type_, ("vpt",), default, help, **kw)


PARAMS: dict[str, ParamDef] = {
    "prompt.length": _vpt(int, 10, "prompt tokens per prompted layer"),
    "prompt.depth": _vpt(str, "deep", "`deep`: new prompts at every layer; `shallow`: at the first only",
                         choices=DEPTHS),
    "prompt.init": _vpt(str, "random", "how the prompts start: VPT's uniform draw, SPT's strategies "
                        "on the training images, or VPT's class prototypes", choices=INITS),
    "prompt.deep_impl": _vpt(str, "prefix_kv", "how deep prompts run: `prefix_kv` appends their "
                             "keys/values (exact, faster); `tokens` runs them through every block",
                             choices=DEEP_IMPLS),
    "prompt.frozen": _vpt(bool, False, "`true`: prompts initialised, then frozen; only the head trains "
                          "(SPT Table 4a)"),
    "adapter.reduction": ParamDef(int, ("adapter",), 8, "bottleneck reduction of the adapters"),
    "partial.k": ParamDef(int, ("partial",), 1, "last blocks that train (with the final norm)"),
    "head.norm": ParamDef(str, METHODS, "none", "`batchnorm`: a BatchNorm1d without affine in front of "
                          "the linear head (the MAE linear-probe protocol); its running statistics are "
                          "trained state, in checkpoints and bundles (docs/models.md); `standardize`: the "
                          "same layer, but training also divides by the running statistics instead of the "
                          "batch's (docs/search.md, \"The head: init and lr\")", choices=HEAD_NORMS),
    "head.init": ParamDef(str, METHODS, "probe", "how the head starts: `probe` fits it before the first "
                          "step (the probe's standardised logistic regression on the features of the "
                          "initialised model; LP-FT), `random` timm's nn.Linear draw, `zero` all zeros. "
                          "Full fine-tuning defaults to `random`: from a fitted head it collapsed "
                          "(docs/search.md)", choices=HEAD_INITS, method_defaults=(("full", "random"),)),
    "head.refit": ParamDef(str, METHODS, "probe", "`probe`: after the last epoch the head is refitted by "
                           "the probe's solver on the trained model's features of the train split (C as "
                           "chosen at init on the search splits), before the last evaluation; `none` "
                           "keeps the trained head. Full fine-tuning defaults to `none` (docs/search.md)",
                           choices=HEAD_REFITS, method_defaults=(("full", "none"),)),
    "optim.base_lr": ParamDef(float, METHODS, 1.0, "sgd: the lr is `base_lr × batch_size / 256`; "
                              "adamw: the lr itself"),
    "optim.weight_decay": ParamDef(float, METHODS, 0.0, "weight decay (decoupled for adamw)",
                                   positive=False),
    "optim.head_lr_scale": ParamDef(float, METHODS, 0.1, "the head's lr as a multiple of the rest's "
                                    "(prompts, adapters, ...); schedule and weight decay apply to both; "
                                    "full fine-tuning defaults to 1 (its random head trains with the body)",
                                    positive=False, method_defaults=(("full", 1.0),)),
}  # fmt: skip


def param_value(config: dict[str, Any], key: str) -> Any:
    """``config``'s value of the parameter ``key``, or the default a trial of its method got."""
    return config.get(key, PARAMS[key].default_for(config.get("method")))


def trial_defaults(method: str) -> dict[str, Any]:
    """Defaults of the parameters that apply to ``method`` (filled into configs missing them)."""
    return {k: d.default_for(method) for k, d in PARAMS.items() if method in d.methods}


# --- a parameter's space ------------------------------------------------------------------------------
def same_value(a: Any, b: Any) -> bool:
    """Equal values of one type, or equal numbers (4 == 4.0; never True == 1)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return type(a) is type(b) and a == b


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


# --- parsing a parameter's YAML -------------------------------------------------------------------------
def parse_param(name: str, raw: Any, path: str) -> Param:
    """``raw`` (a fixed value or a one-key distribution mapping) as the :class:`Param` ``name``."""
    d = PARAMS[name]
    if not isinstance(raw, Mapping):
        problem = d.check(raw)
        if problem:
            raise err(path, f"expected {problem}, got {type_name(raw)}")
        return Param(name, "fixed", (raw,))
    kinds = [k for k in raw if k in DIST_KINDS]
    extra = [k for k in raw if k not in (*DIST_KINDS, "log")]
    if extra:
        raise unknown_key(path, str(extra[0]), [*DIST_KINDS, "log"])
    if len(kinds) != 1:
        raise err(path, f"expected exactly one of {', '.join(DIST_KINDS)} (or a fixed value)")
    kind = kinds[0]
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise err(f"{path}.log", f"expected true or false, got {type_name(log)}")
    if log and kind != "int":
        raise err(f"{path}.log", "only applies to int ranges (use loguniform for floats)")
    if kind == "choice":
        return Param(name, "choice", _choices(d, raw[kind], f"{path}.choice"))
    if not d.numeric:
        raise err(f"{path}.{kind}", f"{name} is categorical; use choice: [...] or a fixed value")
    return Param(name, kind, _range(d, kind, raw[kind], f"{path}.{kind}"), log=log)


def _choices(d: ParamDef, vals: Any, path: str) -> tuple[Any, ...]:
    if not isinstance(vals, list) or not vals:
        raise err(path, f"expected a non-empty list of values, got {list_name(vals)}")
    for i, v in enumerate(vals):
        problem = d.check(v)
        if problem:
            raise err(f"{path}[{i}]", f"expected {problem}, got {type_name(v)}")
    if len(set(map(repr, vals))) != len(vals):
        raise err(path, f"duplicate values in {vals}")
    return tuple(vals)


def _range(d: ParamDef, kind: str, vals: Any, path: str) -> tuple[Any, Any]:
    # an int range is accepted for float parameters too (it samples whole numbers)
    if not isinstance(vals, list) or len(vals) != 2:
        raise err(path, f"expected [low, high], got {type_name(vals)}")
    want = "int" if kind == "int" else "float"
    lo, hi = (expect(f"{path}[{i}]", v, want) for i, v in enumerate(vals))
    for i, v in enumerate((lo, hi)):
        problem = d.check(v)
        if problem:
            raise err(f"{path}[{i}]", f"expected {problem}, got {v!r}")
    if not lo < hi:
        raise err(path, f"low must be < high, got [{lo}, {hi}]")
    if kind == "loguniform" and lo <= 0:
        raise err(f"{path}[0]", f"loguniform needs low > 0, got {lo}")
    return lo, hi


def parse_method(raw: Any) -> Param:
    """``method``: a method name or ``{choice: [...]}`` of method names."""
    accepted = ", ".join(METHODS)
    if not isinstance(raw, Mapping):
        if raw not in METHODS:
            raise err("method", f"unknown method {raw!r}{suggest(str(raw), METHODS)}; accepted: {accepted}")
        return Param("method", "fixed", (raw,))
    if set(raw) != {"choice"}:
        raise err("method", "expected a method name or {choice: [...]}; accepted: " + accepted)
    vals = raw["choice"]
    if not isinstance(vals, list) or not vals:
        got = list_name(vals)
        raise err("method.choice", f"expected a non-empty list of methods ({accepted}), got {got}")
    for i, v in enumerate(vals):
        if v not in METHODS:
            raise err(
                f"method.choice[{i}]", f"unknown method {v!r}{suggest(str(v), METHODS)}; accepted: {accepted}"
            )
    return Param("method", "choice", tuple(vals))


def parse_params(raw: Any, method: Param) -> dict[str, Param]:
    """``params``: a mapping of known parameter names, each applying to one of ``method``'s values."""
    raw = raw or {}
    if not isinstance(raw, Mapping):
        raise err("params", f"expected a mapping of parameter names, got {type_name(raw)}")
    params: dict[str, Param] = {}
    for k, v in raw.items():
        if k not in PARAMS:
            raise unknown_key("params", str(k), PARAMS)
        params[k] = parse_param(k, v, f"params.{k}")
        applies = PARAMS[k].methods
        if not any(m in applies for m in method.values):
            raise err(
                f"params.{k}",
                f"only applies to method {' or '.join(repr(m) for m in applies)}, "
                f"but method is {' | '.join(method.values)}",
            )
    return params


# --- the define-by-run space and the grid -----------------------------------------------------------------
# Enumerating the space is linear in its size; beyond this many points a re-proposed point is rare
# (TPE has plenty of untried ones to choose from) and the duplicate check alone is enough.
MAX_ENUMERATED_POINTS = 100_000


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

    def points(self, limit: int = MAX_ENUMERATED_POINTS) -> list[dict[str, Any]] | None:
        """Every point of the space as Optuna trial params (the sampled values only: fixed ones are
        no Optuna params), or None when the space is not finite (a range) or has over ``limit`` points.

        The searcher picks an untried point from these when TPE keeps re-proposing trained ones.
        """
        searched = [p for p in (self.method, *self.params) if not p.fixed]
        if any(p.kind != "choice" for p in searched):
            return None
        methods = self.method.values
        out: list[dict[str, Any]] = []
        for method in methods:
            ps = [p for p in self.params if not p.fixed and method in PARAMS[p.name].methods]
            if len(out) + math.prod(len(p.values) for p in ps) > limit:
                return None
            head = {} if self.method.fixed else {self.method.name: method}
            for combo in itertools.product(*(p.values for p in ps)):
                out.append({**head, **{p.name: v for p, v in zip(ps, combo, strict=True)}})
        return out


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
