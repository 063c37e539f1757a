"""The built graphs in the cache directory: one folder per model and decoder variant.

``{cache_dir}/onnx-{model}-{int8|f32}/`` holds the .onnx graphs with their weights as external
data, the silence arrays (``silence/enc{i}_{k,v}.npy``, ``silence/tail{i}_{k,v}.npy``: exact,
pooled at load time with the chunk sizes of the settings) and ``manifest.json``: the key
(``disk_cache.fingerprint`` of the model files and config.json, salted with FORMAT, the opset
and, for int8, this CPU's fingerprint), the model's Dims (so that a start reads no model.bin),
the alignment heads, the int8 linears' activation bits and a SHA-256 of every file.

The bits (8, or 7 where this CPU's u8 x s8 kernel saturates: ``build.activation_bits``) are
probed when building, never at a cached load: a folder moved to another CPU (another model
name or instruction set) has another key, so it is stale and rebuilt with a fresh probe.

A folder is built as a temporary sibling and renamed into place when complete, so a reader
never sees half a build; two processes building at once each rename theirs, and the loser
uses the winner's. A stale, corrupt or unreadable folder is logged once (naming the folder and
why) and rebuilt; a cache directory that cannot be written costs a build into a temporary
directory per process, never a failed start. This module never imports onnx.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..model.disk_cache import NO_FILE, atomic_write, fingerprint, safe_name
from ..model.whisper_spec import Dims

_LOG = logging.getLogger(__name__)
LABEL = "onnx graphs"

FORMAT = 2  # bump when the graphs or the folder's layout change: older folders become stale
OPSET = 17  # the ONNX opset the graphs are written at (graphs.py uses this one)
MANIFEST = "manifest.json"
GRAPHS = ("encoder", "cross", "decoder", "decoder_loop")
_CHUNK = 1 << 20  # checksums read the files in chunks: the graphs are never mapped into RSS here


@dataclass(frozen=True)
class Built:
    folder: Path
    dims: Dims
    alignment_heads: list[tuple[int, int]]
    int8: bool
    bits: Optional[int] = None  # the int8 linears' activation bits (7 or 8); None for float32

    def graph(self, name: str) -> Path:
        return self.folder / f"{name}.onnx"

    def silence(self, kind: str, layer: int, kv: str) -> Path:
        """kind "enc" (encoder self-attention) or "tail" (decoder cross projection)."""
        return self.folder / "silence" / f"{kind}{layer}_{kv}.npy"


# folder -> (dims, alignment heads, activation bits or None): the graphs and silence arrays
# written into the folder
Builder = Callable[[Path], tuple[Dims, list[tuple[int, int]], Optional[int]]]


def folder_name(name: str, int8: bool) -> str:
    return f"onnx-{safe_name(name)}-{'int8' if int8 else 'f32'}"


def cpu_fingerprint() -> str:
    """A hash of this CPU's model name and instruction-set flags (/proc/cpuinfo's first
    processor: ``model name`` and ``flags``, or ``Features`` on ARM); "" where unreadable."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return ""
    first = text.strip().split("\n\n", 1)[0] if text.strip() else ""
    wanted = []
    for line in first.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("model name", "flags", "Features"):
            wanted.append(f"{key.strip()}:{' '.join(value.split())}")
    return hashlib.sha256("\n".join(wanted).encode()).hexdigest()[:16] if wanted else ""


def build_key(files: Sequence[Path], int8: bool) -> str:
    """The int8 graphs' activation bits depend on the CPU (``build.activation_bits``), so their
    key holds its fingerprint; float32 graphs run anywhere."""
    salt = f"onnx-graphs:format={FORMAT}:opset={OPSET}:{'int8' if int8 else 'f32'}"
    return fingerprint(files, salt + (f":cpu={cpu_fingerprint()}" if int8 else ""))


