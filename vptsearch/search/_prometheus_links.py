"""The links ``vptsearch monitor`` prints into a running Prometheus's web UI.

Owns what those links depend on: which UI the server serves (:func:`ui_prefix`: the new UI at the
root, or Debian's classic-only builds under ``/classic``) and its version, the targets page
(:func:`targets_url`), graph pages over a time window from a launch's start (:func:`graph_url`),
and the check of that window (:func:`graph_window`, the ``--graph-window`` value). Starting and
configuring Prometheus stays in :mod:`vptsearch.search._monitor`.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
import urllib.request

from vptsearch._errors import ConfigError


def _answers(url: str, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except OSError:  # HTTPError (a 404) included
        return False


def ui_prefix(url: str, timeout: float = 5.0) -> str:
    """Where this Prometheus serves its pages: ``""`` (upstream 2.x's React UI and 3.x's UI:
    ``/targets``, ``/graph``) or ``"/classic"`` (Debian's 2.x packages are built without the React
    UI and serve only the classic one, there: their ``/targets`` is a 404). Asked, not guessed from
    the version: the same version number is either UI depending on the build."""
    for prefix in ("", "/classic"):
        if _answers(f"{url}{prefix}/targets", timeout):
            return prefix
    return ""


def prometheus_version(url: str, timeout: float = 5.0) -> str | None:
    """The server's version (``/api/v1/status/buildinfo``), or None when it does not say."""
    try:
        with urllib.request.urlopen(f"{url}/api/v1/status/buildinfo", timeout=timeout) as resp:
            version = json.loads(resp.read())["data"]["version"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return str(version) if version else None


def targets_url(url: str, prefix: str = "") -> str:
    """A link to Prometheus's targets page (the scraped nodes); ``prefix``: :func:`ui_prefix`."""
    return f"{url}{prefix}/targets"


_SECONDS = {"m": 60, "h": 3600, "d": 86400}


def graph_window(value: str) -> str:
    """``value`` if it is a window :func:`graph_url` can use (``--graph-window``), else ConfigError."""
    # one number and one unit: the classic UI's range field reads no more (1h30m is refused there)
    if not re.fullmatch(r"[1-9][0-9]{0,5}[mhd]", value):
        raise ConfigError(f"--graph-window {value!r}: expected a duration such as 90m, 12h or 2d")
    return value


def graph_url(url: str, *exprs: str, start: float | None = None, window: str = "1h", prefix: str = "") -> str:
    """A link to Prometheus's graph page showing ``exprs`` over ``window`` (``30m``, ``6h``, ``2d``).

    ``start`` (epoch seconds, e.g. the launch's start): the window begins there, so the chart
    shows the launch from its first sample (``g0.end_input`` = start + window, in UTC as every UI
    reads it); without it the window ends now. ``prefix``: :func:`ui_prefix`. The ``g<i>.*``
    parameters are read alike by the classic UI, 2.x's React UI and 3.x's UI.
    """
    params: dict[str, str] = {}
    end = None
    if start is not None:
        seconds = int(window[:-1]) * _SECONDS[window[-1]]
        # minutes: the classic UI's date picker reads YYYY-MM-DD HH:mm; rounded up, to see the start
        end = time.strftime("%Y-%m-%d %H:%M", time.gmtime(start + seconds + 59))
    for i, e in enumerate(exprs):
        params |= {f"g{i}.expr": e, f"g{i}.tab": "0", f"g{i}.range_input": window}
        if end is not None:
            params[f"g{i}.end_input"] = end
    return f"{url}{prefix}/graph?" + urllib.parse.urlencode(params)
