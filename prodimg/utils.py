"""Small helpers used across prodimg. Each is defined here once."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def exists(value: Any) -> bool:
    return value is not None


def default(value: Any, fallback: Any) -> Any:
    return value if value is not None else fallback


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory entry to disk (a no-op where the OS does not support it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one.

    ``mode``: the file's permissions (default: 0o666 less the umask, as ``open`` would give).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode if mode is not None else 0o666 & ~_umask())  # mkstemp creates 0600
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str, mode: int | None = None) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file and directory below ``root``."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(dirpath)


@contextlib.contextmanager
def atomic_directory(final_path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name, then rename it into place.

    Yields the temporary directory. On success its contents are fsynced and it is renamed to
    ``final_path``; on any exception it is removed and ``final_path`` is untouched.
    """
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    if final_path.exists() and not overwrite:
        raise FileExistsError(f"{final_path} already exists")
    tmp = Path(tempfile.mkdtemp(prefix=f".{final_path.name}.", suffix=".tmp", dir=final_path.parent))
    try:
        yield tmp
        fsync_tree(tmp)
        if final_path.exists():
            trash = final_path.with_name(f".{final_path.name}.old")
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(final_path, trash)
            os.replace(tmp, final_path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final_path)
        fsync_dir(final_path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
