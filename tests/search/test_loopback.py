"""A launch's own Ray listens on 127.0.0.1 only: gcs, raylet, dashboard and its agents, workers, driver.

Started the way a launch without ``--address`` starts it (``_preflight.start_ray``), with the
dashboard; every LISTEN socket of the driver (new since the start) and of every process below it
must be on a loopback address. Ray's default binds most of them on all interfaces.
"""

from __future__ import annotations

import ipaddress
import os


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1 from a dual-stack socket
    return (mapped or addr).is_loopback


def _listening(procs: list) -> dict[tuple[int, str], list[tuple[str, int]]]:
    import psutil

    out: dict[tuple[int, str], list[tuple[str, int]]] = {}
    for p in procs:
        try:
            socks = [c.laddr for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
            name = p.name()
        except psutil.Error:  # exited meanwhile
            continue
        if socks:
            out[(p.pid, name)] = [(a.ip, a.port) for a in socks]
    return out


def test_a_local_launchs_ray_listens_on_loopback_only(monkeypatch) -> None:
    import ray

    from vptsearch.search._preflight import start_ray

    if ray.is_initialized():
        ray.shutdown()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    import psutil  # Ray's vendored copy, importable once Ray is

    me = psutil.Process()
    before = set(_listening([me]).get((me.pid, me.name()), []))
    start_ray(None, dashboard=True)
    try:

        @ray.remote
        def pid() -> int:
            return os.getpid()

        @ray.remote
        class Actor:
            def pid(self) -> int:
                return os.getpid()

        actor = Actor.remote()
        workers = {ray.get(pid.remote()), ray.get(actor.pid.remote())}
        found = _listening([me, *me.children(recursive=True)])
        found[(me.pid, me.name())] = [a for a in found.get((me.pid, me.name()), []) if a not in before]
        names = {name for (_, name) in found}
        assert {"gcs_server", "raylet"} <= names, names  # the listeners are really there
        assert any(pid in workers for (pid, _) in found), "no worker socket seen"
        open_ = {key: [a for a in socks if not _loopback(a[0])] for key, socks in found.items()}
        assert not any(open_.values()), {k: v for k, v in open_.items() if v}
        assert ray.util.get_node_ip_address() == "127.0.0.1"
    finally:
        ray.shutdown()
