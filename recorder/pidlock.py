"""An exclusive flock on a file that names its holder's pid; the OS releases it when the holder dies."""

from __future__ import annotations

import fcntl
import os


def hold_pid_lock(descriptor: int) -> str | None:
    """Lock the open file and write our pid into it; on a held lock close it and return the holder's pid."""
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "?"
        os.close(descriptor)
        return holder
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
    return None
