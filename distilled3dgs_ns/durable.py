"""Files that survive a crash of the machine, not only of the process.

``os.replace`` is atomic for other processes, but after a power cut or a kernel crash the file system may have kept
the rename and not the data written before it: an empty or truncated file under the final name. For checkpoints that
is a lost run (nerfstudio keeps only the latest one by default, so the older one is gone too). So the data reaches the
disk before the rename that publishes it, and the rename before anything it supersedes is deleted.
"""

from __future__ import annotations

import os
from pathlib import Path


def sync(path: Path) -> None:
    """Flush ``path`` (a file, or a folder's entries) to the disk. Folders cannot be opened on Windows: skipped."""
    if path.is_dir() and os.name != "posix":
        return
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def publish(temporary: Path, path: Path) -> None:
    """Move the complete file ``temporary`` to ``path`` (same folder) so that a crash leaves the old or the new one."""
    sync(temporary)
    os.replace(temporary, path)
    sync(path.parent)


def write_atomic(path: Path | str, data: bytes) -> int:
    """Write ``data`` to ``path`` through a temporary file and ``publish``, making the folder; returns its size.
    Every file the package writes itself ends here (nerfstudio's checkpoints go through ``publish``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_bytes(data)
        publish(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return len(data)
