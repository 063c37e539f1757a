"""Reader for CTranslate2's ``model.bin`` (binary version 6, WhisperSpec).

No maintained library reads this format without pulling in CTranslate2
itself, so we parse it here. Layout (little-endian, unaligned):
version u32, spec name, revision u32, variable count u32, then per variable
name, rank u8, dims u32*rank, dtype u8, byte count u32, raw bytes; then
aliases. Strings are a u16 length (counting a trailing NUL) plus the bytes.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO, Optional, Union

import numpy as np

# dtype codes of CTranslate2's DataType enum
_DTYPES = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
    5: None,  # bfloat16: numpy has no dtype, handled below
}


class ModelFileError(ValueError):
    """model.bin is missing, truncated or not a CTranslate2 Whisper model."""


class _Reader:
    def __init__(self, buf: memoryview, path: str):
        self.buf = buf
        self.pos = 0
        self.path = path

    def take(self, n: int, what: str) -> memoryview:
        end = self.pos + n
        if n < 0 or end > len(self.buf):
            raise ModelFileError(
                f"{self.path}: truncated or corrupt model file (needed {n} bytes for {what} at offset "
                f"{self.pos}, file has {len(self.buf)})"
            )
        out = self.buf[self.pos:end]
        self.pos = end
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return struct.unpack("<H", self.take(2, what))[0]

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.take(4, what))[0]

    def string(self, what: str) -> str:
        n = self.u16(what)
        raw = bytes(self.take(n, what))
        try:
            return raw.rstrip(b"\0").decode("utf-8")
        except UnicodeDecodeError:
            raise ModelFileError(f"{self.path}: corrupt model file (bad string for {what} at offset {self.pos - n})") from None


def _bf16_to_f32(raw: bytes) -> np.ndarray:
    u16 = np.frombuffer(raw, dtype="<u2").astype(np.uint32)
    return (u16 << 16).view(np.float32)


def read_model_bin(source: Union[str, Path, bytes, BinaryIO], name: Optional[str] = None) -> dict[str, np.ndarray]:
    """All variables of a model.bin as numpy arrays (aliases resolved).

    Accepts a path, the raw bytes, or a binary file object; ``name`` is what
    errors call the file (default: the path). Raises ModelFileError naming
    the file for anything truncated or malformed.
    """
    if isinstance(source, (str, Path)):
        path = str(source)
        try:
            data = Path(source).read_bytes()
        except OSError as err:
            raise ModelFileError(f"{path}: cannot read model file: {err}") from None
    elif isinstance(source, (bytes, bytearray, memoryview)):
        path, data = "<bytes>", source
    else:
        path, data = getattr(source, "name", "<stream>"), source.read()
    path = name or path

    r = _Reader(memoryview(data), path)
    version = r.u32("binary version")
    if version != 6:
        raise ModelFileError(f"{path}: unsupported CTranslate2 binary version {version} (expected 6) or not a model.bin")
    spec = r.string("spec name")
    if spec != "WhisperSpec":
        raise ModelFileError(f"{path}: not a Whisper model (spec {spec!r}): a CTranslate2 model of another "
                             "architecture; a Whisper conversion has spec 'WhisperSpec'")
    r.u32("spec revision")
    count = r.u32("variable count")
    if count > 100_000:
        raise ModelFileError(f"{path}: corrupt model file (implausible variable count {count})")

    variables: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = r.string("variable name")
        rank = r.u8(f"rank of {name}")
        dims = [r.u32(f"dims of {name}") for _ in range(rank)]
        dtype_code = r.u8(f"dtype of {name}")
        nbytes = r.u32(f"size of {name}")
        raw = r.take(nbytes, name)
        if dtype_code not in _DTYPES:
            raise ModelFileError(f"{path}: variable {name} has unknown dtype code {dtype_code}")
        n_items = int(np.prod(dims)) if dims else 1
        if dtype_code == 5:
            if nbytes != 2 * n_items:
                raise ModelFileError(f"{path}: variable {name}: {nbytes} bytes do not match shape {dims}")
            arr = _bf16_to_f32(bytes(raw))
        else:
            dt = _DTYPES[dtype_code]
            if nbytes != dt.itemsize * n_items:
                raise ModelFileError(f"{path}: variable {name}: {nbytes} bytes do not match shape {dims}")
            # A view, not a copy: numpy handles the unaligned offsets, every consumer
            # converts to float32 (a fresh array) anyway, and a copy would double the
            # transient memory of loading. The views keep ``data`` alive until dropped.
            arr = np.frombuffer(raw, dtype=dt)
        variables[name] = arr.reshape(dims) if dims else arr.reshape(())

    alias_count = r.u32("alias count")
    for _ in range(alias_count):
        alias = r.string("alias name")
        target = r.string("alias target")
        if target not in variables:
            raise ModelFileError(f"{path}: alias {alias} points to missing variable {target}")
        variables[alias] = variables[target]
    if r.pos != len(r.buf):
        raise ModelFileError(f"{path}: corrupt model file ({len(r.buf) - r.pos} unexpected bytes after the end)")
    return variables


def dequantize(variables: dict[str, np.ndarray], name: str) -> np.ndarray:
    """float32 weights, undoing CTranslate2's int8 row quantisation when present."""
    w = variables[name]
    if w.dtype == np.int8:
        scale = variables.get(name + "_scale")
        if scale is None:
            raise ModelFileError(f"int8 variable {name} has no {name}_scale")
        return w.astype(np.float32) / scale.astype(np.float32).reshape(-1, *([1] * (w.ndim - 1)))
    return w.astype(np.float32)
