"""Loading a spec: YAML file -> ``--set`` overrides -> :func:`spec_from_dict` (types, ranges, then the
checks that involve two keys) -> ``--smoke``. Every error is one line naming the key path."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from vptsearch._errors import ConfigError
from vptsearch.spec._fields import parse_fields
from vptsearch.spec._messages import err, type_name
from vptsearch.spec._schema import SearchSpec


def warm_start_journal(source: str | Path) -> Path | None:
    """The optuna.journal of an earlier launch given its run dir (or the journal file); None if absent."""
    path = Path(source).expanduser()
    journal = path / "optuna.journal" if path.is_dir() else path
    return journal if journal.is_file() and journal.name.endswith("journal") else None


def spec_from_dict(raw: Any, *, source: str = "<spec>") -> SearchSpec:
    """Validate a parsed YAML mapping into a :class:`SearchSpec` (raises :class:`ConfigError`)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: expected a YAML mapping at the top level, got {type_name(raw)}")
    spec = _paper_ratios(parse_fields(SearchSpec, raw, "", source=source), raw)
    _check_combinations(spec)
    return spec


def _paper_ratios(spec: SearchSpec, raw: Mapping[str, Any]) -> SearchSpec:
    """Paper ratios when not given: 10 % of the epochs for warm-up and for ASHA's grace period."""
    epochs = spec.training.epochs
    if "warmup_epochs" not in (raw.get("training") or {}):
        spec = replace(spec, training=replace(spec.training, warmup_epochs=epochs // 10))
    if "grace_period" not in (raw.get("scheduler") or {}):
        spec = replace(spec, scheduler=replace(spec.scheduler, grace_period=max(1, epochs // 10)))
    return spec


def _check_combinations(spec: SearchSpec) -> None:
    """The checks that involve more than one key (each key alone was checked by its field)."""
    s, sch, tr = spec.search, spec.scheduler, spec.training
    if s.warm_start != "none":
        if s.algorithm == "grid":
            raise err("search.warm_start", "a grid search tries every configuration anyway; accepted: none")
        if s.warm_start != "launch" and warm_start_journal(s.warm_start) is None:
            raise err(
                "search.warm_start",
                f"{s.warm_start!r} is neither none, launch nor an earlier launch's run dir "
                "(no optuna.journal there)",
            )
    if sch.type == "asha" and sch.grace_period > tr.epochs:
        raise err("scheduler.grace_period", f"{sch.grace_period} exceeds training.epochs ({tr.epochs})")
    if not 0 <= tr.warmup_epochs < tr.epochs:
        raise err(
            "training.warmup_epochs",
            f"expected 0 <= warmup_epochs < epochs ({tr.epochs}), got {tr.warmup_epochs}",
        )
    if tr.device == "cuda" and spec.resources.gpu <= 0:
        raise err("training.device", "cuda needs resources.gpu > 0 (Ray hides GPUs from trials without one)")
    if s.algorithm == "grid":
        if spec.method.kind not in ("fixed", "choice"):
            raise err("method", "grid search needs a fixed method or a choice list")
        for p in spec.params.values():
            p.grid_values()


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
