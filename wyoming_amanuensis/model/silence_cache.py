"""The silence encoding on disk, so that a restart skips the encoder's 30 s silence pass.

What the fast path needs from the all-silence window (the encoder output and
every layer's keys/values, see ``silence.py``) is a pure function of the
model's weights and of the backend that computed it. It is stored in one
``.npz`` per model and backend under ``--cache-dir``, with the model file's
fingerprint and a SHA-256 of the arrays (keys, checksums and the read/write cycle are
``disk_cache``'s, shared with the prepared model). On read both are checked; a file
that is stale (the model changed), corrupt or unreadable is logged, recomputed
and rewritten, and a cache directory that cannot be written only costs the
recomputation next time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from . import disk_cache
from .disk_cache import EDGE_BYTES, NO_FILE, checksum as _checksum, safe_name

_LOG = logging.getLogger(__name__)

# Bumped whenever what is stored, or how it is computed, changes.
FORMAT = 2

__all__ = ["EDGE_BYTES", "FORMAT", "SilenceEncoding", "cache_path", "cached_silence", "fingerprint"]


def fingerprint(files: Sequence[Path]) -> str:
    """Cheap identity of the model's weight files (``disk_cache.fingerprint``)."""
    return disk_cache.fingerprint(files, f"amanuensis-silence-v{FORMAT}")


@dataclass
class SilenceEncoding:
    """The encoder output of the silence window [1, 1500, d] and each layer's (keys, values)."""

    features: torch.Tensor
    kv: list[tuple[torch.Tensor, torch.Tensor]]


def cache_path(cache_dir: Path, model_name: str, backend: str) -> Path:
    return Path(cache_dir) / f"silence-{safe_name(model_name)}-{backend}.npz"


def _read(path: Path, key: str) -> tuple[Optional[SilenceEncoding], str]:
    """(the encoding, "") or (None, why it cannot be used)."""
    if not path.is_file():
        return None, NO_FILE
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
    disk_cache.atomic_write(Path(path), lambda f: np.savez(f, **arrays_with_meta))


def cached_silence(cache_dir: Optional[Path], model_name: str, files: Sequence[Path], backend: str,
                   compute: Callable[[], SilenceEncoding]) -> SilenceEncoding:
    """The silence encoding from ``cache_dir``, or computed (and stored there) when it is
    missing, stale or corrupt. ``cache_dir`` None: always computed, nothing stored."""
    if cache_dir is None:
        return compute()
    return disk_cache.cached(_LOG, "silence cache", "the silence encoding", cache_path(cache_dir, model_name, backend),
                             lambda: f"{fingerprint(files)}:{backend}", _read, compute, _write)