def required_files(dims: Dims) -> list[str]:
    names = [f"{g}.onnx" for g in GRAPHS] + [f"{g}.weights" for g in GRAPHS]
    names += [f"silence/enc{i}_{kv}.npy" for i in range(dims.enc_layers) for kv in "kv"]
    names += [f"silence/tail{i}_{kv}.npy" for i in range(dims.dec_layers) for kv in "kv"]
    return names


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def read_built(folder: Path, key: str) -> tuple[Optional[Built], str]:
    """(Built, "") when the folder is complete, its key is ``key`` and every checksum matches;
    else (None, why not)."""
    manifest = folder / MANIFEST
    if not folder.exists():
        return None, NO_FILE
    try:
        meta = json.loads(manifest.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT or meta.get("opset") != OPSET or meta.get("key") != key:
            return None, "stale (built from other model files, by another version or on another CPU)"
        dims = Dims(**meta["dims"])
        heads = [(int(a), int(b)) for a, b in meta["alignment_heads"]]
        sums: dict = meta["files"]
        int8 = bool(meta["int8"])
        bits = meta["bits"]
        if (bits not in (7, 8)) if int8 else (bits is not None):
            raise ValueError(f"activation bits {bits!r} for {'int8' if int8 else 'float32'} graphs")
    except FileNotFoundError:
        return None, "corrupt (no manifest: an interrupted build)"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return None, f"unreadable ({type(err).__name__}: {err})"
    missing = [n for n in required_files(dims) if n not in sums]
    if missing:
        return None, f"corrupt (the manifest lists no {missing[0]})"
    for rel, digest in sums.items():
        try:
            if sha256_file(folder / rel) != digest:
                return None, f"corrupt ({rel} does not match its checksum)"
        except FileNotFoundError:
            return None, f"corrupt ({rel} is missing)"
        except OSError as err:
            return None, f"unreadable ({rel}: {err})"
    return Built(folder, dims, heads, int8, bits), ""


def _write_manifest(folder: Path, key: str, int8: bool, dims: Dims, heads, bits: Optional[int],
                    seconds: float) -> Built:
    sums = {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}
    meta = {"format": FORMAT, "opset": OPSET, "key": key, "int8": int8, "bits": bits,
            "dims": dataclasses.asdict(dims), "alignment_heads": [list(h) for h in heads], "files": sums,
            "build_seconds": round(seconds, 1)}
    atomic_write(folder / MANIFEST, lambda f: f.write(json.dumps(meta, indent=1).encode()))
    return Built(folder, dims, [tuple(h) for h in heads], int8, bits)


def _build_into(folder: Path, key: str, int8: bool, build: Builder, final: Optional[Path] = None) -> Built:
    """Build into ``folder`` (``final``: where it will be renamed to, for the log line)."""
    t0 = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    dims, heads, bits = build(folder)
    seconds = time.perf_counter() - t0
    built = _write_manifest(folder, key, int8, dims, heads, bits, seconds)
    _LOG.info("%s: built %s in %.1f s", LABEL, final or folder, seconds)
    return built


STALE_BUILD_S = 3600  # a temporary build folder this old belongs to a process that died mid-build


def _sweep(cache_dir: Path, fname: str) -> None:
    """Remove what crashed builds left: temporary folders of this model older than an hour."""
    now = time.time()
    for path in cache_dir.glob(f"{fname}.*"):
        with contextlib.suppress(OSError):
            if path.name.endswith(".building") or ".old-" in path.name:
                if now - path.stat().st_mtime > STALE_BUILD_S:
                    _remove(path)


_PROCESS_TMP: list[Path] = []


def _process_tmp() -> Path:
    """A temporary directory for this process's graphs (no cache directory, or one that cannot
    be written), removed at exit."""
    if not _PROCESS_TMP:
        path = Path(tempfile.mkdtemp(prefix="amanuensis-onnx-"))
        _PROCESS_TMP.append(path)
        atexit.register(shutil.rmtree, path, True)
    return _PROCESS_TMP[0]


def _private_folder(fname: str) -> Path:
    """A fresh folder in the process's temporary directory (each load its own: a second build
    must not rewrite files that an earlier load's sessions and silence reads still use)."""
    return Path(tempfile.mkdtemp(prefix=f"{fname}.", dir=_process_tmp()))


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _install(tmp: Path, folder: Path, key: str) -> Optional[Built]:
    """Rename the complete build ``tmp`` to ``folder``. Another process may have installed one
    meanwhile (then that one is used and ours removed), or a stale/corrupt folder is still
    there (moved aside and removed first). None when the rename keeps failing."""
    for _ in range(3):
        try:
            os.rename(tmp, folder)
            return None  # ours is in place: the caller reads it at its new path
        except OSError:
            if not folder.exists():
                raise  # not the race: a failure the caller reports
        existing, _why = read_built(folder, key)
        if existing is not None:
            _LOG.info("%s: another process built %s meanwhile; using that one", LABEL, folder)
            _remove(tmp)
            return existing
        aside = folder.with_name(f"{folder.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        with contextlib.suppress(FileNotFoundError):
            os.rename(folder, aside)
        _remove(aside)
    raise OSError(f"cannot put the build in place at {folder}")


def load_or_build(cache_dir: Optional[Path], name: str, files: Sequence[Path], int8: bool, build: Builder) -> Built:
    """The model's graphs from ``cache_dir`` (checked), built by ``build`` when they are missing,
    stale, corrupt or unreadable. ``cache_dir`` None: built into a temporary directory for this
    process."""
    fname = folder_name(name, int8)
    if cache_dir is None:
        return _build_into(_private_folder(fname), "", int8, build)
    try:
        key = build_key(files, int8)
    except OSError as err:
        _LOG.warning("%s: cannot fingerprint the model files (%s); building without the cache", LABEL, err)
        return _build_into(_private_folder(fname), "", int8, build)
    folder = Path(cache_dir) / fname
    t0 = time.perf_counter()
    built, why = read_built(folder, key)
    if built is not None:
        _LOG.info("%s: loaded %s in %.0f ms (checked%s)", LABEL, folder, (time.perf_counter() - t0) * 1000,
                  f"; {built.bits}-bit activations" if built.bits else "")
        return built
    if why == NO_FILE:
        _LOG.info("%s: %s: %s; building the graphs", LABEL, folder, why)
    else:
        _LOG.warning("%s: %s is %s; rebuilding it", LABEL, folder, why)
    try:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        _sweep(Path(cache_dir), fname)
        tmp = Path(tempfile.mkdtemp(prefix=f"{fname}.", suffix=".building", dir=cache_dir))
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide the build from another user's server
    except OSError as err:
        _LOG.warning("%s: cannot write in %s (%s); building into a temporary directory for this process "
                     "(built again at the next start)", LABEL, cache_dir, err)
        return _build_into(_private_folder(fname), key, int8, build)
    try:
        try:
            built = _build_into(tmp, key, int8, build, final=folder)
        except OSError as err:  # the cache's disk (full, gone): not worth a failed start
            _LOG.warning("%s: cannot build in %s (%s); building into a temporary directory for this process",
                         LABEL, cache_dir, err)
            _remove(tmp)
            return _build_into(_private_folder(fname), key, int8, build)
        try:
            other = _install(tmp, folder, key)
        except OSError as err:
            _LOG.warning("%s: cannot rename %s to %s (%s); using it where it is for this process", LABEL, tmp,
                         folder, err)
            atexit.register(_remove, tmp)
            return built
    except BaseException:
        _remove(tmp)
        raise
    return other or dataclasses.replace(built, folder=folder)
