"""What the start-up caches under ``--cache-dir`` share: keys, checksums, atomic writes, and
the read -> (re)compute -> write cycle with its log lines.

Two caches use it: the silence encoding (``silence_cache.py``) and the prepared model
(``prepared.py``). Each file is keyed by the model's weight files (``fingerprint``) plus
whatever else changes its content (backend, torch version, settings), and carries a
SHA-256 of its content. On read a key mismatch is "stale", a checksum mismatch "corrupt", a
file that cannot be parsed "unreadable"; each is logged once, recomputed and rewritten,
and a cache folder that cannot be written only costs the recomputation next time.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import BinaryIO, Callable, Optional, Sequence, TypeVar

import numpy as np

T = TypeVar("T")

# Bytes hashed at each end of every model file (the middle is covered by size and mtime):
# hashing all of base's 145 MB costs ~0.25 s here, more than the rest of a cache hit.
EDGE_BYTES = 1 << 20

NO_FILE = "no cache file yet"


def fingerprint(files: Sequence[Path], salt: str) -> str:
    """Cheap identity of the model's weight files: name, size, mtime and the first and last
    MiB, hashed after ``salt`` (the cache's name and format version)."""
    h = hashlib.sha256(salt.encode())
    for path in files:
        st = os.stat(path)
        h.update(f"{Path(path).name}:{st.st_size}:{st.st_mtime_ns}".encode())
        with open(path, "rb") as f:
            h.update(f.read(EDGE_BYTES))
            if st.st_size > 2 * EDGE_BYTES:
                f.seek(-EDGE_BYTES, os.SEEK_END)
                h.update(f.read(EDGE_BYTES))
    return h.hexdigest()


def safe_name(name: str) -> str:
    """A model name as a file name component."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def new_digest():
    return hashlib.sha256()


def update_digest(h, name: str, array: np.ndarray) -> None:
    """Add one named array (its dtype, shape and bytes) to a checksum."""
    a = np.ascontiguousarray(array)
    h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
    h.update(a.data)


def checksum(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 of named arrays, in name order."""
    h = new_digest()
    for name in sorted(arrays):
        update_digest(h, name, arrays[name])
    return h.hexdigest()


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """``write(file)`` into a temporary file beside ``path``, then renamed over it: a reader
    (another server starting) never sees half a file, and a failed write leaves nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


_WRITERS: list[threading.Thread] = []
_WRITERS_LOCK = threading.Lock()


def wait_for_writes(timeout: Optional[float] = None) -> None:
    """Until the cache files being written in the background are written (tests, benchmarks)."""
    with _WRITERS_LOCK:
        pending = list(_WRITERS)
    for thread in pending:
        thread.join(timeout)


def cached(log: logging.Logger, label: str, what: str, path: Path, key: Callable[[], str],
           read: Callable[[Path, str], tuple[Optional[T], str]], compute: Callable[[], T],
           write: Callable[[Path, str, T], None], background: bool = False) -> T:
    """``read(path, key)`` -> (value, "") or (None, why not); on a miss ``compute()`` and
    ``write(path, key, value)``. ``label`` starts every log line ("silence cache"), ``what``
    names the value ("the silence encoding"). Never raises for the cache's sake.
    ``background``: the write runs on its own thread, so that the value is used at once
    (not a daemon thread: the process finishes the write before it exits)."""
    try:
        k = key()
    except OSError as err:
        log.warning("%s: cannot fingerprint the model files (%s); computing without the cache", label, err)
        return compute()
    t0 = time.perf_counter()
    value, why = read(path, k)
    if value is not None:
        log.info("%s: loaded %s in %.0f ms", label, path, (time.perf_counter() - t0) * 1000)
        return value
    if why == NO_FILE:
        log.info("%s: %s: %s; computing %s", label, path, why, what)
    else:
        log.warning("%s: %s is %s; recomputing %s and rewriting it", label, path, why, what)
    t0 = time.perf_counter()
    value = compute()
    computed_ms = (time.perf_counter() - t0) * 1000

    def save() -> None:
        try:
            t1 = time.perf_counter()
            write(path, k, value)
            log.info("%s: computed in %.0f ms and saved to %s in %.0f ms%s", label, computed_ms, path,
                     (time.perf_counter() - t1) * 1000, " (in the background)" if background else "")
        except OSError as err:
            log.warning("%s: cannot write %s (%s); it will be computed again at the next start", label, path, err)
        except Exception:  # noqa: BLE001 - on the writer thread: the cache only costs a rebuild
            if not background:
                raise
            log.exception("%s: writing %s failed; it will be computed again at the next start", label, path)
        finally:
            if background:
                with _WRITERS_LOCK:
                    _WRITERS.remove(threading.current_thread())

    if not background:
        save()
        return value
    thread = threading.Thread(target=save, name=f"amanuensis-{label.replace(' ', '-')}-write", daemon=False)
    with _WRITERS_LOCK:
        _WRITERS.append(thread)
    thread.start()
    return value
