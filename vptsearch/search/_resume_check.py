"""``--resume`` continues a launch as it was saved; what is given now must agree with it.

The run dir's ``spec.yaml`` (the merged spec the launch ran) and ``tracking.json`` (the MLflow
store it writes to) are the launch's. ``--resume`` used to take them and silently ignore an
edited space file, ``--set`` and ``--tracking-uri``: the user believed a change was in effect, or
the resumed runs went to another store while the old ones stayed RUNNING. Now the spec given
(space file, ``--set``, ``--smoke``, ``--storage``, normalised as the launch normalises its own)
is compared key by key with the saved one. A key in :data:`SAFE_ON_RESUME` (it changes how the
launch runs, never what the search finds) is applied, in one line; any other difference refuses
the resume in one line naming the first such key, saved vs given. A ``--tracking-uri`` other
than the recorded one is refused; without it the recorded URI is used.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from vptsearch._errors import ConfigError
from vptsearch.data import data_root
from vptsearch.search._rundir import SPEC_FILE
from vptsearch.search._storage import with_storage
from vptsearch.search._tracking_store import resolve_tracking_uri
from vptsearch.spec import SearchSpec, smoke_spec

# The keys a resume may change, and why that is safe. Everything else (the space, the recipe, the
# budget, the searcher, resources, data, tracking) is what the restored Tune experiment, Optuna
# journal and MLflow runs were made with. search.max_concurrent is not here: Tune restores the
# search phase's searcher with the limit it was pickled with, so a new value would half apply.
SAFE_ON_RESUME: Mapping[str, str] = {
    "training.report_every_s": "how often a trial sends progress to Tune (its decisions are the same)",
    "training.checkpoint_every": "which epochs between rungs keep a checkpoint (where a restored trial "
    "restarts, not what it computes)",
    "export.dir": "where the bundles go once the final phase ends",
}
_ABSENT = object()


def resume_spec(
    given: SearchSpec, saved: SearchSpec, run_dir: Path, tracking_uri: str | None, storage: str | None,
    say: Callable[[str], None],
) -> tuple[SearchSpec, str | None]:  # fmt: skip
    """The spec and tracking URI a resume of ``run_dir`` runs with: the saved ones, plus the
    changed keys that are safe (said in one line); a ConfigError for any other change."""
    now = as_launched(given, saved, storage)
    diffs = [(k, s, g) for k, (s, g) in _differences(saved, now).items()]
    unsafe = [d for d in diffs if d[0] not in SAFE_ON_RESUME]
    if unsafe:
        key, was, new = unsafe[0]
        more = f" ({len(unsafe) - 1} more key(s) differ)" if len(unsafe) > 1 else ""
        raise ConfigError(
            f"--resume: {key} is {_show(new)} in the spec given now but {_show(was)} in "
            f"{run_dir / SPEC_FILE}{more}; resume uses the saved spec and may change only "
            f"{', '.join(SAFE_ON_RESUME)}: drop the change (give the launch's --set/--smoke again), "
            "or start a new launch without --resume"
        )
    spec = saved
    for key, _, new in diffs:
        section, name = key.split(".", 1)
        spec = dataclasses.replace(
            spec, **{section: dataclasses.replace(getattr(spec, section), **{name: new})}
        )
    if diffs:
        changes = ", ".join(f"{k} {_show(s)} -> {_show(g)}" for k, s, g in diffs)
        say(f"resume: applying {changes} (safe to change on resume); every other key stays as saved")
    return spec, saved_tracking_uri(run_dir, tracking_uri, say)


def as_launched(given: SearchSpec, saved: SearchSpec, storage: str | None) -> SearchSpec:
    """``given`` normalised as the launch normalised the spec it saved: the data root resolved,
    the Tune storage resolved (``--storage`` > ``$VPTSEARCH_STORAGE`` > the spec); ``--smoke``
    implied when the launch had it (its resume hint names no flags); no storage said at all means
    the saved one (the docs' resume without ``--storage``)."""
    spec = dataclasses.replace(given, data_root=str(data_root(given.data_root)))
    spec = with_storage(spec, storage)
    if saved.smoke and not spec.smoke:
        spec = smoke_spec(spec)
    if spec.storage.path is None:
        spec = dataclasses.replace(spec, storage=dataclasses.replace(spec.storage, path=saved.storage.path))
    return spec


def saved_tracking_uri(run_dir: Path, flag: str | None, say: Callable[[str], None]) -> str | None:
    """The launch's own tracking URI (``tracking.json``); a different ``--tracking-uri`` refused."""
    try:
        saved = json.loads((run_dir / "tracking.json").read_text())["uri"]
    except (OSError, ValueError, KeyError, TypeError):
        return flag  # no record (a launch that never reached MLflow): the URI is chosen as for a launch
    if flag is not None:
        if resolve_tracking_uri(flag) != saved:
            raise ConfigError(
                f"--resume: --tracking-uri {resolve_tracking_uri(flag)!r} given, but the launch in {run_dir} "
                f"tracks to {saved!r} (its tracking.json) and a resume continues those MLflow runs; drop "
                f"--tracking-uri (resume uses the saved one), or copy the launch to the new store with "
                f"`vptsearch sync {run_dir} --tracking-uri {flag}`"
            )
        return saved
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env and resolve_tracking_uri(env) != saved:
        say(f"resume: tracking to the launch's store {saved} (tracking.json), not $MLFLOW_TRACKING_URI={env}")
    return saved


def _flat(spec: SearchSpec) -> dict[str, Any]:
    """``section.key`` -> value of the spec as saved (``params.<name>`` for parameters)."""
    out: dict[str, Any] = {}
    for top, value in spec.to_dict().items():
        kept = getattr(spec, top)
        if isinstance(value, dict) and (isinstance(kept, Mapping) or dataclasses.is_dataclass(kept)):
            out.update({f"{top}.{k}": v for k, v in value.items()})
        else:
            out[top] = value
    return out


def _differences(saved: SearchSpec, given: SearchSpec) -> dict[str, tuple[Any, Any]]:
    """Key -> (saved, given) of the keys whose values differ, in the spec's order."""
    a, b = _flat(saved), _flat(given)
    keys = [*a, *(k for k in b if k not in a)]
    return {k: (a.get(k, _ABSENT), b.get(k, _ABSENT)) for k in keys if a.get(k, _ABSENT) != b.get(k, _ABSENT)}


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "not set"
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."
