"""Reading `.safetensors` checkpoints -- one file, or a sharded set with an index -- into NumPy.

Shared by the Hugging Face loaders (`_gpt2`, `_hf`) and the TransformerLens loaders (`_tl`).
Tensors are memory-mapped and read-only; float32, float16 and bfloat16 (through `ml_dtypes`, a
dependency of JAX) load without torch.
"""

import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np


__all__ = ["read_safetensors", "read_safetensors_index", "INDEX_FILE", "WEIGHTS_FILE"]

WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def _bfloat16():
    import ml_dtypes  # a dependency of jax

    return ml_dtypes.bfloat16


_SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": None,  # resolved lazily through ml_dtypes
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Reads a `.safetensors` file into read-only numpy arrays (memory-mapped).

    The format is an 8-byte little-endian header length `N`, `N` bytes of JSON mapping each
    tensor name to `{dtype, shape, data_offsets: [begin, end]}` (offsets into the byte buffer that
    follows the header), then that buffer. Read directly (not through `safetensors.numpy`) so that
    a truncated file is reported with sizes, and bfloat16 tensors load without torch.
    """
    size = path.stat().st_size
    fix = f"Re-download {path.name} (the copy at {path} is truncated or corrupt)."
    if size < 8:
        raise ValueError(f"{path} is {size} bytes, too short to be a safetensors file. {fix}")
    with open(path, "rb") as f:
        n_header = int.from_bytes(f.read(8), "little")
        if n_header > size - 8:
            raise ValueError(
                f"{path} is truncated: its header claims {n_header} bytes but the file has only "
                f"{size} bytes in total. {fix}"
            )
        try:
            header = json.loads(f.read(n_header).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} has an unreadable safetensors header ({err}). {fix}") from err
    if not isinstance(header, dict):
        raise ValueError(f"{path} has a malformed safetensors header. {fix}")
    header.pop("__metadata__", None)
    start = 8 + n_header
    need = max((int(t["data_offsets"][1]) for t in header.values()), default=0)
    if start + need > size:
        raise ValueError(
            f"{path} is truncated: its header describes {start + need} bytes of data but the file "
            f"has only {size} bytes. {fix}"
        )
    if need:
        buffer = np.memmap(path, dtype=np.uint8, mode="r", offset=start, shape=(need,))
    else:
        buffer = np.zeros((0,), np.uint8)
    out = {}
    for name, info in header.items():
        dtype_name = info["dtype"]
        if dtype_name not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {dtype_name}.")
        dtype = np.dtype(_bfloat16() if dtype_name == "BF16" else _SAFETENSORS_DTYPES[dtype_name])
        begin, end = (int(o) for o in info["data_offsets"])
        shape = tuple(int(s) for s in info["shape"])
        if end - begin != math.prod(shape) * dtype.itemsize:
            raise ValueError(
                f"{path}: tensor {name!r} has {end - begin} bytes of data for shape {shape} "
                f"{dtype_name}. {fix}"
            )
        data = buffer[begin:end]
        out[name] = data.view(dtype).reshape(shape)
    return out


def read_safetensors_index(index_path: Path) -> dict[str, np.ndarray]:
    """Reads a sharded checkpoint: `model.safetensors.index.json` and the shards it names.

    The index is `{"metadata": {...}, "weight_map": {tensor name: shard file name}}`, the shard
    names relative to the index's folder (as `save_pretrained(max_shard_size=...)` writes them).

    **Returns:** every tensor of every shard, by name.

    **Raises:** `FileNotFoundError` naming each missing shard; `ValueError` for a malformed
    index, a tensor the index lists but its shard lacks, or a shard holding a tensor under a
    different shard's name in the index.
    """
    index_path = Path(index_path)
    folder = index_path.parent
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{index_path} is not valid JSON ({err}).") from err
    weight_map = index.get("weight_map") if isinstance(index, Mapping) else None
    if not isinstance(weight_map, Mapping) or not all(
        isinstance(v, str) for v in weight_map.values()
    ):
        raise ValueError(
            f"{index_path} has no 'weight_map' object mapping tensor names to shard files; "
            "re-save the checkpoint with `save_pretrained`."
        )
    shards = sorted(set(weight_map.values()))
    bad = [s for s in shards if Path(s).is_absolute() or ".." in Path(s).parts]
    if bad:
        raise ValueError(
            f"{index_path} names shard files outside its folder: {', '.join(bad)}. Shard names "
            "must be plain file names next to the index."
        )
    missing = [s for s in shards if not (folder / s).is_file()]
    if missing:
        n = sum(1 for v in weight_map.values() if v in missing)
        raise FileNotFoundError(
            f"{index_path} points at shard file(s) that {folder} does not have: "
            f"{', '.join(missing)} ({n} tensors). Copy the missing shard(s) into the folder "
            "(all files of the checkpoint are needed)."
        )
    out: dict[str, np.ndarray] = {}
    problems: list[str] = []
    for shard in shards:
        tensors = read_safetensors(folder / shard)
        for name, x in tensors.items():
            owner = weight_map.get(name)
            if owner is not None and owner != shard:
                problems.append(f"{name!r} is in {shard}, but the index says {owner}")
            out.setdefault(name, x)
    absent = sorted(n for n, s in weight_map.items() if n not in out)
    if absent:
        problems.append(
            f"{len(absent)} tensor(s) listed in the index are in no shard: "
            + ", ".join(f"{n!r} (in {weight_map[n]})" for n in absent[:10])
            + (" ..." if len(absent) > 10 else "")
        )
    if problems:
        raise ValueError(
            f"{index_path} does not match its shards:\n  - "
            + "\n  - ".join(problems)
            + "\nFix: re-download the checkpoint (the index and shards come from different saves)."
        )
    return out
