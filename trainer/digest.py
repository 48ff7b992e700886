"""SHA-256 of a file, streamed in 1 MiB blocks (the one helper every module uses), and a variant cached per stat."""

from __future__ import annotations

import functools
import hashlib
import os

BLOCK = 1 << 20  # bytes read at a time: large checkpoints and weight files are hashed without being held in memory


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The hex SHA-256 digest of the file at `path`."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


@functools.lru_cache(maxsize=8)
def _stat_sha256(path: str, mtime: float, size: int) -> str:
    return file_sha256(path)  # mtime and size only key the cache: a rewritten file is hashed again


def cached_file_sha256(path: str | os.PathLike[str]) -> str:
    """file_sha256, computed once per (path, mtime, size): evaluations repeat it on the same large weight files."""
    stat = os.stat(path)
    return _stat_sha256(str(path), stat.st_mtime, stat.st_size)
