"""Where Tune keeps a launch's experiment state and checkpoints: local, NFS or object storage.

The location is, in order of precedence, ``vptsearch launch --storage URI``, ``$VPTSEARCH_STORAGE``,
the spec's ``storage.path``, else ``<run dir>/ray`` (a local folder: fine on one machine).
``s3://bucket/prefix`` goes through an explicit :class:`pyarrow.fs.S3FileSystem`, so S3-compatible
endpoints (MinIO, moto) work: ``$AWS_ENDPOINT_URL_S3`` (else ``$AWS_ENDPOINT_URL``) becomes its
``endpoint_override``. Other URIs pyarrow knows (``gs://``, ``hdfs://``) go through
``pyarrow.fs.FileSystem.from_uri``. A launch's experiments live under ``<storage>/<name>/<stamp>``.

Only Tune's files move: the driver's own small files (``spec.yaml``, ``results.json``,
``optuna.journal``, reports) stay in the local run dir.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pyarrow import fs as pafs

from vptsearch._errors import ConfigError, refuse_control_characters
from vptsearch._net import unreachable

ENV = "VPTSEARCH_STORAGE"
ENDPOINT_ENVS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
OTHER_SCHEMES = ("gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")


@dataclass(frozen=True)
class Storage:
    """A resolved storage location: ``fs`` is ``None`` for local paths (Tune's default)."""

    uri: str  # as the user wrote it (normalised): s3://bucket/prefix or an absolute local path
    path: str  # the path inside ``fs`` (bucket/prefix for S3)
    fs: Any = None  # pyarrow.fs.FileSystem
    shared: bool = False  # every node of the cluster sees it

    @property
    def remote(self) -> bool:
        return self.fs is not None

    def child(self, *parts: str) -> Storage:
        """The same storage, one level (or more) further down."""
        path = "/".join([self.path.rstrip("/"), *parts])
        uri = "/".join([self.uri.rstrip("/"), *parts])
        return Storage(uri, path, self.fs, self.shared)


def is_uri(location: str | os.PathLike[str]) -> bool:
    """True for ``scheme://...`` locations other than ``file://`` (those are plain paths)."""
    scheme = urlparse(os.fspath(location)).scheme
    return "://" in os.fspath(location) and scheme not in ("", "file")


def s3_endpoint() -> tuple[str, Any] | None:
    """``(as given, parsed URL)`` of ``$AWS_ENDPOINT_URL_S3`` / ``$AWS_ENDPOINT_URL``, if set."""
    endpoint = next((os.environ[e] for e in ENDPOINT_ENVS if os.environ.get(e)), None)
    if not endpoint:
        return None
    return endpoint, urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")


def s3_filesystem() -> Any:
    """An S3 filesystem honouring ``$AWS_ENDPOINT_URL_S3`` / ``$AWS_ENDPOINT_URL`` (MinIO, moto).

    Credentials and region come from the usual AWS variables / files (pyarrow's default chain);
    the filesystem is pickled to the trial workers by Tune, which resolve credentials the same way.
    """
    endpoint = s3_endpoint()
    kwargs: dict[str, Any] = {
        "connect_timeout": 5,
        "request_timeout": 30,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3),
    }
    if endpoint:
        parsed = endpoint[1]
        kwargs.update(endpoint_override=parsed.netloc, scheme=parsed.scheme or "https")
        kwargs["region"] = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return pafs.S3FileSystem(**kwargs)


def filesystem(uri: str) -> tuple[Any, str]:
    """``(pyarrow filesystem, path inside it)`` of a URI; ``(None, absolute path)`` for local paths."""
    if not is_uri(uri):
        return None, str(Path(uri.removeprefix("file://")).expanduser().resolve())
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigError(f"storage {uri!r}: expected s3://BUCKET/PREFIX")
        return s3_filesystem(), f"{parsed.netloc}{parsed.path}".rstrip("/")
    if parsed.scheme in OTHER_SCHEMES:
        try:
            return pafs.FileSystem.from_uri(uri)
        except Exception as exc:  # pyarrow raises ArrowInvalid/OSError/... per filesystem
            raise ConfigError(f"storage {uri!r}: {str(exc).splitlines()[0]}") from None
    raise ConfigError(
        f"storage {uri!r}: unknown scheme {parsed.scheme!r}; accepted: a local or NFS path, "
        f"s3://BUCKET/PREFIX, or {', '.join(s + '://' for s in OTHER_SCHEMES)}"
    )


def with_storage(spec: Any, flag: str | None) -> Any:
    """``spec`` with ``storage.path`` resolved: ``--storage`` > ``$VPTSEARCH_STORAGE`` > the spec.

    Local paths become absolute, so the saved spec (and ``--resume``) finds the same folder.
    """
    uri = flag or os.environ.get(ENV) or spec.storage.path
    if not uri:
        return spec
    refuse_control_characters("--storage" if flag else "storage path", uri)
    fs, path = filesystem(uri)
    storage = dataclasses.replace(spec.storage, path=path if fs is None else uri.rstrip("/"))
    return dataclasses.replace(spec, storage=storage)


def launch_storage(spec: Any, run_dir: Path) -> Storage:
    """Where this launch's Tune experiments live: ``<storage.path>/<name>/<stamp>``, else
    ``<run dir>/ray`` (local, not shared)."""
    if not spec.storage.path:
        local = str(Path(run_dir).resolve() / "ray")
        return Storage(local, local, None, shared=False)
    fs, path = filesystem(spec.storage.path)
    root = Storage(spec.storage.path, path, fs, shared=fs is not None or bool(spec.storage.shared))
    return root.child(spec.name, Path(run_dir).name)


def check_storage(store: Storage) -> None:
    """Fail in seconds, with one line, when the storage cannot be written (before Ray starts)."""
    if not store.remote:
        try:
            Path(store.path).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"storage {store.uri!r}: cannot create it ({exc.strerror})") from None
        return
    endpoint = s3_endpoint()
    if endpoint and urlparse(store.uri).scheme == "s3":
        parsed = endpoint[1]
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        reason = unreachable(parsed.hostname or "", port, 5.0)
        if reason is not None:
            raise ConfigError(f"storage {store.uri!r}: S3 endpoint {endpoint[0]} unreachable ({reason})")
    bucket = store.path.split("/", 1)[0]
    try:
        info = store.fs.get_file_info(bucket)  # one request: credentials, endpoint and bucket
    except OSError as exc:
        raise ConfigError(f"storage {store.uri!r}: {str(exc).splitlines()[0]}") from None
    if info.type == pafs.FileType.NotFound:
        raise ConfigError(f"storage {store.uri!r}: bucket {bucket!r} does not exist; create it first")


def upload(local_dir: str | Path, uri: str) -> str:
    """Copy a local folder to ``uri`` (an s3:// or other pyarrow URI); returns ``uri``."""
    fs, path = filesystem(uri)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(str(Path(local_dir).resolve()), path, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)  # fmt: skip
    return uri
