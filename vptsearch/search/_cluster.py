"""Running on a Ray cluster: the backbone in the object store, and multi-node preflight checks.

* **Backbone**: the driver loads the weights once and ``ray.put``\\ s the state dict together with
  the architecture card (:func:`share_backbone`); trial workers rebuild the model from that object
  (:meth:`SharedBackbone.get`, cached per process), so a worker node needs no copy of the weights
  file and no trial re-reads or re-hashes it. The sha256 travels with the card: it stays the
  driver's.
* **Multi-node**: with more than one alive node, Tune's storage must be shared
  (:func:`check_shared_storage`) and every node that can host a trial must see the data root
  (:func:`check_nodes_data`, a zero-CPU Ray task pinned to each node). Both run before any trial.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray
import timm
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from vptsearch._errors import ConfigError, DataError
from vptsearch.data import get_task, read_manifest
from vptsearch.data._tasks import hint_for
from vptsearch.models.backbones import Backbone

log = logging.getLogger(__name__)
_CACHE: OrderedDict[str, Any] = OrderedDict()  # object ref hex -> Backbone, per worker process
_CACHE_SIZE = 2
_LOCK = threading.Lock()


# --- backbone through the object store ------------------------------------------------------------
@dataclass(frozen=True)
class SharedBackbone:
    """A handle on the driver's backbone in the object store (small: pickled into every trial).

    The ObjectRef sits inside this wrapper on purpose: ``tune.with_parameters`` resolves a bare
    ObjectRef argument on every trial call, which would deserialise the weights per trial instead
    of once per worker process.
    """

    ref: Any
    sha256: str | None

    def get(self) -> Any:
        """The :class:`~vptsearch.models.Backbone`, fetched and built once per process."""
        key = self.ref.hex()
        with _LOCK:
            if key in _CACHE:
                _CACHE.move_to_end(key)
                return _CACHE[key]
        payload = ray.get(self.ref)
        backbone = build_backbone(payload["card"], payload["state"])
        with _LOCK:
            _CACHE[key] = backbone
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        return backbone


def share_backbone(backbone: Any) -> SharedBackbone:
    """Put ``backbone``'s weights and card into the object store once (the driver calls this)."""
    card = {f.name: getattr(backbone, f.name) for f in dataclasses.fields(backbone) if f.name != "model"}
    state = {k: v.detach().cpu() for k, v in backbone.model.state_dict().items()}
    return SharedBackbone(ray.put({"card": card, "state": state}), backbone.sha256)


def build_backbone(card: dict[str, Any], state: dict[str, Any]) -> Any:
    """A frozen eval-mode timm ViT from an architecture card and its state dict (no file read)."""
    kwargs = {k: v for k, v in card["model_kwargs"].items() if k != "num_classes"}
    model = timm.create_model(card["architecture"], pretrained=False, num_classes=0, **kwargs)
    model.load_state_dict(state, strict=True)
    return Backbone(model=model.eval(), **card)


# --- multi-node preflight -------------------------------------------------------------------------
def alive_nodes() -> list[dict[str, Any]]:
    return [n for n in ray.nodes() if n.get("Alive")]


def _can_host(node: dict[str, Any], cpu: float, gpu: float) -> bool:
    res = node.get("Resources", {})
    return res.get("CPU", 0) >= cpu and res.get("GPU", 0) >= gpu


def _node_name(node: dict[str, Any]) -> str:
    return f"{node.get('NodeManagerAddress', '?')} (node {node['NodeID'][:12]})"


def check_shared_storage(store: Any, n_nodes: int) -> None:
    """Refuse a plain local storage path on a multi-node cluster unless it is declared shared."""
    if n_nodes <= 1 or store.shared:
        return
    raise ConfigError(
        f"the Ray cluster has {n_nodes} alive nodes but Tune's storage {store.uri} is a local path: "
        "trials on other nodes could not save or restore checkpoints; pass --storage s3://BUCKET/PREFIX "
        "(or $VPTSEARCH_STORAGE), or an NFS path every node mounts with storage.shared: true"
    )


def _missing_tasks(tasks: list[str], root: str) -> list[str]:
    """Runs on a node: the tasks whose manifest is not readable under ``root`` there."""
    missing = []
    for task in tasks:
        try:
            read_manifest(task, root)
        except (DataError, OSError):
            missing.append(task)
    return missing


def check_nodes_data(tasks: list[str], root: str, nodes: list[dict[str, Any]], timeout: float = 60.0) -> None:
    """Every node must read every task's manifest under ``root`` (one zero-CPU task per node)."""
    probe = ray.remote(num_cpus=0, max_retries=0)(_missing_tasks)
    refs = {
        probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
            tasks, root
        ): n
        for n in nodes
    }
    try:
        answers = ray.get(list(refs), timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        raise DataError(f"data check on {len(nodes)} node(s) timed out after {timeout:.0f} s") from None
    for node, missing in zip(refs.values(), answers, strict=True):
        if missing:
            info = get_task(missing[0], root)
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DataError(
                f"node {_node_name(node)} cannot read task {missing[0]!r}{more} under data root {root}; "
                f"build it there with {hint_for(info, root)}, or put the data root on storage every "
                "node mounts"
            )


def preflight(spec: Any, store: Any, tasks: list[str], say: Callable[[str], None] | None = None) -> int:
    """Multi-node checks (storage shared, data on every trial node); returns the alive node count.

    ``say``: where the cluster line goes (default: this module's logger, INFO)."""
    say = say or log.info
    nodes = alive_nodes()
    if len(nodes) <= 1:
        return len(nodes)
    check_shared_storage(store, len(nodes))
    hosts = [n for n in nodes if _can_host(n, spec.resources.cpu, spec.resources.gpu)]
    say(f"  cluster:        {len(nodes)} nodes ({len(hosts)} can host a trial); storage {store.uri}")
    check_nodes_data(tasks, spec.data_root, hosts)
    return len(nodes)
