"""The silence encoding on disk, so that a restart skips the encoder's 30 s silence pass.

What the fast path needs from the all-silence window (the encoder output and
every layer's keys/values, see ``silence.py``) is a pure function of the
model's weights and of the backend that computed it. It is stored in one
``.npz`` per model and backend under ``--cache-dir``, with the model file's
fingerprint and a SHA-256 of the arrays. On read both are checked; a file
that is stale (the model changed), corrupt or unreadable is logged, recomputed
and rewritten, and a cache directory that cannot be written only costs the
recomputation next time.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

_LOG = logging.getLogger(__name__)

# Bumped whenever what is stored, or how it is computed, changes.
FORMAT = 2
# Bytes hashed at each end of every model file (the middle is covered by size and mtime):
# hashing all of base's 145 MB costs ~0.25 s here, more than the rest of a cache hit.
EDGE_BYTES = 1 << 20


def fingerprint(files: Sequence[Path]) -> str:
    """Cheap identity of the model's weight files: name, size, mtime and the first and last MiB."""
    h = hashlib.sha256(f"amanuensis-silence-v{FORMAT}".encode())
    for path in files:
        st = os.stat(path)
        h.update(f"{Path(path).name}:{st.st_size}:{st.st_mtime_ns}".encode())
        with open(path, "rb") as f:
            h.update(f.read(EDGE_BYTES))
            if st.st_size > 2 * EDGE_BYTES:
                f.seek(-EDGE_BYTES, os.SEEK_END)
                h.update(f.read(EDGE_BYTES))
    return h.hexdigest()


@dataclass
class SilenceEncoding:
    """The encoder output of the silence window [1, 1500, d] and each layer's (keys, values)."""

    features: torch.Tensor
    kv: list[tuple[torch.Tensor, torch.Tensor]]


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.data)
    return h.hexdigest()


def cache_path(cache_dir: Path, model_name: str, backend: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model_name)
    return Path(cache_dir) / f"silence-{safe}-{backend}.npz"


def _read(path: Path, key: str) -> tuple[Optional[SilenceEncoding], str]:
    """(the encoding, "") or (None, why it cannot be used)."""
    if not path.is_file():
        return None, "no cache file yet"
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
    except Exception as err:  # a damaged zip raises anything from BadZipFile to EOFError
        return None, f"unreadable ({type(err).__name__}: {err})"
    stored_key = str(arrays.pop("key", ""))
    stored_sum = str(arrays.pop("checksum", ""))
    if stored_key != key:
        return None, "stale (the model file or the backend changed)"
    if stored_sum != _checksum(arrays):
        return None, "corrupt (checksum mismatch)"
    n = sum(1 for name in arrays if name.startswith("k"))
    try:
        kv = [(torch.from_numpy(arrays[f"k{i}"]), torch.from_numpy(arrays[f"v{i}"])) for i in range(n)]
        return SilenceEncoding(torch.from_numpy(arrays["features"]), kv), ""
    except KeyError as err:
        return None, f"corrupt (missing {err.args[0]})"


def _write(path: Path, key: str, enc: SilenceEncoding) -> None:
    arrays = {"features": enc.features.detach().cpu().numpy()}
    for i, (k, v) in enumerate(enc.kv):
        arrays[f"k{i}"] = k.detach().cpu().numpy()
        arrays[f"v{i}"] = v.detach().cpu().numpy()
    arrays_with_meta = dict(arrays, key=np.array(key), checksum=np.array(_checksum(arrays)))
    path.parent.mkdir(parents=True, exist_ok=True)
    # written aside and renamed: a reader (another server starting) never sees half a file
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays_with_meta)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def cached_silence(cache_dir: Optional[Path], model_name: str, files: Sequence[Path], backend: str,
                   compute: Callable[[], SilenceEncoding]) -> SilenceEncoding:
    """The silence encoding from ``cache_dir``, or computed (and stored there) when it is
    missing, stale or corrupt. ``cache_dir`` None: always computed, nothing stored."""
    if cache_dir is None:
        return compute()
    path = cache_path(cache_dir, model_name, backend)
    try:
        key = f"{fingerprint(files)}:{backend}"
    except OSError as err:
        _LOG.warning("silence cache: cannot fingerprint the model files (%s); computing without the cache", err)
        return compute()
    t0 = time.perf_counter()
    enc, why = _read(path, key)
    if enc is not None:
        _LOG.info("silence cache: loaded %s in %.0f ms", path, (time.perf_counter() - t0) * 1000)
        return enc
    if why == "no cache file yet":
        _LOG.info("silence cache: %s: %s; computing the silence encoding", path, why)
    else:
        _LOG.warning("silence cache: %s is %s; recomputing the silence encoding and rewriting it", path, why)
    t0 = time.perf_counter()
    enc = compute()
    computed_ms = (time.perf_counter() - t0) * 1000
    try:
        _write(path, key, enc)
        _LOG.info("silence cache: computed in %.0f ms and saved to %s", computed_ms, path)
    except OSError as err:
        _LOG.warning("silence cache: cannot write %s (%s); it will be computed again at the next start", path, err)
    return enc
