"""What a launch checks before its first trial: data, export dir, cluster address and resources.

Everything that can be wrong with the input is one error naming the bad value, raised before Ray
spends a minute retrying an address or every trial fails on the same missing shard. Progress lines
(the mini suite being built, shards verified) go to the module logger unless a caller passes
``say`` (the launch hands its own on).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from vptsearch._atomic import probe_writable
from vptsearch._errors import ConfigError, DataError
from vptsearch._net import unreachable
from vptsearch.data import build_mini, get_task, read_manifest, verify_tasks
from vptsearch.data._tasks import hint_for
from vptsearch.search._exports import check_export_dir
from vptsearch.search._storage import Storage, check_storage, filesystem, is_uri
from vptsearch.spec import SearchSpec

log = logging.getLogger(__name__)
Say = Callable[[str], None]


def check_data(spec: SearchSpec, tasks: list[str], say: Say | None = None) -> None:
    """Every task's manifest must exist with its search and final splits (or be built, for mini)."""
    say = say or log.info
    missing: list[str] = []
    for task in tasks:
        try:
            m = read_manifest(task, spec.data_root)
        except DataError:
            missing.append(task)
            continue
        info = get_task(task, spec.data_root)
        lacking = [s for s in (*info.search_splits, *info.final_splits) if s not in m.splits]
        if lacking:
            raise DataError(
                f"task {task!r} at {m.location} lacks split(s) {', '.join(lacking)}; "
                f"rebuild it with {hint_for(info, spec.data_root)}"
            )
    if not missing:
        return
    mini = [t for t in missing if get_task(t).suite == "mini"]
    if spec.build_missing and len(mini) == len(missing):
        say(f"building the offline mini suite ({', '.join(mini)}) under {spec.data_root} ...")
        available = set(build_mini(spec.data_root, tasks=mini, log_fn=say))
        still = [t for t in mini if t not in available]
        if still:
            raise DataError(f"could not build {', '.join(still)} (source missing); drop them from suite")
        return
    info = get_task(missing[0], spec.data_root)
    raise DataError(
        f"task {missing[0]!r} is not built under data root {spec.data_root}"
        f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; build it with "
        f"{hint_for(info, spec.data_root)}"
    )


def verify_data(spec: SearchSpec, tasks: list[str], say: Say | None = None) -> None:
    """The shards of the splits a launch reads (search and final) match their manifests: size,
    sha256, sample count, every image decodes (vptsearch.data.verify_tasks). A pass is cached per
    manifest and shard stat, so a repeated launch reads no shard; a bad shard is one DataError
    naming it, before Ray starts (instead of every trial failing on it)."""
    say = say or log.info
    t0 = time.perf_counter()
    done = verify_tasks(tasks, spec.data_root)
    checked = sum(v.checked for v in done)
    if checked:
        say(f"verified {checked} samples of {len(done)} task(s) against their manifests "
            f"in {time.perf_counter() - t0:.1f} s (cached for the next launch)")  # fmt: skip


def check_export(spec: SearchSpec) -> None:
    """``export.dir`` must be a writable folder (or a creatable one) before any trial runs: a file
    or read-only folder there used to fail only after the whole search and final phase.

    Local: a probe file is created and removed in the folder, or in its nearest existing parent
    (permission bits do not tell: root passes them on ``/proc`` or a read-only mount). Object
    storage: its endpoint and bucket are checked as for Tune's storage (``check_storage``).
    """
    dest = str(spec.export_dir)
    if is_uri(dest):
        fs, path = filesystem(dest)
        try:
            check_storage(Storage(dest, path, fs, shared=True))
        except ConfigError as exc:
            raise ConfigError(f"export.dir: {exc}") from None
        return
    target = check_export_dir(dest, create=False)
    while not target.exists():
        target = target.parent
    try:
        probe_writable(target)
    except OSError as exc:
        raise ConfigError(
            f"export dir {dest!r}: {str(target)!r} cannot be written ({exc.strerror}); accepted: a "
            "writable folder (created if missing) or s3://BUCKET/PREFIX"
        ) from None


def check_address(address: str, timeout: float = 5.0) -> None:
    """Refuse an unreachable ``--address`` before Ray spends a minute retrying it."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address {address!r}: expected HOST:PORT, ray://HOST:PORT or auto")
    reason = unreachable(host, int(port), timeout)
    if reason is not None:
        raise ConfigError(
            f"--address {address!r}: Ray cluster unreachable ({reason}); "
            "start it with `ray start --head` or omit --address for a local cluster"
        )


def check_ray_home() -> None:
    """A local Ray with token auth (Ray's default) writes its token to ``~/.ray/auth_token`` when
    none exists: with HOME read-only (or not a folder) ``ray.init`` would fail half-way through
    starting its processes. Checked (a probe file in ``~/.ray``) only when Ray will write there:
    auth not disabled, no token in ``$RAY_AUTH_TOKEN``/``$RAY_AUTH_TOKEN_PATH``, none on disk yet.
    """
    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token":
        return
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return
    home = Path.home()
    folder = home / ".ray"
    if (folder / "auth_token").is_file():
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe_writable(folder)
    except OSError as exc:
        raise ConfigError(
            f"HOME ({home}): {folder} cannot be written ({exc.strerror}), and a local Ray keeps its "
            "auth token there; make HOME writable, point HOME at a writable folder, or give Ray a "
            "token with $RAY_AUTH_TOKEN_PATH (a file) or $RAY_AUTH_TOKEN"
        ) from None


def start_ray(address: str | None, dashboard: bool) -> str | None:
    """Join ``address`` (else ``$RAY_ADDRESS``, else a local Ray of our own); the dashboard URL."""
    from vptsearch.search._compat import loopback_node_ip  # Ray internals live there

    # Without an address, ray.init() would join whatever cluster `ray start` left on this machine
    # (it reads /tmp/ray/ray_current_cluster); the docs promise a local Ray of our own unless the
    # user asks for one with --address or $RAY_ADDRESS.
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    # A Ray of our own listens on 127.0.0.1 only (gcs, raylet, agents, workers, metrics export):
    # nothing else joins it, and on all interfaces anyone on the network could submit work to it.
    # A joined cluster keeps its own settings.
    local = address == "local"
    if local:
        check_ray_home()
    node: dict[str, Any] = {"_node_ip_address": "127.0.0.1"} if local else {}
    try:
        with loopback_node_ip() if local else contextlib.nullcontext():
            ctx = ray.init(
                address=address,
                include_dashboard=dashboard,
                dashboard_host="127.0.0.1",
                logging_level=logging.WARNING,
                configure_logging=True,
                ignore_reinit_error=True,
                log_to_driver=False,  # workers only log checkpoint chatter; errors come back through Tune
                **node,
            )
    except ConnectionError as exc:
        raise ConfigError(f"--address {address!r}: {str(exc).splitlines()[0]}") from None
    url = getattr(ctx, "dashboard_url", None)
    return f"http://{url}" if url and not url.startswith("http") else url


def check_resources(spec: SearchSpec) -> None:
    """One trial's ``resources`` must fit the cluster Ray just joined (else Tune waits forever)."""
    have = ray.cluster_resources()
    for key, need in (("CPU", spec.resources.cpu), ("GPU", spec.resources.gpu)):
        if need > have.get(key, 0):
            raise ConfigError(
                f"resources.{key.lower()}: a trial needs {need} but the cluster has "
                f"{have.get(key, 0)}; lower it or add nodes"
            )
