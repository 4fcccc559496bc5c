"""Reading and writing Hugging Face safetensors checkpoints, placed straight into shardings.

A HF folder holds `model.safetensors`, or shards listed by `model.safetensors.index.json`. Tensors are
memory-mapped (the format is an 8-byte header length, a JSON header, then raw little-endian data; we
parse it ourselves because the `safetensors` numpy backend cannot represent bfloat16) and each device
receives only its own slice through `jax.make_array_from_callback`, so a sharded load never builds a
full replica per device.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Any, Callable, Iterator, Mapping

import jax
import ml_dtypes
import numpy as np

from darling_jax.errors import InputError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_, "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
}


def read_header(path: pathlib.Path) -> tuple[dict, int]:
  """(header dict, byte offset of the data section) of one safetensors file."""
  try:
    size = path.stat().st_size
    with open(path, "rb") as f:
      raw = f.read(8)
      if len(raw) != 8:
        raise ValueError("file shorter than its 8-byte header length")
      n = int.from_bytes(raw, "little")
      if n <= 0 or 8 + n > size:
        raise ValueError(f"header length {n} does not fit a {size}-byte file")
      header = json.loads(f.read(n))
  except FileNotFoundError:
    raise InputError(path, "file not found") from None
  except (ValueError, UnicodeDecodeError) as e:
    raise InputError(path, f"not a valid safetensors file ({e})") from None
  header.pop("__metadata__", None)
  data_start = 8 + n
  for name, info in header.items():
    try:
      begin, end = info["data_offsets"]
      dtype = np.dtype(_DTYPES[info["dtype"]])
      shape = info["shape"]
      if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ValueError(f"shape {shape!r} is not a list of non-negative integers")
      if not all(isinstance(o, int) and not isinstance(o, bool) for o in (begin, end)):
        raise ValueError(f"data_offsets {info['data_offsets']!r} are not integers")
      count = math.prod(shape)
    except (KeyError, TypeError, ValueError) as e:
      raise InputError(path, f"tensor {name!r} has a malformed header entry ({e})") from None
    # Negative offsets would read the header itself (or any byte before the data) as weights.
    if (begin < 0 or end < begin or end - begin != count * dtype.itemsize
        or data_start + end > size):
      raise InputError(path, f"tensor {name!r} is truncated or its offsets are corrupt "
                       f"(data_offsets {[begin, end]}, shape {shape}, {size - data_start} "
                       "data bytes)")
  return header, data_start


class SafetensorsFolder(Mapping[str, np.ndarray]):
  """Lazy name -> numpy mapping over every safetensors file of a HF model folder."""

  def __init__(self, folder: str | os.PathLike):
    self.folder = pathlib.Path(folder)
    index = self.folder / INDEX_NAME
    single = self.folder / SINGLE_NAME
    if index.exists():
      try:
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted({self._confined(index, f) for f in weight_map.values()})
      except (json.JSONDecodeError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise InputError(index, f"not a valid safetensors index ({e})") from None
    elif single.exists():
      files = [single]
    else:
      files = sorted(self.folder.glob("*.safetensors"))
      if not files:
        raise InputError(self.folder, f"no {SINGLE_NAME} or {INDEX_NAME} in this folder")
    self._entry: dict[str, tuple[pathlib.Path, dict, int]] = {}
    for f in files:
      if not f.exists():
        raise InputError(f, "listed in the safetensors index but missing")
      header, data_start = read_header(f)
      for name, info in header.items():
        self._entry[name] = (f, info, data_start)
    self._maps: dict[pathlib.Path, np.memmap] = {}

  def _confined(self, index: pathlib.Path, name: Any) -> pathlib.Path:
    """A shard named by the index, which must be a file directly in the model folder: an index is
    untrusted, and `../../etc/passwd` or an absolute path must never be opened."""
    if not isinstance(name, str) or not name.endswith(".safetensors") or pathlib.PurePath(
        name).name != name or name in (".", ".."):
      raise InputError(index, f"shard {name!r} is not a .safetensors file name inside "
                       f"{self.folder} (paths are not allowed)")
    return self.folder / name

  def __getitem__(self, name: str) -> np.ndarray:
    if name not in self._entry:
      raise InputError(self.folder, f"checkpoint has no tensor named {name!r}")
    path, info, data_start = self._entry[name]
    if path not in self._maps:
      self._maps[path] = np.memmap(path, dtype=np.uint8, mode="r")
    begin, end = info["data_offsets"]
    buf = self._maps[path][data_start + begin : data_start + end]
    return buf.view(_DTYPES[info["dtype"]]).reshape(info["shape"])

  def __contains__(self, name: object) -> bool:
    # Mapping's default __contains__ relies on KeyError; __getitem__ raises InputError instead.
    return name in self._entry

  def shape_of(self, name: str) -> tuple[int, ...]:
    if name not in self._entry:
      raise InputError(self.folder, f"checkpoint has no tensor named {name!r}")
    return tuple(self._entry[name][1]["shape"])

  def __iter__(self) -> Iterator[str]:
    return iter(self._entry)

  def __len__(self) -> int:
    return len(self._entry)


def place_sliced(
    shape: tuple[int, ...],
    dtype,
    sharding: jax.sharding.Sharding,
    slice_fn: Callable[[tuple[slice, ...]], np.ndarray],
) -> jax.Array:
  """A global array with `sharding` where each device's block comes from `slice_fn(index)`.

  `slice_fn` reads only the requested block (memory-mapped sources), so placing a sharded parameter
  never materialises the whole tensor, neither on a device nor on the host.
  """
  return jax.make_array_from_callback(
      tuple(shape), sharding, lambda idx: np.asarray(slice_fn(idx)).astype(dtype, copy=False)
  )


def place(
    produce: Callable[[], np.ndarray],
    shape: tuple[int, ...],
    dtype,
    sharding: jax.sharding.Sharding,
    what: str,
) -> jax.Array:
  """`place_sliced` for a lazily produced host array, checking its shape against the config's.

  `produce` is called once; memory-mapped arrays stay lazy, so each device still reads only its slice.
  """
  arr = produce()
  if tuple(arr.shape) != tuple(shape):
    raise InputError(what, f"has shape {tuple(arr.shape)}, the config implies {tuple(shape)}")
  return place_sliced(tuple(shape), dtype, sharding, lambda idx: arr[idx])


def _write_file(tensors: Mapping[str, np.ndarray], path: pathlib.Path) -> None:
  names = {np.dtype(v): k for k, v in _DTYPES.items()}
  header: dict = {"__metadata__": {"format": "pt"}}
  offset = 0
  arrays = []
  for name, arr in tensors.items():
    arr = np.ascontiguousarray(arr)
    if arr.dtype not in names:
      raise InputError(name, f"dtype {arr.dtype} cannot be written to safetensors")
    header[name] = {"dtype": names[arr.dtype], "shape": list(arr.shape),
                    "data_offsets": [offset, offset + arr.nbytes]}
    offset += arr.nbytes
    arrays.append(arr)
  raw = json.dumps(header, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned, as HF writes it
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "wb") as f:
    f.write(len(raw).to_bytes(8, "little"))
    f.write(raw)
    for arr in arrays:
      f.write(arr.tobytes())
  os.replace(tmp, path)  # never leave a half-written checkpoint behind


def save_safetensors(tensors: Mapping[str, np.ndarray], folder: str | os.PathLike,
                     max_shard_bytes: int = 4 << 30) -> None:
  """Writes tensors as HF does: one file, or shards plus an index when over `max_shard_bytes`."""
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name, arr in tensors.items():
    if size and size + arr.nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = arr
    size += arr.nbytes
  if len(shards) == 1:
    _write_file(shards[0], folder / SINGLE_NAME)
    return
  weight_map = {}
  total = 0
  for i, shard in enumerate(shards):
    fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    _write_file(shard, folder / fname)
    for name, arr in shard.items():
      weight_map[name] = fname
      total += arr.nbytes
  (folder / INDEX_NAME).write_text(
      json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
  )
