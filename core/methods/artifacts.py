"""Checks on a run's saved weights before anything loads them: safetensors and JSON only, whole, and of the kind the
run's method writes. A folder that fails gets one line naming the file and what is wrong (an AdapterError), instead of
an error from deep inside safetensors, PEFT or transformers, and a pickle file is never handed to a loader.

Only headers are read (a few KB per file): the tensors themselves are left to the loaders.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from core.errors import AdapterError
from core.methods.registry import METHODS, Method
from core.runs import FULL_FORMAT, PARTIAL_FORMAT, PEFT_FORMAT, SAVE_FORMATS

# Files a loader would unpickle (torch.load, pickle, joblib): never loaded, and named when they stand in for weights.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
# bytes per element of every safetensors dtype
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2, "F16": 2,
               "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # what safetensors itself accepts


def _fail(path: Path, problem: str) -> AdapterError:
    return AdapterError(f"adapter: {path}: {problem}")


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold an object; AdapterError naming the file otherwise."""
    if not path.is_file():
        raise _fail(path, "missing")
    try:
        value = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _fail(path, f"not valid JSON ({str(err)[:120]})") from None
    if not isinstance(value, dict):
        raise _fail(path, f"must hold a JSON object, not {type(value).__name__}")
    return value


def check_safetensors(path: Path) -> dict[str, dict[str, Any]]:
    """The tensor table of a safetensors file ({name: {dtype, shape, data_offsets}}), after checking that the header
    is whole and that the file holds exactly the bytes the header describes (a truncated copy fails here)."""
    if path.is_symlink() or not path.is_file():
        raise _fail(path, "missing" if not path.exists() else "not a regular file")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise _fail(path, f"truncated: {size} bytes, not a safetensors file")
        (length,) = struct.unpack("<Q", head)
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise _fail(path, f"not a safetensors file or truncated (header of {length} bytes in a file of {size})")
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):
        raise _fail(path, "not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise _fail(path, "not a safetensors file (its header is not a JSON object)")
    tensors = {name: entry for name, entry in header.items() if name != "__metadata__"}
    end = 0
    for name, entry in tensors.items():
        if not isinstance(entry, dict):
            raise _fail(path, f"tensor {name!r}: bad header entry")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if (dtype not in DTYPE_BYTES or not isinstance(shape, list)
                or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
                or not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(n, int) and not isinstance(n, bool) for n in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise _fail(path, f"tensor {name!r}: bad header entry")
        if offsets[1] - offsets[0] != math.prod(shape) * DTYPE_BYTES[dtype]:
            raise _fail(path, f"tensor {name!r}: {offsets[1] - offsets[0]} bytes for shape {shape} {dtype}")
        end = max(end, offsets[1])
    held = size - 8 - length
    if held < end:
        raise _fail(path, f"truncated: the header describes {end} bytes of tensors, the file holds {held}")
    if held > end:
        raise _fail(path, f"{held - end} bytes after the last tensor; not a safetensors file as written")
    return tensors


def _refuse_pickles(folder: Path, wanted: str) -> None:
    """Name a pickle file that sits where ``wanted`` (a safetensors file) is missing."""
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES) if folder.is_dir() else []
    if pickles:
        raise _fail(folder / pickles[0], f"a pickle file, which is never loaded; the run needs {wanted} (safetensors)")


def _check_peft(folder: Path, method: Method) -> None:
    config = read_json_object(folder / "adapter_config.json")
    peft_type = config.get("peft_type")
    expected = method.peft_type
    if not isinstance(peft_type, str) or (expected is not None and peft_type != expected):
        raise _fail(folder / "adapter_config.json", f"peft_type {peft_type!r} does not match the run's method "
                    f"{method.name} (expected {expected!r})")
    weights = folder / method.storage.weights_file
    if not weights.exists():
        _refuse_pickles(folder, weights.name)
    tensors = check_safetensors(weights)
    if not tensors:
        raise _fail(weights, "holds no tensors")


def _check_full(folder: Path) -> None:
    read_json_object(folder / "config.json")
    for name in ("tokenizer_config.json", "tokenizer.json", "generation_config.json"):
        if (folder / name).exists():
            read_json_object(folder / name)
    index = folder / "model.safetensors.index.json"
    if index.exists():
        shards = read_json_object(index).get("weight_map")
        if not isinstance(shards, dict) or not shards:
            raise _fail(index, "has no weight_map")
        for shard in sorted(set(map(str, shards.values()))):
            if "/" in shard or "\\" in shard or shard.startswith(".") or not shard.endswith(".safetensors"):
                raise _fail(index, f"names a shard outside the folder or not in safetensors: {shard!r}")
            check_safetensors(folder / shard)
        return
    weights = folder / SAVE_FORMATS[FULL_FORMAT].weights_file
    if not weights.exists():
        _refuse_pickles(folder, weights.name)
    check_safetensors(weights)


def _check_partial(folder: Path) -> None:
    weights = folder / SAVE_FORMATS[PARTIAL_FORMAT].weights_file
    if not weights.exists():
        _refuse_pickles(folder, weights.name)
    if not check_safetensors(weights):
        raise _fail(weights, "holds no tensors")


def check_run_weights(run_dir: str | Path) -> Path:
    """The weights folder of a run (adapter/, model/ or weights/, as its method saves them), checked: safetensors
    whole and JSON valid, no pickle in their place. Raises AdapterError with one line naming the folder or file."""
    run_dir = Path(run_dir)
    config = read_json_object(run_dir / "config.json")
    name = config.get("method")
    method = METHODS.get(name) if isinstance(name, str) else None
    if method is None:
        raise _fail(run_dir / "config.json", f"unknown method {name!r}")
    folder = run_dir / method.weights_folder
    if folder.is_symlink() or not folder.is_dir():
        raise _fail(run_dir, f"has no {folder.name}/ folder with the weights of its {name} training")
    if method.save_format == PEFT_FORMAT:
        _check_peft(folder, method)
    elif method.save_format == FULL_FORMAT:
        _check_full(folder)
    else:
        _check_partial(folder)
    return folder
