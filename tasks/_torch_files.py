"""Reading a tensor written by `torch.save`, as a NumPy array, without torch.

The original's Induction data on the hub (`validation_data.pt`, `mask_repeat_candidates.pkl`) are
`torch.save` files. Both of torch's formats are read here with the standard library and NumPy:

- **zip** (torch >= 1.6, the default since): an archive `<name>/data.pkl` (a pickle whose
  tensors are `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` calls, each
  storage a persistent id `("storage", torch.<Type>Storage, key, location, numel)`), the raw
  storages as `<name>/data/<key>` and their byte order in `<name>/byteorder`.
- **legacy** (`_use_new_zipfile_serialization=False`): five pickles in a row (magic number,
  protocol 1001, system info, the object, the storage keys), then each storage as an
  8-byte little-endian element count and its raw bytes.

The unpickler accepts only the few torch globals a plain tensor needs, so a file holding
anything else (a module, a dict of tensors, code) is refused rather than executed. Files this
reader does not understand are handed to `torch.load(..., weights_only=True)` when torch is
installed (an optional extra: `pip install torch==2.13.0`), with a one-line error otherwise.
"""

import io
import os
import pickle
import zipfile
from typing import Any

import numpy as np


_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class UnsupportedTorchFile(ValueError):
    """The file is not a plain tensor in a format this module reads."""


class _StorageType:
    def __init__(self, name: str):
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _PendingTensor:
    """A `_rebuild_tensor_v2` call, evaluated once its storage holds the data."""

    def __init__(self, storage, offset, size, stride, *_rest):
        self.storage, self.offset = storage, int(offset)
        self.size, self.stride = tuple(map(int, size)), tuple(map(int, stride))

    def array(self) -> np.ndarray:
        storage, offset, size, stride = self.storage, self.offset, self.size, self.stride
        if len(stride) != len(size):
            raise UnsupportedTorchFile("a tensor's size and stride differ in length")
        if 0 in size:
            return np.zeros(size, storage.dtype)
        end = offset + 1 + sum((n - 1) * s for n, s in zip(size, stride))
        if offset < 0 or end > storage.size or (stride and min(stride) < 0):
            raise UnsupportedTorchFile("a tensor's size and stride run past its storage")
        itemsize = storage.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            storage[offset:], shape=size, strides=tuple(s * itemsize for s in stride)
        )
        return np.array(view)  # a copy that owns its data, in C order


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, load_storage):
        super().__init__(file)
        self._load_storage = load_storage

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _PendingTensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "collections" and name == "OrderedDict":
            import collections

            return collections.OrderedDict
        raise UnsupportedTorchFile(f"it holds {module}.{name}, not only a plain tensor")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise UnsupportedTorchFile(f"unknown persistent id {pid!r:.60}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise UnsupportedTorchFile(f"unknown storage type {storage_type!r:.60}")
        return self._load_storage(str(key), storage_type.dtype, int(numel), pid[5:])


def _read_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise UnsupportedTorchFile("the archive has no single data.pkl")
        prefix = pickles[0][: -len("data.pkl")]
        order = "little"
        if prefix + "byteorder" in names:
            order = archive.read(prefix + "byteorder").decode().strip()
        if order not in ("little", "big"):
            raise UnsupportedTorchFile(f"unknown byte order {order!r}")

        def load_storage(key, dtype, numel, _view):
            raw = archive.read(f"{prefix}data/{key}")
            dtype = dtype.newbyteorder("<" if order == "little" else ">")
            if len(raw) < numel * dtype.itemsize:
                raise UnsupportedTorchFile(f"storage {key} is shorter than its {numel} elements")
            return np.frombuffer(raw, dtype, count=numel).astype(dtype.newbyteorder("="))

        return _Unpickler(io.BytesIO(archive.read(pickles[0])), load_storage).load()


def _read_legacy(path: str) -> Any:
    with open(path, "rb") as f:
        try:
            magic, protocol = pickle.load(f), pickle.load(f)
        except Exception as err:
            raise UnsupportedTorchFile("not a torch file") from err
        if magic != _LEGACY_MAGIC or protocol != _LEGACY_PROTOCOL:
            raise UnsupportedTorchFile("not a torch file")
        info = pickle.load(f)
        if not (isinstance(info, dict) and info.get("little_endian", True)):
            raise UnsupportedTorchFile("a big-endian legacy file")
        storages: dict[str, np.ndarray] = {}

        def load_storage(key, dtype, numel, view):
            if view and view[0] is not None:
                raise UnsupportedTorchFile("a legacy storage view")
            # Filled in from the bytes that follow the object's pickle.
            return storages.setdefault(key, np.zeros(numel, dtype))

        obj = _Unpickler(f, load_storage).load()
        for key in pickle.load(f):
            base = storages.get(str(key))
            if base is None:
                raise UnsupportedTorchFile(f"storage {key} is not used by the object")
            count = int.from_bytes(f.read(8), "little")
            raw = f.read(count * base.dtype.itemsize)
            if count != base.size or len(raw) != count * base.dtype.itemsize:
                raise UnsupportedTorchFile(f"storage {key} has the wrong length")
            base[:] = np.frombuffer(raw, base.dtype.newbyteorder("<"))
        return obj


def read_torch_tensor(path: str | os.PathLike) -> np.ndarray:
    """The tensor in a `torch.save` file, as a NumPy array (see the module docstring).

    **Raises:** `FileNotFoundError` if there is no such file; `ValueError` if the file holds
    something other than one tensor and torch is not installed to read it.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No torch file {path!r}.")
    try:
        obj = _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
        if isinstance(obj, _PendingTensor):
            return obj.array()
        raise ValueError(f"{path} holds a {type(obj).__name__}; expected one tensor.")
    except UnsupportedTorchFile as err:
        reason = str(err)
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, KeyError) as err:
        reason = f"it is not a readable torch file ({type(err).__name__})"
    try:
        import torch
    except ImportError:
        raise ValueError(
            f"Cannot read {path} without torch: {reason}. Install torch (pip install "
            "torch==2.13.0) to load it, or convert it to .npy."
        ) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"Cannot read {path}: {reason}, and torch.load fails too ({type(err).__name__}). "
            "Is it a file written by torch.save?"
        ) from None
    if not isinstance(obj, torch.Tensor):
        raise ValueError(f"{path} holds a {type(obj).__name__}; expected one tensor.")
    if obj.dtype == torch.bfloat16:  # NumPy has no bfloat16
        obj = obj.float()
    return obj.numpy()
