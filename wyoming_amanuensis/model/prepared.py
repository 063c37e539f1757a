"""The model as the engine uses it, on disk: later starts skip model.bin and the quantisation.

Building the networks from model.bin (``ct2_whisper.build_modules``) parses the file,
converts every tensor to float32 and quantises the decoder's Linear layers to per-row int8
(``quantize.RowInt8Linear``); for base that is ~3 s of a start. What it produces is a pure
function of the weight files, the int8 setting and the torch version, so after the first
build it is stored in one file per model and setting under ``--cache-dir``, beside the
silence encodings, and read back on later starts:

* the float tensors (encoder, embedding, norms, positions) exactly as the modules hold them;
* each RowInt8Linear as its int8 weight, per-row scales and zero points, row sums and bias,
  from which the same fbgemm packed weights are rebuilt (``RowInt8Linear.from_parts``).
  fbgemm's packed form itself does not serialise: torch.save unpacks it and torch.load
  packs it again, which is the same prepack at a higher price (measured 0.27 s to load
  base's projection alone, against 0.24 s to prepack it).

File layout: ``MAGIC``, the SHA-256 (32 bytes), a u32 header length, the header (JSON: the
key, the dimensions and the tensor table), then each tensor's bytes in table order. The
checksum covers the header and every tensor's name, dtype, shape and bytes
(``disk_cache.update_digest``, the silence cache's checksum), hashed tensor by tensor as the
file is read, so a cache hit reads every byte once; SHA-256 of base's ~240 MB costs
~0.14 s here (CRC-32 would be ~0.06 s), kept because a wrong weight that slipped through
would silently change transcripts. Every tensor is read into its own fresh storage (not
mapped: a file replaced or truncated under a mapping would crash the process with SIGBUS,
and the checksum touches every page anyway), so memory is exactly that of a model built
from model.bin.

Bump ``FORMAT`` whenever what is stored, or how model.bin is converted, changes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import struct
import time
from pathlib import Path
from typing import BinaryIO, Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from . import disk_cache
from .disk_cache import NO_FILE
from .modules import AudioEncoder, Dims, TextDecoder
from .quantize import RowInt8Linear

_LOG = logging.getLogger(__name__)

FORMAT = 3  # 2: the int8 decoder's embedding in float16; 3: the int8 layers' activation bits
MAGIC = b"AMNPREP\x01"
_MAX_HEADER = 16 << 20

Modules = tuple[Dims, AudioEncoder, TextDecoder]

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "int8": torch.int8,
           "int32": torch.int32, "int64": torch.int64, "bool": torch.bool}
_NAMES = {v: k for k, v in _DTYPES.items()}


def cache_path(cache_dir: Path, model_name: str, int8_bits: int) -> Path:
    """``int8_bits``: the int8 decoder's activation bits as it runs here, 0 for a float decoder."""
    decoder = f"int8b{int8_bits}" if int8_bits else "f32"
    return Path(cache_dir) / f"model-{disk_cache.safe_name(model_name)}-{decoder}dec.bin"


def cache_key(files: Sequence[Path], int8_bits: int) -> str:
    return (f"{disk_cache.fingerprint(files, f'amanuensis-prepared-v{FORMAT}')}:"
            f"int8_bits={int8_bits}:torch{torch.__version__}")


# ------------------------------------------------------------------------------- writing
def _entries(net: nn.Module, prefix: str) -> tuple[list[dict], list[torch.Tensor]]:
    """The tensor table of one network and the tensors, in table order. A RowInt8Linear is
    stored as its parts; a tensor held twice (the decoder's tied projection) once, the
    second holder as an alias."""
    table: list[dict] = []
    tensors: list[torch.Tensor] = []
    seen: dict[int, str] = {}
    for path, module in net.named_modules():
        where = f"{prefix}{path}"
        if isinstance(module, RowInt8Linear):
            for part, t in module.parts().items():
                table.append({"name": f"{where}#{part}", "kind": "int8-part"})
                tensors.append(t)
            continue
        owned = [("param", n, p) for n, p in module.named_parameters(recurse=False)]
        owned += [("buffer", n, b) for n, b in module.named_buffers(recurse=False) if b is not None]
        for kind, n, t in owned:
            name = f"{where}.{n}" if where else n
            if id(t) in seen:
                table.append({"name": name, "kind": "alias", "of": seen[id(t)]})
                continue
            seen[id(t)] = name
            table.append({"name": name, "kind": kind})
            tensors.append(t)
    return table, tensors


