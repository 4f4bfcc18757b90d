"""The lake on object storage: immutable content-named objects, published by per-file manifests.

Object stores have no rename, and a reader that fetches a Parquet footer and then its row groups by
range must never meet a file replaced in between. So on ``s3://bucket/prefix`` every lake file is

* an **object** ``<lake>/_objects/<sha256[:32]>/<name>``: written once, never changed, named by its
  content (the file name is kept as the last part so DuckDB's ``filename`` still says which shard);
* published by a **manifest** ``<lake>/_manifests/<logical path>``: a few hundred bytes of JSON naming
  the object, put with a conditional write: ``If-None-Match: *`` for a new file, ``If-Match: <etag>``
  for a replacement, the etag being the one the writer saw when it *started* writing. Two writers that
  race the same file cannot both win: the loser gets :class:`PublishConflict` (unless it wrote the same
  bytes, which is no conflict), and a reader only ever sees a whole, published object.

A writer killed mid-upload leaves an unfinished multipart upload (invisible; an S3 lifecycle rule
``AbortIncompleteMultipartUpload`` reclaims it) or an object no manifest names: nothing is visible
(:mod:`~nait_pipeline.lib.io.vacuum` reclaims such objects, and the ones replaced files leave).

:class:`LakeFileSystem` is an fsspec filesystem (protocol ``naitlake``) that reads through the
manifests, so the lake's code addresses ``naitlake://bucket/prefix/lake/scores/x.parquet`` with the same
pathlib calls (via ``upath.UPath``) as a local folder; writes go through :func:`publish_file` (called
by ``lake.atomic_path``). The endpoint and credentials come from the usual AWS variables
(``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``, ...) or the settings' ``[object_store]`` table; never
from the settings file's secrets, which it does not hold.
"""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

from fsspec import AbstractFileSystem, register_implementation

from nait_pipeline.lib.io.hashing import sha256_file

PROTOCOL = "naitlake"
OBJECTS = "_objects"
MANIFESTS = "_manifests"
UPLOAD_PART_BYTES = 64 * 2**20  # files over twice this go up in parts (a multipart upload)
CACHED_OBJECT_BYTES = 32 * 2**20  # objects up to this size are read whole and kept in memory ...
OBJECT_CACHE_BYTES = 512 * 2**20  # ... up to this much in all (least recently used go first)
_OBJECT_CACHE: OrderedDict[str, bytes] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_VERIFIED: set[str] = set()  # lake roots whose conditional puts were checked in this process
_VERIFY_LOCK = threading.Lock()


class StorageError(RuntimeError):
    """The object store could not be reached or refused a request; the message names the URI."""


class PublishConflict(StorageError):
    """Another writer published a different version of the same lake file first."""


def is_object_store_uri(location: str | Path) -> bool:
    return str(location).startswith("s3://")


def s3_filesystem(endpoint_url: str | None = None):
    try:
        import s3fs
    except ImportError as exc:
        raise StorageError("an s3:// store needs the s3 extra: pip install -e '.[s3]'") from exc

    client_kwargs = {"endpoint_url": endpoint_url} if endpoint_url else {}
    # cache_regions off and no listing cache: a manifest written a moment ago must be seen by the next read.
    return s3fs.S3FileSystem(client_kwargs=client_kwargs, use_listings_cache=False, skip_instance_cache=True)


def _is_missing(exc: BaseException) -> bool:
    return isinstance(exc, FileNotFoundError)


def _is_precondition_failure(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, FileExistsError) or "PreconditionFailed" in text or "pre-condition" in text \
        or "412" in text


