"""Model registry: immutable checkpoint versions with lineage, and movable aliases such as `production`.

    ROOT/NAME/versions/v0003/       a verified, never-modified copy of a checkpoint directory
    ROOT/NAME/versions/v0003.json   its version record (lineage + metrics); written last, so a version
                                    exists only once its record does
    ROOT/NAME/versions/v0003.claim  (object stores) the exclusive claim on the number
    ROOT/NAME/aliases.json          {"aliases": {"production": "v0003"}, "history": [...]}: the current
                                    targets and every move, in one file so one write updates both
    ROOT/NAME/.lock                 (local) flock'ed around every read-modify-write of aliases.json

Why this shape: serving and warm starts need `registry://NAME@production` to name exactly one complete,
checksummed checkpoint, and two campaigns finishing at once, on different machines, must not lose a
promotion. ROOT may be a local folder or s3:// (AWS or any S3-compatible store via AWS_ENDPOINT_URL).

Why conditional writes on S3 (and not a database): the registry must work wherever the checkpoints are,
with nothing else to run or secure. S3 has strong read-after-write consistency and conditional PUTs,
which is how table formats (Delta, Iceberg) commit on object storage: a version number is claimed with
`If-None-Match: *` (one writer wins, the others take the next number), and aliases.json is replaced
with `If-Match: <ETag it was read at>` (compare-and-swap); a writer that lost the race re-reads and
decides again, so a promotion decided on stale state is re-decided, never lost. Locally the same
guarantees come from an exclusive `mkdir` and an flock. Other pyarrow filesystems (gs://, ...) use a
lock file on this machine: safe for writers on one machine only.

No torch at import: checkpoint verification imports `seqctr.platform.model.checkpoint` only when needed, so
`seqctr models list` stays fast.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import random
import re
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from seqctr.platform.config import ExperimentConfig
from seqctr.platform.runs import resolve_latest
from seqctr.platform.storage import atomic_dir, atomic_write_text, default_file_mode, filesystem_for, is_uri

SCHEME = "registry://"
DEFAULT_ALIAS = "production"
MANIFEST = "manifest.json"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_VERSION_RE = re.compile(r"^v?(\d+)$")
_SLOT_RE = re.compile(r"^v(\d+)(\.json|\.claim)?$")
_LOWER_IS_BETTER = {"loss", "logloss", "error", "ece", "mse", "rmse", "mae"}


class RegistryError(ValueError):
    """Unknown model, version or alias, a malformed ref, or a refused registry operation."""


@dataclass(frozen=True)
class VersionRecord:
    """One immutable version: where its checkpoint lives and where it came from."""

    name: str
    version: str
    created: str
    path: str
    source: str
    run_id: str
    trial_config: dict[str, Any] = field(default_factory=dict)
    data_fingerprint: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    parent: str | None = None
    manifest_sha256: str = ""

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def uri(self) -> str:
        return f"{SCHEME}{self.ref}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> VersionRecord:
        return cls(**{k: v for k, v in raw.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class PromotionResult:
    """What `promote` decided: whether the alias moved, why, and the two metric values compared."""

    name: str
    alias: str
    candidate: str
    previous: str | None
    moved: bool
    reason: str
    metric: str
    candidate_value: float | None
    previous_value: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------- refs
def version_name(number: int) -> str:
    return f"v{number:04d}"


def parse_version(version: str | int) -> str:
    """'3', 'v3', 'v0003' or 3 -> 'v0003'."""
    match = _VERSION_RE.match(str(version).strip())
    if not match or int(match.group(1)) < 1:
        raise RegistryError(f"malformed version {version!r}: expected v1, v0003 or 3")
    return version_name(int(match.group(1)))


def parse_ref(ref: str) -> tuple[str, str | None]:
    """'NAME', 'NAME@v3', 'NAME@3', 'NAME@ALIAS' (optionally prefixed registry://) -> (name, selector)."""
    text = ref[len(SCHEME) :] if ref.startswith(SCHEME) else ref
    name, sep, selector = text.partition("@")
    if not _NAME_RE.match(name) or (sep and not selector) or "@" in selector:
        raise RegistryError(f"malformed model ref {ref!r}: expected NAME, NAME@VERSION (v3) or NAME@ALIAS (production)")
    return name, (selector or None)


def _check_name(name: str) -> None:
    if not _NAME_RE.match(name or ""):
        raise RegistryError(f"invalid model name {name!r}: use letters, digits, '.', '_' or '-'")


def _check_alias(alias: str) -> None:
    if not _ALIAS_RE.match(alias or "") or alias == "latest" or _VERSION_RE.match(alias):
        raise RegistryError(
            f"invalid alias {alias!r}: start with a letter, use letters, digits, '_' or '-'; "
            "'latest' and version-like names are reserved"
        )


def lower_is_better(metric: str) -> bool:
    """Loss-like metrics (logloss, ece, rmse, ...) improve downwards; AUC-like ones upwards."""
    return bool(set(metric.lower().split("_")) & _LOWER_IS_BETTER)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _cache_root() -> Path:
    return Path(os.environ.get("SEQCTR_CACHE_DIR") or Path(tempfile.gettempdir()) / "seqctr-cache")


def _next_slot(names: list[str]) -> str:
    """The version after every claimed slot (a record or a folder, complete or not)."""
    numbers = [int(m.group(1)) for m in map(_SLOT_RE.match, names) if m]
    return version_name(max(numbers, default=0) + 1)


# --------------------------------------------------------------------------------- verification
def _verify_local(path: str | os.PathLike) -> dict[str, Any]:
    from seqctr.platform.model.checkpoint import verify_checkpoint

    return verify_checkpoint(path)


def _fetch_shared(source: str, local: Path) -> None:
    from seqctr.platform.model.checkpoint import fetch_shared

    fetch_shared(source, local)


def _copy_files(src: Path, dst: str, files: list[str], fs: pafs.FileSystem) -> None:
    """Copy the manifest's files (only those: a checkpoint is exactly what its manifest lists)."""
    for name in files:
        pafs.copy_files(
            str(src / name), f"{dst}/{name}", source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs
        )


def _sha256_stream(fs: pafs.FileSystem, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_copy(fs: pafs.FileSystem, dst: str, src: Path, manifest: dict[str, Any], manifest_sha: str) -> None:
    """Every copied file must hash to what was verified in the source, the manifest included."""
    wanted = {**{name: entry["sha256"] for name, entry in manifest["files"].items()}, MANIFEST: manifest_sha}
    for name, sha in wanted.items():
        if _sha256_stream(fs, f"{dst}/{name}") != sha:
            raise RegistryError(
                f"copy of checkpoint {src} is corrupt: sha256 mismatch in {name} (damaged in transit, or the "
                "source changed meanwhile); not registered"
            )


# ------------------------------------------------------------------------------------- storage
_CAS_ATTEMPTS = 50


class _Store:
    """Registry files on a pyarrow filesystem: listing, reading, atomic writes, exclusive claims, and
    read-modify-write transactions on a small JSON file.

    Local (or a shared POSIX mount): exclusive `mkdir`/`O_EXCL` claims and an flock. S3 (and
    S3-compatible stores): conditional PUTs, so writers on different machines need nothing but the
    store: `If-None-Match: *` claims a key only if no one has it, `If-Match: ETAG` replaces a file only
    if it is still the version that was read (compare-and-swap, retried on a lost race). Any other
    pyarrow filesystem falls back to a lock file on this machine (safe for writers on one machine).
    """

    def __init__(self, fs: pafs.FileSystem, base: str, display: str) -> None:
        self.fs, self.base, self.display = fs, base.rstrip("/"), display.rstrip("/")
        self.local = isinstance(fs, pafs.LocalFileSystem)
        self.s3 = isinstance(fs, pafs.S3FileSystem)
        self._client: Any = None

    def path(self, rel: str) -> str:
        return f"{self.base}/{rel}" if rel else self.base

    def join(self, rel: str) -> str:
        return f"{self.display}/{rel}" if rel else self.display

    def list_dir(self, rel: str) -> list[str]:
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(rel), allow_not_found=True))
        return sorted(info.base_name for info in infos)

    def read_text(self, rel: str) -> str | None:
        if self.s3:  # one GET: pyarrow's ranged reads could mix two versions of a file being replaced
            return self._s3_get(rel)[0]
        if self.fs.get_file_info(self.path(rel)).type != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(self.path(rel)) as fh:
            return fh.read().decode("utf-8")

    def write_text(self, rel: str, text: str) -> None:
        if self.local:
            atomic_write_text(self.path(rel), text)
            return
        with self.fs.open_output_stream(self.path(rel)) as fh:  # one PUT: the object appears whole
            fh.write(text.encode("utf-8"))

    # ------------------------------------------------------------------ S3 conditional writes
    def _s3(self) -> Any:
        """A boto3 client for the bucket's region; the endpoint comes from AWS_ENDPOINT_URL, credentials
        from the standard AWS chain (as for pyarrow)."""
        if self._client is None:
            import boto3

            self._client = boto3.client("s3", region_name=self.fs.region or None)
        return self._client

    def _key(self, rel: str) -> tuple[str, str]:
        bucket, _, key = self.path(rel).partition("/")
        return bucket, key

    def _s3_get(self, rel: str) -> tuple[str | None, str | None]:
        from botocore.exceptions import ClientError

        bucket, key = self._key(rel)
        try:
            got = self._s3().get_object(Bucket=bucket, Key=key)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None, None
            raise
        return got["Body"].read().decode("utf-8"), got["ETag"]

    def _s3_put_if(self, rel: str, text: str, etag: str | None) -> bool:
        """PUT only if the key is still at `etag` (None: only if it does not exist). False if another
        writer got there first."""
        from botocore.exceptions import ClientError

        bucket, key = self._key(rel)
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            self._s3().put_object(Bucket=bucket, Key=key, Body=text.encode("utf-8"), **condition)
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code")
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                return False
            raise
        return True

    # ------------------------------------------------------------------ claims and transactions
    def claim(self, rel: str, text: str = "") -> bool:
        """Create `rel` only if it does not exist yet; False if it does (another writer has it)."""
        if self.s3:
            return self._s3_put_if(rel, text, None)
        if self.local:
            Path(self.path(rel)).parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.path(rel), os.O_CREAT | os.O_EXCL | os.O_WRONLY, default_file_mode())
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            return True
        if self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound:  # under the caller's lock
            return False
        self.write_text(rel, text)
        return True

    def transact(self, name: str, rel: str, change: Any) -> Any:
        """Apply `change(text | None) -> (result, new_text | None)` to `rel` atomically and return result.

        `change` sees the current contents and decides afresh on every attempt, so a decision is never
        made on stale state: on S3 a lost compare-and-swap re-reads and re-decides; elsewhere the
        read-decide-write runs under the lock. new_text None means nothing to write.
        """
        if not self.s3:
            with self.lock(name):
                result, new_text = change(self.read_text(rel))
                if new_text is not None:
                    self.write_text(rel, new_text)
                return result
        for attempt in range(_CAS_ATTEMPTS):
            text, etag = self._s3_get(rel)
            result, new_text = change(text)
            if new_text is None or self._s3_put_if(rel, new_text, etag):
                return result
            time.sleep(random.uniform(0, min(1.0, 0.02 * 2**attempt)))  # lost a race: back off, re-read
        raise RegistryError(f"{self.join(rel)}: still contended after {_CAS_ATTEMPTS} attempts; retry")

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """An exclusive flock: ROOT/NAME/.lock locally, a per-(root, model) file in the cache otherwise
        (other stores than S3: writers on one machine only)."""
        if self.local:
            path = Path(self.path(name)) / ".lock"
        else:
            key = hashlib.sha256(f"{self.display}/{name}".encode()).hexdigest()[:16]
            path = _cache_root() / "locks" / f"{key}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def install_version(self, name: str, src: Path, manifest: dict[str, Any], manifest_sha: str) -> str:
        """Copy `src` in as the next free version; the slot is claimed exclusively, the copy checked.

        Object store: the slot is claimed with a `vNNNN.claim` key, the files are copied into
        `vNNNN/` and checked; the caller's record `vNNNN.json`, written last, makes it visible.
        """
        files = [*manifest["files"], MANIFEST]
        versions = self.path(f"{name}/versions")
        self.fs.create_dir(versions, recursive=True)
        if not self.local:
            version = self._claim_slot(name)
            try:
                _copy_files(src, f"{versions}/{version}", files, self.fs)
                _check_copy(self.fs, f"{versions}/{version}", src, manifest, manifest_sha)
            except BaseException:
                with contextlib.suppress(OSError):
                    self.fs.delete_dir(f"{versions}/{version}")
                raise
            return version
        tmp = Path(versions) / f".tmp-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir()
            _copy_files(src, str(tmp), files, self.fs)
            _check_copy(self.fs, str(tmp), src, manifest, manifest_sha)
            _verify_local(tmp)
            for _ in range(10_000):
                version = _next_slot(os.listdir(versions))
                try:
                    os.mkdir(Path(versions) / version)  # the exclusive claim
                except FileExistsError:
                    continue  # another writer took it: try the next number
                os.replace(tmp, Path(versions) / version)  # rename onto the empty claimed folder
                return version
            raise RegistryError(f"could not claim a version slot under {versions}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def install_shared(self, name: str, src: Path, manifest: dict[str, Any]) -> None:
        """Copy the checkpoint's shared tables (see checkpoint.py) to NAME/tables/SHA.safetensors, once per
        table: content-addressed, so versions that share a table store it once, and a copy that is
        already there is the same bytes. Checked after the copy, before any version refers to it."""
        from seqctr.platform.model.checkpoint import TABLES_DIR, shared_files, shared_table_name

        located = shared_files(src)
        for table, entry in manifest.get("shared", {}).items():
            rel = f"{name}/{TABLES_DIR}/{shared_table_name(entry['sha256'])}"
            if self.fs.get_file_info(self.path(rel)).type == pafs.FileType.File:
                continue
            tmp = f"{rel}.tmp-{uuid.uuid4().hex[:8]}" if self.local else rel
            self.fs.create_dir(self.path(f"{name}/{TABLES_DIR}"), recursive=True)
            pafs.copy_files(
                located[table], self.path(tmp), source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs
            )
            if _sha256_stream(self.fs, self.path(tmp)) != entry["sha256"]:
                self.fs.delete_file(self.path(tmp))
                raise RegistryError(f"copy of the shared table {located[table]} is corrupt (sha256 mismatch)")
            if tmp != rel:
                self.fs.move(self.path(tmp), self.path(rel))

    def _claim_slot(self, name: str) -> str:
        """The next version number, claimed with an exclusive create (the next number on conflict)."""
        stamp = json.dumps({"claimed": _now(), "by": f"{socket.gethostname()}:{os.getpid()}"})
        if self.s3:
            for _ in range(10_000):
                version = _next_slot(self.list_dir(f"{name}/versions"))
                if self.claim(f"{name}/versions/{version}.claim", stamp):
                    return version
        else:
            with self.lock(name):
                version = _next_slot(self.list_dir(f"{name}/versions"))
                if self.claim(f"{name}/versions/{version}.claim", stamp):
                    return version
        raise RegistryError(f"could not claim a version slot under {self.join(f'{name}/versions')}")

    def write_record(self, rel: str, text: str) -> None:
        """The version record, written once: on S3 with If-None-Match, so no writer can replace it."""
        if self.s3:
            if not self._s3_put_if(rel, text, None):
                raise RegistryError(f"{self.join(rel)} already exists: its slot was claimed twice")
            return
        self.write_text(rel, text)

    def download(self, rel: str, local_dir: Path) -> None:
        pafs.copy_files(
            self.path(rel), str(local_dir), source_filesystem=self.fs, destination_filesystem=pafs.LocalFileSystem()
        )


# ------------------------------------------------------------------------------------ registry
class Registry:
    """A registry rooted at a local folder or a pyarrow.fs URI (or a path inside `filesystem`)."""

    def __init__(self, root: str | os.PathLike, filesystem: pafs.FileSystem | None = None) -> None:
        if filesystem is None:
            filesystem, base = filesystem_for(root)
            display = str(root) if is_uri(root) and not isinstance(filesystem, pafs.LocalFileSystem) else base
        else:
            base = display = str(root)
        self.root = display
        self._store = _Store(filesystem, base, display)

    def __repr__(self) -> str:
        return f"Registry({self.root!r})"

    # ------------------------------------------------------------------ reading
    def list_models(self) -> list[str]:
        return [n for n in self._store.list_dir("") if _NAME_RE.match(n) and self._has_model(n)]

    def _has_model(self, name: str) -> bool:
        return any(_is_record(n) for n in self._store.list_dir(f"{name}/versions"))

    def _require_model(self, name: str) -> None:
        _check_name(name)
        if not self._has_model(name):
            known = ", ".join(self.list_models()) or "none"
            raise RegistryError(f"unknown model {name!r} in registry {self.root} (models: {known})")

    def _read_json(self, rel: str) -> dict[str, Any] | None:
        text = self._store.read_text(rel)
        return None if text is None else _json_object(text, self._store.join(rel))

    def _read_record(self, name: str, version: str) -> VersionRecord | None:
        raw = self._read_json(f"{name}/versions/{version}.json")
        if raw is None:
            return None
        return VersionRecord.from_dict({**raw, "path": self._store.join(f"{name}/versions/{version}")})

    def list_versions(self, name: str) -> list[VersionRecord]:
        """Every registered version of `name`, oldest first."""
        self._require_model(name)
        names = [n[: -len(".json")] for n in self._store.list_dir(f"{name}/versions") if _is_record(n)]
        records = [self._read_record(name, v) for v in sorted(names, key=lambda v: int(v[1:]))]
        return [r for r in records if r is not None]

    def _state(self, name: str) -> dict[str, Any]:
        rel = f"{name}/aliases.json"
        return _parse_state(self._store.read_text(rel), self._store.join(rel))

    def aliases(self, name: str) -> dict[str, str]:
        """Alias -> version of `name` (e.g. {'production': 'v0003'})."""
        self._require_model(name)
        return self._state(name)["aliases"]

    def alias_history(self, name: str) -> list[dict[str, Any]]:
        """Every alias move, oldest first: time, alias, action, from, to (and reason for promotions)."""
        self._require_model(name)
        return self._state(name)["history"]

    def get(self, ref: str) -> VersionRecord:
        """Resolve NAME (production if set, else latest), NAME@v3 / NAME@3, NAME@latest or NAME@ALIAS."""
        name, selector = parse_ref(ref)
        self._require_model(name)
        aliases = self._state(name)["aliases"]
        if selector is None:
            selector = DEFAULT_ALIAS if DEFAULT_ALIAS in aliases else "latest"
        if selector == "latest":
            return self.list_versions(name)[-1]
        if _VERSION_RE.match(selector):
            record = self._read_record(name, parse_version(selector))
            if record is None:
                known = ", ".join(r.version for r in self.list_versions(name))
                raise RegistryError(f"unknown version {parse_version(selector)} of model {name!r} (versions: {known})")
            return record
        if selector not in aliases:
            known = ", ".join(sorted(aliases)) or "none"
            raise RegistryError(f"unknown alias {selector!r} of model {name!r} (aliases: {known})")
        record = self._read_record(name, aliases[selector])
        if record is None:
            raise RegistryError(
                f"alias {selector!r} of model {name!r} points to version {aliases[selector]}, which does not "
                f"exist in {self.root}"
            )
        return record

    def checkpoint_path(self, ref: str) -> str:
        """The version's checkpoint folder inside the registry (a local path or a URI)."""
        return self.get(ref).path

    def local_checkpoint(self, ref: str) -> str:
        """A verified local checkpoint folder for `ref`; remote versions are downloaded once to a cache."""
        record = self.get(ref)
        if self._store.local:
            _verify_local(record.path)
            return record.path
        target = self._cache_dir() / record.name / record.version
        if target.is_dir():
            with contextlib.suppress(ValueError):  # a damaged cache entry is downloaded again
                _verify_local(target)
                return str(target)
        with atomic_dir(target) as tmp:
            self._store.download(f"{record.name}/versions/{record.version}", tmp)
            _fetch_shared(record.path, tmp)
            _verify_local(tmp)
        return str(target)

    def _cache_dir(self) -> Path:
        return _cache_root() / "registry" / hashlib.sha256(self.root.encode()).hexdigest()[:12]

    # ------------------------------------------------------------------ writing
    def register(
        self,
        name: str,
        checkpoint_dir: str | os.PathLike,
        *,
        run_id: str,
        trial_config: dict[str, Any] | None = None,
        data_fingerprint: str | None = None,
        parent: str | None = None,
    ) -> VersionRecord:
        """Copy a verified checkpoint in as the next version of `name` and record its lineage.

        A `parent` given as a ref (registry://NAME@production) is pinned to the version it names now; by
        default it comes from the checkpoint's lineage.json (written by a warm start).
        """
        _check_name(name)
        source = str(checkpoint_dir)
        src = Path(resolve_checkpoint_uri(source)) if is_uri(source) else Path(checkpoint_dir).resolve()
        manifest = _verify_local(src)
        manifest_sha = hashlib.sha256((src / MANIFEST).read_bytes()).hexdigest()
        self._store.install_shared(name, src, manifest)
        version = self._store.install_version(name, src, manifest, manifest_sha)
        rel = f"{name}/versions/{version}"
        metrics = self._read_json(f"{rel}/metrics.json") or {}
        lineage = self._read_json(f"{rel}/lineage.json") or {}
        if parent is not None:
            parent = self._pin(parent)
        else:
            parent = self._ref_for_dir(lineage.get("parent_dir")) or lineage.get("parent")
        record = VersionRecord(
            name=name,
            version=version,
            created=_now(),
            path=self._store.join(rel),
            source=source if is_uri(source) else str(src),
            run_id=str(run_id),
            trial_config=dict(trial_config or {}),
            data_fingerprint=data_fingerprint or lineage.get("data_fingerprint"),
            metrics=metrics,
            parent=parent,
            manifest_sha256=manifest_sha,
        )
        body = {k: v for k, v in record.to_dict().items() if k != "path"}
        self._store.write_record(f"{rel}.json", json.dumps(body, indent=2, default=float))
        return record

    def set_alias(self, name: str, alias: str, version: str | int, *, expected: str | None = None) -> str:
        """Point `alias` at `version`; with `expected`, only if it still points there ('' = unset)."""
        _check_alias(alias)
        target = self.get(f"{name}@{parse_version(version)}").version

        def change(state: dict[str, Any]) -> tuple[str, bool]:
            current = state["aliases"].get(alias)
            if expected is not None and (current or "") != (parse_version(expected) if expected else ""):
                raise RegistryError(
                    f"alias {alias!r} of model {name!r} points to {current or 'nothing'}, not "
                    f"{expected or 'nothing'}: it was moved meanwhile (re-read and retry)"
                )
            return target, _move(state, alias, target, action="set")

        return self._update_aliases(name, change)

    def promote(
        self,
        name: str,
        version: str | int,
        alias: str = DEFAULT_ALIAS,
        metric: str = "val_auc",
        force: bool = False,
        higher_is_better: bool | None = None,
    ) -> PromotionResult:
        """Move `alias` to `version` only if its `metric` is strictly better than the current target's.

        Direction: lower is better for loss-like names (logloss, ece, rmse, ...), else higher.
        """
        _check_alias(alias)
        candidate = self.get(f"{name}@{parse_version(version)}")
        higher = not lower_is_better(metric) if higher_is_better is None else higher_is_better
        value = _metric(candidate, metric)
        if value is None and not force:
            raise RegistryError(
                f"cannot promote {candidate.ref}: it has no numeric metric {metric!r} "
                f"(metrics: {', '.join(sorted(candidate.metrics)) or 'none'}); use force to move anyway"
            )

        def change(state: dict[str, Any]) -> tuple[PromotionResult, bool]:
            current_version = state["aliases"].get(alias)
            current = self._read_record(name, current_version) if current_version else None
            if current_version and current is None and not force:
                raise RegistryError(
                    f"alias {alias!r} of model {name!r} points to version {current_version}, which does not "
                    "exist; use force to repoint it"
                )
            previous_value = _metric(current, metric) if current else None
            moved, reason = _decide(candidate.version, value, current_version, previous_value, metric, higher)
            if force and not moved and current_version != candidate.version:
                moved, reason = True, f"forced ({reason})"
            if moved:
                _move(state, alias, candidate.version, action="promote", reason=reason)
            result = PromotionResult(
                name, alias, candidate.version, current_version, moved, reason, metric, value, previous_value
            )
            return result, moved

        return self._update_aliases(name, change)

    def rollback(self, name: str, alias: str = DEFAULT_ALIAS) -> VersionRecord:
        """Point `alias` back at its previous target per the history; repeatable down to the first one."""
        _check_alias(alias)
        self._require_model(name)

        def change(state: dict[str, Any]) -> tuple[VersionRecord, bool]:
            stack = _alias_stack(state["history"], alias)
            if len(stack) < 2:
                raise RegistryError(f"alias {alias!r} of model {name!r} has no earlier target to roll back to")
            record = self._read_record(name, stack[-2])
            if record is None:
                raise RegistryError(
                    f"cannot roll back alias {alias!r} of model {name!r}: its previous version {stack[-2]} "
                    "does not exist"
                )
            return record, _move(state, alias, record.version, action="rollback")

        return self._update_aliases(name, change)

    # ------------------------------------------------------------------ helpers
    def _update_aliases(self, name: str, change: Any) -> Any:
        """Run `change(state) -> (result, changed)` on aliases.json as one transaction (see _Store.transact):
        retried on fresh state if another writer moved an alias meanwhile, never lost."""
        rel = f"{name}/aliases.json"

        def on_text(text: str | None) -> tuple[Any, str | None]:
            state = _parse_state(text, self._store.join(rel))
            result, changed = change(state)
            return result, (json.dumps(state, indent=2) if changed else None)

        return self._store.transact(name, rel, on_text)

    def _pin(self, parent: str) -> str:
        """A parent given as registry://NAME@production is pinned to the version it names now."""
        try:
            return self.get(parent).ref
        except RegistryError:
            return parent

    def _ref_for_dir(self, path: str | None) -> str | None:
        """NAME@vN when `path` is a version folder of this registry (or of its local download cache)."""
        if not path:
            return None
        p = Path(path)
        if _VERSION_RE.match(p.name) and p.name.startswith("v"):
            if p.parent.name == "versions" and str(p) == self._store.join(f"{p.parent.parent.name}/versions/{p.name}"):
                return f"{p.parent.parent.name}@{p.name}"
            if p.parent.parent == self._cache_dir():
                return f"{p.parent.name}@{p.name}"
        return None


def _json_object(text: str, where: str) -> dict[str, Any]:
    """A registry file's JSON object; anything else is a RegistryError naming the file."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise RegistryError(f"{where}: not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise RegistryError(f"{where}: expected a JSON object")
    return value


def _parse_state(text: str | None, where: str) -> dict[str, Any]:
    """aliases.json's contents: current targets and the history of moves (empty when absent)."""
    state = {} if text is None else _json_object(text, where)
    return {"aliases": dict(state.get("aliases", {})), "history": list(state.get("history", []))}


def _move(state: dict[str, Any], alias: str, target: str, **entry: Any) -> bool:
    """Record one alias move in `state` (False when it already points there)."""
    current = state["aliases"].get(alias)
    if current == target:
        return False
    state["aliases"][alias] = target
    state["history"].append({"time": _now(), "alias": alias, "from": current, "to": target, **entry})
    return True


def _is_record(name: str) -> bool:
    match = _SLOT_RE.match(name)
    return bool(match and match.group(2) == ".json")


def _metric(record: VersionRecord | None, metric: str) -> float | None:
    value = record.metrics.get(metric) if record else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def _decide(
    candidate: str, value: float | None, current: str | None, current_value: float | None, metric: str, higher: bool
) -> tuple[bool, str]:
    if current is None:
        return True, "no current target"
    if current == candidate:
        return False, f"{candidate} is already the target"
    if current_value is None:
        return True, f"current target {current} has no {metric}"
    if value is None:
        return False, f"candidate has no {metric}"
    better = value > current_value if higher else value < current_value
    word = "higher" if higher else "lower"
    verdict = "is" if better else "is not"
    return better, f"candidate {metric} {value:.6g} {verdict} {word} than {current}'s {current_value:.6g}"


def _alias_stack(history: list[dict[str, Any]], alias: str) -> list[str]:
    """Replay the history: moves push their target, a rollback pops back to the one before."""
    stack: list[str] = []
    for entry in history:
        if entry.get("alias") != alias:
            continue
        if entry.get("action") == "rollback" and len(stack) >= 2 and stack[-2] == entry.get("to"):
            stack.pop()
        else:
            stack.append(entry["to"])
    return stack


# ---------------------------------------------------------------------------------- resolution
def data_fingerprint(path: str | os.PathLike) -> str:
    """sha256 over a dataset's file stamps (relative name, size, mtime; a file, folder or URI), for lineage.

    Stamps, not bytes: a fingerprint of a 100 GB log on S3 costs one listing, not a download.
    Hidden and `_`-prefixed files (e.g. _SUCCESS, .crc) are skipped, so the same data gives the same value.
    """
    fs, base = filesystem_for(path)
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"data {path}: does not exist")
    if info.type == pafs.FileType.File:
        files = [info]
    else:
        listed = fs.get_file_info(pafs.FileSelector(base, recursive=True))
        hidden = (".", "_")
        files = [
            i
            for i in listed
            if i.type == pafs.FileType.File
            and not any(part.startswith(hidden) for part in Path(os.path.relpath(i.path, base)).parts)
        ]
    digest = hashlib.sha256()
    for file in sorted(files, key=lambda i: i.path):
        digest.update(f"{os.path.relpath(file.path, base)}\0{file.size}\0{file.mtime_ns}\n".encode())
    return digest.hexdigest()