def _write(path: Path, key: str, modules: Modules) -> None:
    dims, encoder, decoder = modules
    table, tensors = [], []
    for prefix, net in (("encoder:", encoder), ("decoder:", decoder)):
        t, ts = _entries(net, prefix)
        table += t
        tensors += ts
    arrays = []
    data_entries = [e for e in table if e["kind"] != "alias"]
    for entry, t in zip(data_entries, tensors):
        t = t.detach().contiguous()
        if t.dtype not in _NAMES:
            raise ValueError(f"cannot store {entry['name']} of dtype {t.dtype}")
        entry["dtype"], entry["shape"] = _NAMES[t.dtype], list(t.shape)
        arrays.append(t.numpy())
    header = json.dumps({"format": FORMAT, "key": key, "dims": dataclasses.asdict(dims), "tensors": table}).encode()
    h = disk_cache.new_digest()
    h.update(header)
    for entry, a in zip(data_entries, arrays):
        disk_cache.update_digest(h, entry["name"], a)

    def write(f: BinaryIO) -> None:
        f.write(MAGIC + h.digest() + struct.pack("<I", len(header)) + header)
        for a in arrays:
            f.write(memoryview(a.reshape(-1)).cast("B") if a.size else b"")

    disk_cache.atomic_write(Path(path), write)


# ------------------------------------------------------------------------------- reading
class _Corrupt(Exception):
    pass