class LakeFileSystem(AbstractFileSystem):
    """Manifest-resolving read access to a lake on S3 (see the module docstring).

    ``root`` is the lake's key prefix (``bucket/prefix/lake``); logical paths below it map to a manifest
    ``root/_manifests/<rel>`` naming an object ``root/_objects/<hash>/<name>``.
    """

    protocol = (PROTOCOL,)
    root_marker = ""
    cachable = True

    def __init__(self, root: str, endpoint_url: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.root = root.strip("/")
        self.endpoint_url = endpoint_url
        self.s3 = s3_filesystem(endpoint_url)

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = str(path)
        if path.startswith(f"{PROTOCOL}://"):
            path = path[len(PROTOCOL) + 3:]
        return path.rstrip("/")

    # --- keys -------------------------------------------------------------------------------------------
    def _relative(self, path: str) -> str:
        path = self._strip_protocol(path)
        if path == self.root:
            return ""
        if not path.startswith(self.root + "/"):
            raise ValueError(f"{PROTOCOL}://{path} is outside the lake {PROTOCOL}://{self.root}")
        return path[len(self.root) + 1:]

    def manifest_key(self, path: str) -> str:
        rel = self._relative(path)
        return f"{self.root}/{MANIFESTS}/{rel}" if rel else f"{self.root}/{MANIFESTS}"

    def _logical(self, manifest_key: str) -> str:
        rel = manifest_key[len(f"{self.root}/{MANIFESTS}"):].strip("/")
        return f"{self.root}/{rel}" if rel else self.root

    def uri(self, key: str) -> str:
        return f"s3://{key}"

    def _call(self, what: str, key: str, fn, *args, **kwargs):
        """Run an s3fs call, turning transport failures into errors that name the URI."""
        try:
            return fn(*args, **kwargs)
        except (FileNotFoundError, FileExistsError, PublishConflict):
            raise
        except PermissionError as exc:
            raise StorageError(f"{what} {self.uri(key)}: access denied ({exc}); check the credentials "
                               "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the instance role)") from exc
        except OSError as exc:
            if _is_precondition_failure(exc):
                raise
            raise StorageError(f"{what} {self.uri(key)}: {exc}") from exc
        except Exception as exc:  # botocore's connection errors are not OSErrors
            if _is_precondition_failure(exc):
                raise
            raise StorageError(f"{what} {self.uri(key)}: {type(exc).__name__}: {exc} "
                               f"(endpoint {self.endpoint_url or 'from the AWS environment'})") from exc

    # --- manifests --------------------------------------------------------------------------------------
    def read_manifest(self, path: str) -> tuple[dict, str] | None:
        """The manifest of a logical file and its etag, or None when the file is not published."""
        key = self.manifest_key(path)
        bucket, rest = key.split("/", 1)

        async def get() -> tuple[bytes, str]:
            response = await self.s3._call_s3("get_object", Bucket=bucket, Key=rest)
            async with response["Body"] as stream:
                return await stream.read(), response["ETag"]

        from fsspec.asyn import sync

        try:
            body, etag = self._call("read", key, sync, self.s3.loop, get)
        except FileNotFoundError:
            return None
        return json.loads(body), etag

    def open_published(self, path: str):
        """(source, pyarrow keyword arguments) for the published object of ``path``: its bytes when small
        (cached), else its key on the S3 filesystem. One manifest read; the object itself never changes."""
        manifest = self.read_manifest(path)
        if manifest is None:
            raise FileNotFoundError(f"{PROTOCOL}://{self._strip_protocol(path)}: not published in the lake")
        key, size = manifest[0]["object"], manifest[0]["size"]
        if size <= CACHED_OBJECT_BYTES:
            return self._small_object(key), {}
        return key, {"filesystem": self.s3}

    def object_key(self, path: str) -> str:
        found = self.read_manifest(path)
        if found is None:
            raise FileNotFoundError(f"{PROTOCOL}://{self._strip_protocol(path)}: not published in the lake")
        return found[0]["object"]

    # --- fsspec interface -------------------------------------------------------------------------------
    def info(self, path, **kwargs):
        path = self._strip_protocol(path)
        found = self.read_manifest(path) if path != self.root else None
        if found is not None:
            manifest, etag = found
            return {"name": path, "size": manifest["size"], "type": "file", "object": manifest["object"],
                    "sha256": manifest["sha256"], "mtime": manifest["published_at"], "etag": etag}
        key = self.manifest_key(path)
        listing = self._call("list", key, self.s3.ls, key, detail=False) if self._has_children(key) else []
        if listing or path == self.root:
            return {"name": path, "size": 0, "type": "directory"}
        raise FileNotFoundError(f"{PROTOCOL}://{path}")

    def _has_children(self, key: str) -> bool:
        try:
            return bool(self._call("list", key, self.s3.ls, key, detail=False))
        except FileNotFoundError:
            return False

    def ls(self, path, detail=True, **kwargs):
        path = self._strip_protocol(path)
        key = self.manifest_key(path)
        try:
            entries = self._call("list", key, self.s3.ls, key, detail=True, refresh=True)
        except FileNotFoundError:
            entries = []
        if not entries:
            if path != self.root and self.read_manifest(path) is not None:
                return [self.info(path)] if detail else [path]
            if path == self.root:
                return []
            raise FileNotFoundError(f"{PROTOCOL}://{path}")
        out = [{"name": self._logical(e["name"]), "type": e["type"], "size": e.get("size") if e["type"] == "file"
                else 0} for e in entries]
        return out if detail else [e["name"] for e in out]

    def _open(self, path, mode="rb", **kwargs):
        if mode != "rb":
            raise io.UnsupportedOperation(f"{PROTOCOL}: lake files are published whole through "
                                          "nait_pipeline.lib.io.lake.atomic_path, not opened for writing")
        source, options = self.open_published(path)
        if isinstance(source, bytes):
            return io.BytesIO(source)
        return self._call("open", source, self.s3.open, source, "rb")

    def _small_object(self, key: str) -> bytes:
        """Objects never change, so a small one is fetched once per process (one GET instead of a GET per
        footer, column chunk and page), within a bounded cache."""
        with _CACHE_LOCK:
            data = _OBJECT_CACHE.get(key)
            if data is not None:
                _OBJECT_CACHE.move_to_end(key)
                return data
        data = self._call("read", key, self.s3.cat_file, key)
        with _CACHE_LOCK:
            _OBJECT_CACHE[key] = data
            while sum(len(v) for v in _OBJECT_CACHE.values()) > OBJECT_CACHE_BYTES and len(_OBJECT_CACHE) > 1:
                _OBJECT_CACHE.popitem(last=False)
        return data

    def cat_file(self, path, start=None, end=None, **kwargs):
        with self._open(path) as handle:
            if start is None and end is None:
                return handle.read()
            handle.seek(start or 0)
            return handle.read(None if end is None else end - (start or 0))

    def mkdir(self, path, create_parents=True, **kwargs):
        """Folders exist as soon as a file below them is published."""

    def makedirs(self, path, exist_ok=False):
        """See :meth:`mkdir`."""

    def rm_file(self, path):
        """Unpublish a file (its object stays: objects are immutable and may be shared)."""
        key = self.manifest_key(path)
        self._call("delete", key, self.s3.rm_file, key)

    def _rm(self, path):
        self.rm_file(path)

    def rm(self, path, recursive=False, maxdepth=None):
        paths = self.expand_path(path, recursive=recursive, maxdepth=maxdepth)
        for p in reversed(paths):
            if self.info(p)["type"] == "file":
                self.rm_file(p)

    # --- publication ------------------------------------------------------------------------------------
    def publish_file(self, path: str, local_file: Path, expected_etag: str | None) -> str:
        """Upload ``local_file`` as the object of ``path`` and publish it (see the module docstring).

        ``expected_etag``: the manifest's etag when the write began (None: the file did not exist).
        """
        path = self._strip_protocol(path)
        digest = sha256_file(local_file)
        name = path.rsplit("/", 1)[-1]
        object_key = f"{self.root}/{OBJECTS}/{digest[:32]}/{name}"
        if not self.s3.exists(object_key):
            # put_file uploads big files in parts; an upload that dies is never completed, so never visible.
            self._call("upload", object_key, self.s3.put_file, str(local_file), object_key,
                       chunksize=UPLOAD_PART_BYTES)
        manifest = json.dumps({"object": object_key, "sha256": digest, "size": local_file.stat().st_size,
                               "published_at": time.time()}, sort_keys=True).encode()
        key = self.manifest_key(path)
        bucket, rest = key.split("/", 1)
        condition = {"IfNoneMatch": "*"} if expected_etag is None else {"IfMatch": expected_etag}
        try:
            self._call("publish", key, self.s3.call_s3, "put_object", Bucket=bucket, Key=rest, Body=manifest,
                       **condition)
        except Exception as exc:
            if not _is_precondition_failure(exc):
                raise
            winner = self.read_manifest(path)
            if winner is not None and winner[0]["sha256"] == digest:
                return object_key  # the other writer published the same bytes: nothing to decide
            raise PublishConflict(
                f"{PROTOCOL}://{path}: another writer published a different version while this one was "
                f"writing (manifest {self.uri(key)} changed); rerun to compute from what is there now") from exc
        return object_key

    def check_conditional_puts(self) -> None:
        """Refuse a store that accepts a put whose condition fails (it would let racing writers both win)."""
        with _VERIFY_LOCK:
            if self.root in _VERIFIED:
                return
            probe = f"{self.root}/_probe/{uuid.uuid4().hex}"
            bucket, rest = probe.split("/", 1)
            self._call("write", probe, self.s3.call_s3, "put_object", Bucket=bucket, Key=rest, Body=b"1",
                       IfNoneMatch="*")
            try:
                self._call("write", probe, self.s3.call_s3, "put_object", Bucket=bucket, Key=rest, Body=b"2",
                           IfNoneMatch="*")
                honoured = False
            except Exception as exc:
                if not _is_precondition_failure(exc):
                    raise
                honoured = True
            finally:
                try:
                    self.s3.rm_file(probe)
                except OSError:
                    pass
            if not honoured:
                raise StorageError(
                    f"s3://{self.root}: the object store ignored a conditional put (If-None-Match); "
                    "two writers could both publish the same lake file. Use a store that supports "
                    "conditional writes (AWS S3, MinIO >= 2024-11, Ceph RGW >= 18, R2, GCS's XML API)")
            _VERIFIED.add(self.root)


register_implementation(PROTOCOL, LakeFileSystem, clobber=True)


def _register_path_class() -> None:
    from upath import UPath
    from upath.registry import register_implementation as register_path

    class LakePath(UPath):
        """A path in a lake on an object store: pathlib's interface, resolved through the manifests."""

    register_path(PROTOCOL, LakePath, clobber=True)


_register_path_class()


def lake_root(store: str, endpoint_url: str | None = None):
    """The lake folder of a store: a local ``Path`` or a ``UPath`` on the manifest filesystem.

    For object stores the bucket is checked (it must exist: the pipeline never creates buckets) and
    conditional puts are verified once per process.
    """
    if not is_object_store_uri(store):
        return Path(store) / "lake"
    from upath import UPath

    bucket_and_prefix = str(store)[len("s3://"):].strip("/")
    if not bucket_and_prefix:
        raise ValueError(f"store_dir {store!r}: name a bucket, as s3://bucket/prefix")
    root = f"{bucket_and_prefix}/lake"
    path = UPath(f"{PROTOCOL}://{root}", root=root, endpoint_url=endpoint_url)
    fs = path.fs
    bucket = root.split("/", 1)[0]
    try:
        fs._call("check", bucket, fs.s3.call_s3, "head_bucket", Bucket=bucket)
        exists = True
    except FileNotFoundError:
        exists = False
    except StorageError as exc:
        raise StorageError(f"{store}: the object store is not reachable: {exc}") from exc
    if not exists:
        raise StorageError(f"{store}: bucket s3://{bucket} does not exist (or these credentials cannot see it); "
                           "create it first")
    fs.check_conditional_puts()
    return path


def is_remote(path) -> bool:
    return isinstance(getattr(path, "fs", None), LakeFileSystem)