def default_registry_root(cfg: ExperimentConfig | None = None) -> str:
    """cfg.registry.root, else $SEQCTR_REGISTRY, else the default config's; local paths made absolute."""
    root = cfg.registry.root if cfg is not None else os.environ.get("SEQCTR_REGISTRY")
    root = root or ExperimentConfig().registry.root
    return root if is_uri(root) else str(Path(root).resolve())


def resolve_checkpoint_uri(uri: str, cfg: ExperimentConfig | None = None) -> str:
    """`registry://NAME[@REF]`, `RUNS/NAME/latest`, a checkpoint folder or a pyarrow.fs URI -> a verified local
    checkpoint folder."""
    from seqctr.platform.model.checkpoint import CheckpointError

    uri = str(uri)
    uri = resolve_latest(uri) or uri  # RUNS/NAME/latest: the latest finished run's best checkpoint
    if uri.startswith(SCHEME):
        parse_ref(uri)
        return Registry(default_registry_root(cfg)).local_checkpoint(uri)
    if is_uri(uri):
        fs, base = filesystem_for(uri)
        if fs.get_file_info(base).type != pafs.FileType.Directory:
            raise CheckpointError(f"checkpoint {uri}: does not exist or is not a directory")
        if not isinstance(fs, pafs.LocalFileSystem):
            target = _cache_root() / "checkpoints" / hashlib.sha256(uri.encode()).hexdigest()[:16]
            with atomic_dir(target) as tmp:
                pafs.copy_files(base, str(tmp), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
                _fetch_shared(uri, tmp)
                _verify_local(tmp)
            return str(target)
        uri = base
    path = Path(uri).resolve()
    if not path.exists():
        raise CheckpointError(f"checkpoint {path}: does not exist")
    _verify_local(path)
    return str(path)