def _read_exact(f: BinaryIO, n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise _Corrupt(f"truncated (file ends inside {what})")
    return data


def _nbytes(entry: dict) -> int:
    dtype, shape = _DTYPES.get(entry.get("dtype")), entry.get("shape")
    if dtype is None or not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise _Corrupt(f"corrupt (bad table entry for {entry.get('name')})")
    return int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()


def _read_tensor(f: BinaryIO, entry: dict, h) -> torch.Tensor:
    dtype = _DTYPES.get(entry.get("dtype"))
    shape = entry.get("shape")
    if dtype is None or not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise _Corrupt(f"corrupt (bad table entry for {entry.get('name')})")
    t = torch.empty(shape, dtype=dtype)
    a = t.numpy()
    if a.nbytes:
        view = memoryview(a.reshape(-1)).cast("B")
        got = f.readinto(view)
        if got != a.nbytes:
            raise _Corrupt(f"truncated (file ends inside {entry['name']})")
    disk_cache.update_digest(h, entry["name"], a)
    return t


def _assemble(dims: Dims, table: list[dict], tensors: dict[str, torch.Tensor]) -> Modules:
    """The two networks from the stored tensors (no copies: the modules hold them)."""
    with torch.device("meta"):
        nets = {"encoder:": AudioEncoder(dims), "decoder:": TextDecoder(dims)}
    holders: dict[str, torch.Tensor] = {}
    int8_parts: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for entry in table:
        name = entry["name"]
        prefix, _, rest = name.partition(":")
        net = nets.get(prefix + ":")
        if net is None:
            raise _Corrupt(f"corrupt (tensor {name} belongs to no network)")
        if entry["kind"] == "int8-part":
            path, _, part = rest.partition("#")
            int8_parts.setdefault((prefix + ":", path), {})[part] = tensors[name]
            continue
        path, _, attr = rest.rpartition(".")
        try:
            module = net.get_submodule(path) if path else net
        except AttributeError:
            raise _Corrupt(f"corrupt (no module for {name})") from None
        if entry["kind"] == "alias":
            value = holders.get(entry.get("of"))
            if value is None:
                raise _Corrupt(f"corrupt (alias {name} of a missing tensor)")
        else:
            value = tensors[name]
        slot = module._parameters if attr in module._parameters else module._buffers
        current = slot.get(attr)
        if attr not in slot or current is None or tuple(current.shape) != tuple(value.shape):
            raise _Corrupt(f"corrupt (tensor {name} {tuple(value.shape)} does not fit the model)")
        if slot is module._parameters and not isinstance(value, nn.Parameter):
            value = nn.Parameter(value, requires_grad=False)
        slot[attr] = value
        holders[name] = value
    for (prefix, path), parts in int8_parts.items():
        parent_path, _, child = path.rpartition(".")
        parent = nets[prefix].get_submodule(parent_path) if parent_path else nets[prefix]
        old = getattr(parent, child, None)
        if not isinstance(old, nn.Linear):
            raise _Corrupt(f"corrupt (int8 layer {prefix}{path} replaces no Linear)")
        try:
            layer = RowInt8Linear.from_parts(parts["weight"], parts["scales"], parts["zero_points"],
                                             parts["row_sums"], parts.get("bias"), parts["bits"])
        except (KeyError, ValueError, RuntimeError) as err:
            raise _Corrupt(f"corrupt (int8 layer {prefix}{path}: {err})") from None
        if (layer.in_features, layer.out_features) != (old.in_features, old.out_features):
            raise _Corrupt(f"corrupt (int8 layer {prefix}{path} has the wrong shape)")
        setattr(parent, child, layer)
    for prefix, net in nets.items():
        missing = [n for n, t in [*net.named_parameters(), *net.named_buffers()] if t is not None and t.is_meta]
        if missing:
            raise _Corrupt(f"corrupt (no stored value for {prefix}{missing[0]})")
    encoder, decoder = nets["encoder:"], nets["decoder:"]
    return dims, encoder.eval().requires_grad_(False), decoder.eval().requires_grad_(False)


def _read(path: Path, key: str) -> tuple[Optional[Modules], str]:
    """(the modules, "") or (None, why they cannot be used)."""
    if not path.is_file():
        return None, NO_FILE
    t0 = time.perf_counter()
    try:
        with open(path, "rb") as f:
            magic = f.read(len(MAGIC))
            if magic != MAGIC:
                return None, "unreadable (not a prepared-model file of this version)"
            digest = _read_exact(f, 32, "the checksum")
            (n,) = struct.unpack("<I", _read_exact(f, 4, "the header length"))
            if n > _MAX_HEADER:
                raise _Corrupt(f"corrupt (header of {n} bytes)")
            header_bytes = _read_exact(f, n, "the header")
            try:
                header = json.loads(header_bytes)
                table = list(header["tensors"])
                dims = Dims(**header["dims"])
            except (ValueError, KeyError, TypeError) as err:
                raise _Corrupt(f"corrupt (header: {type(err).__name__}: {err})") from None
            if header.get("key") != key:
                return None, "stale (the model file, the int8 setting or torch changed)"
            expected = sum(_nbytes(e) for e in table if e.get("kind") != "alias")
            left = path.stat().st_size - f.tell()
            if left != expected:
                raise _Corrupt(f"{'truncated' if left < expected else 'corrupt'} ({left} bytes of tensors, "
                               f"the header describes {expected})")
            h = disk_cache.new_digest()
            h.update(header_bytes)
            tensors = {e["name"]: _read_tensor(f, e, h) for e in table if e.get("kind") != "alias"}
            if f.read(1):
                raise _Corrupt("corrupt (unexpected bytes after the last tensor)")
        if h.digest() != digest:
            raise _Corrupt("corrupt (checksum mismatch)")
        t1 = time.perf_counter()
        modules = _assemble(dims, table, tensors)
        _LOG.info("model cache: read and verified %s in %.0f ms, modules assembled (int8 weights packed) in %.0f ms",
                  path.name, (t1 - t0) * 1000, (time.perf_counter() - t1) * 1000)
        return modules, ""
    except _Corrupt as err:
        return None, str(err)
    except (OSError, RuntimeError, ValueError, KeyError, TypeError) as err:
        return None, f"unreadable ({type(err).__name__}: {err})"


def cached_modules(cache_dir: Optional[Path], model_name: str, files: Sequence[Path], int8_bits: int,
                   build: Callable[[], Modules]) -> Modules:
    """``int8_bits``: the int8 decoder's activation bits as it runs here (0: a float decoder).
    The model's networks from the prepared-model cache in ``cache_dir``, or ``build()``
    (and stored there) when it is missing, stale or corrupt. ``cache_dir`` None: always built.
    The file is written in the background (~0.7 s for base's 240 MB, SHA-256 included): the
    first start after installing transcribes without waiting for it
    (``disk_cache.wait_for_writes`` waits)."""
    if cache_dir is None:
        return build()
    _remove_unnamed_bits(Path(cache_dir), model_name)
    return disk_cache.cached(_LOG, "model cache", "the prepared model", cache_path(cache_dir, model_name, int8_bits),
                             lambda: cache_key(files, int8_bits), _read, build, _write, background=True)


def _remove_unnamed_bits(cache_dir: Path, model_name: str) -> None:
    """Deletes the int8 file of FORMAT 2 and before, whose name did not say its activation
    bits: no version reads it any more, and it is ~190 MB for base."""
    old = cache_dir / f"model-{disk_cache.safe_name(model_name)}-int8dec.bin"
    try:
        old.unlink()
        _LOG.info("model cache: removed %s (an older version's file)", old)
    except FileNotFoundError:
        pass
    except OSError as err:
        _LOG.warning("model cache: cannot remove %s, an older version's file (%s)", old, err)
