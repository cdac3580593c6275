"""Filesystem helpers: local paths and pyarrow.fs URIs (s3://, gs://) alike, and atomic writes.

Every stage reads and writes through these, so any path in the config may be either. A local output
is written to a temporary sibling and renamed into place. Object stores have no rename: a file is one
PUT (an object appears whole or not at all), and a folder is committed by a marker file written last
(`output_dir`), which readers check before trusting the folder. S3-compatible stores other than AWS
(MinIO, Ceph, R2) are reached with the standard AWS_ENDPOINT_URL variable, which pyarrow and boto3
both read; credentials come from the standard AWS chain only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs


def is_uri(path: str | os.PathLike) -> bool:
    return "://" in str(path)


def filesystem_for(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI such as s3://bucket/key."""
    if is_uri(path):
        return pafs.FileSystem.from_uri(str(path))
    return pafs.LocalFileSystem(), str(Path(path).resolve())


def absolute(path: str | os.PathLike) -> str:
    """A URI as it is, a local path made absolute (Ray Train and Tune want absolute storage paths)."""
    return str(path).rstrip("/") if is_uri(path) else str(Path(path).resolve())


def join(base: str | os.PathLike, *parts: str) -> str:
    """`base/part/...` for a URI (always '/') or a local path."""
    if is_uri(base):
        return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(str(base), *parts)


def basename(path: str | os.PathLike) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def parent(path: str | os.PathLike) -> str:
    """The folder holding `path` (a URI keeps its scheme)."""
    if is_uri(path):
        return str(path).rstrip("/").rsplit("/", 1)[0]
    return str(Path(path).parent)


def path_type(path: str | os.PathLike) -> pafs.FileType:
    fs, inner = filesystem_for(path)
    return fs.get_file_info(inner).type


def exists(path: str | os.PathLike) -> bool:
    return path_type(path) != pafs.FileType.NotFound


def is_file(path: str | os.PathLike) -> bool:
    return path_type(path) == pafs.FileType.File


def list_names(folder: str | os.PathLike) -> list[str]:
    """Names directly inside `folder` (sorted; empty when it does not exist)."""
    fs, inner = filesystem_for(folder)
    infos = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
    return sorted(info.base_name for info in infos)


def read_bytes(path: str | os.PathLike) -> bytes:
    fs, inner = filesystem_for(path)
    with fs.open_input_stream(inner) as fh:
        return fh.read()


def read_text(path: str | os.PathLike) -> str:
    return read_bytes(path).decode("utf-8")


def delete_file(path: str | os.PathLike) -> None:
    fs, inner = filesystem_for(path)
    with contextlib.suppress(FileNotFoundError):
        fs.delete_file(inner)


def upload_dir(local: str | os.PathLike, target: str, last: str | None = None) -> None:
    """Copy a local folder's files to `target` (a URI or a local path), `last` (a marker) after the rest."""
    fs, inner = filesystem_for(target)
    fs.create_dir(inner, recursive=True)
    names = sorted(p.name for p in Path(local).iterdir() if p.is_file())
    for name in [n for n in names if n != last] + ([last] if last in names else []):
        pafs.copy_files(
            str(Path(local) / name),
            f"{inner}/{name}",
            source_filesystem=pafs.LocalFileSystem(),
            destination_filesystem=fs,
        )


def download_dir(source: str, local: str | os.PathLike) -> None:
    """Copy every file under `source` (a URI or a local folder) into the local folder `local`."""
    fs, inner = filesystem_for(source)
    pafs.copy_files(inner, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())


def file_stamps(files: list[str]) -> list[list[Any]]:
    """(path, size, mtime_ns) per file: one metadata call each (no bytes read, cheap on object storage),
    and it changes whenever a file is rewritten. The basis of every cache key and lineage fingerprint."""
    stamps = []
    for file in files:
        fs, inner = filesystem_for(file)
        info = fs.get_file_info(inner)
        stamps.append([file, info.size, info.mtime_ns])
    return stamps


def default_file_mode() -> int:
    """What open() would give a new file (0o666 less the umask): mkstemp's 0o600 would make our files
    unreadable to the other users of a shared run folder, unlike every file Ray or pyarrow writes."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """A whole file or none: a temporary sibling renamed into place, or on an object store one PUT."""
    if is_uri(path):
        fs, inner = filesystem_for(path)
        with fs.open_output_stream(inner) as fh:
            fh.write(data)
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside `final`; on success it replaces `final` in one rename.

    On error the temporary folder is removed and `final` is left untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            if not overwrite:
                raise FileExistsError(f"{final} already exists")
            old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def output_dir(final: str | os.PathLike, marker: str) -> Iterator[str]:
    """Yield where to write a folder that readers trust only once `marker` is in it.

    Local: a temporary sibling renamed onto `final` at the end (atomic_dir). Object store: `final`
    itself; its old marker is deleted first (readers stop trusting the old contents), then the old
    contents, and the caller writes the new marker last. On error nothing is left behind.
    """
    if not is_uri(final):
        with atomic_dir(final) as tmp:
            yield str(tmp)
            if not (tmp / marker).is_file():
                raise RuntimeError(f"{final}: the writer did not write its marker {marker}")
        return
    fs, inner = filesystem_for(final)
    delete_file(join(final, marker))
    fs.create_dir(inner, recursive=True)
    fs.delete_dir_contents(inner, missing_dir_ok=True)
    try:
        yield str(final).rstrip("/")
        if not is_file(join(final, marker)):
            raise RuntimeError(f"{final}: the writer did not write its marker {marker}")
    except BaseException:
        with contextlib.suppress(OSError):
            fs.delete_dir_contents(inner, missing_dir_ok=True)
        raise
