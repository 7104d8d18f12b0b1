"""Exporting a compressed model as files anyone can load, and loading them back. No pickle.

Every export is a Hugging Face checkpoint directory: ``config.json``, ``model.safetensors``
(transformers' ``save_pretrained``), the tokenizer, and ``compression.json``, a sidecar
saying what made it (method, knobs, measured ratio, pattern, record id, harness version).
The same metadata sits in ``config.json`` under ``"compression"``.

* Sparsity methods (magnitude, Wanda, SparseGPT, BESA; unstructured and N:M) keep the dense
  module tree: the export is a standard checkpoint with zeros in it, and plain
  ``transformers.AutoModelForCausalLM.from_pretrained(DIR)`` loads it, harness or not.
* Structured methods (SliceGPT, IntraSlice) change shapes and module classes, which no
  transformers config expresses (per-layer widths, deleted heads, kept RoPE pairs, SliceGPT's
  shortcut matrices). ``compression.json`` then carries a *shape plan*: for each replaced
  module, its path, its class (one of the classes registered with ``@exportable``) and the
  JSON arguments that rebuild it (``export_spec``). Loading builds the dense skeleton from
  ``config.json`` on the meta device, rebuilds the planned modules through the adapter,
  gives every linear, embedding and loose parameter the shape its tensor has in the
  safetensors file, and loads the weights. Stock transformers refuses such a directory
  (shape mismatch), loudly.

Nothing here reads a ``.pt`` file: the pickled exports of harness 0.1 (``harness-model.pt``)
are refused with a message, never unpickled.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

import harness
from harness.atomic import atomic_write

SIDECAR = "compression.json"
LEGACY_PICKLE = "harness-model.pt"  # harness 0.1: refused, never read
FORMAT = 2

#: Module classes an export may name, by a stable name (their class's qualified name).
EXPORTABLE: dict[str, type[nn.Module]] = {}


def exportable(cls: type[nn.Module]) -> type[nn.Module]:
    """Register a module class a shape plan may rebuild. It defines ``export_spec(self) ->
    dict`` (JSON arguments) and the classmethod ``rebuild(cls, adapter, path, spec) ->
    nn.Module``, which builds it at ``path`` of the skeleton ``adapter`` wraps (where the
    dense model's module, or an already rebuilt parent's, sits)."""
    EXPORTABLE[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return cls


class NotAnExport(ValueError):
    """A directory that is neither a transformers checkpoint nor a harness export."""


# --- saving --------------------------------------------------------------------------------
def export_info(record) -> dict[str, Any]:
    """The compression metadata of an export, from the run's record."""
    report = record.report or {}
    return {"method": record.method, "method_kind": record.method_kind, "model": record.model,
            "target": record.label, "pattern": record.target.get("pattern"),
            "knobs": report.get("knobs", {}), "ratio": (record.achieved or {}).get("ratio"),
            "params_dense": (record.achieved or {}).get("params_dense"), "record": record.key}


def export_ratio(path: str | Path, count) -> float | None:
    """r of a loaded export (``count``: its ``ParameterCount``), against its dense model's
    count kept in the metadata."""
    dense = (read_metadata(path).get("params_dense") or {}).get("blocks")
    return None if not dense else 1 - count.blocks / dense


def shape_plan(model: nn.Module) -> list[dict[str, Any]]:
    """The replaced modules of ``model``, parents before children."""
    plan = []
    for path, module in model.named_modules():
        name = f"{type(module).__module__}.{type(module).__qualname__}"
        if name in EXPORTABLE:
            plan.append({"path": path, "class": name, "args": module.export_spec()})
    return plan


def dense_shapes_differ(model: nn.Module, config=None) -> bool:
    """Whether any tensor of ``model`` has a shape the model ``config`` describes does not."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        dense = AutoModelForCausalLM.from_config(config or model.config)
    shapes = {k: v.shape for k, v in dense.state_dict().items()}
    return any(shapes.get(k) != v.shape for k, v in model.state_dict().items())


def expressible_config(model: nn.Module):
    """A config stock transformers builds exactly these shapes from, when the only change is
    one MLP width shared by every layer (MLP-only slicing at a uniform ratio); else None."""
    import copy

    from harness.models.adapters import ModelAdapter

    adapter = ModelAdapter(model)
    widths = {adapter.linears(block)["down"].in_features for block in adapter.blocks}
    if len(widths) != 1 or not hasattr(model.config, "intermediate_size"):
        return None
    config = copy.deepcopy(model.config)
    config.intermediate_size = widths.pop()
    return None if dense_shapes_differ(model, config) else config


def save_compressed(model: nn.Module, tokenizer, path: str | Path, info: dict | None = None) -> Path:
    """Write ``model`` (and its tokenizer) to ``path`` as described in the module docstring."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    plan = shape_plan(model)
    structured = bool(plan) or dense_shapes_differ(model)
    stock = None if plan or not structured else expressible_config(model)
    if stock is not None:  # a config can say it: a standard checkpoint after all
        structured = False
    meta = {"format": FORMAT, "harness": harness.__version__, **(info or {}),
            # the same kernels on reload (eager and SDPA attention differ in the last bits)
            "attn_implementation": getattr(model.config, "_attn_implementation", None),
            "structure": {"modules": plan} if structured else None,
            "loadable_by_transformers": not structured}
    dense_config = model.config
    config = model.config = stock or dense_config
    config.compression = {k: v for k, v in meta.items() if k != "structure"}
    try:
        model.save_pretrained(path, safe_serialization=True)
    finally:
        del config.compression
        model.config = dense_config
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    atomic_write(path / SIDECAR, lambda f: f.write(json.dumps(meta, indent=1)))  # last: marks it complete
    return path


# --- loading -------------------------------------------------------------------------------
def is_compressed_dir(path: str | Path) -> bool:
    return (Path(path) / SIDECAR).is_file()


def check_directory(path: str | Path) -> None:
    """Refuse, with a reason, a directory the harness will not load."""
    path = Path(path)
    if (path / LEGACY_PICKLE).is_file() and not is_compressed_dir(path):
        raise NotAnExport(
            f"{path} holds {LEGACY_PICKLE}, a pickled model from harness 0.1. Pickles run code when "
            "loaded, so this harness never reads them; compress again with --save-models to get a "
            "safetensors export.")
    if path.is_dir() and not (path / "config.json").is_file():
        raise NotAnExport(f"{path} is a directory without config.json: neither a transformers checkpoint "
                          f"nor a harness export ({SIDECAR})")


def read_metadata(path: str | Path) -> dict:
    return json.loads((Path(path) / SIDECAR).read_text())


def load_compressed(path: str | Path, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) from a directory ``save_compressed`` wrote."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    check_directory(path)
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise NotAnExport(f"{path}/{SIDECAR} is format {meta.get('format')}; this harness reads format {FORMAT}")
    kwargs = {"attn_implementation": meta["attn_implementation"]} if meta.get("attn_implementation") else {}
    if meta.get("structure") is None:  # a standard checkpoint
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
    else:
        config = AutoConfig.from_pretrained(path, **kwargs)
        model = _rebuild(config, path, meta["structure"]["modules"], dtype)
    if hasattr(model.config, "compression"):
        del model.config.compression
    model.eval()
    model.config.use_cache = False
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):
        tokenizer = None
    return model, tokenizer


def _rebuild(config, path: Path, plan: list[dict], dtype: torch.dtype) -> nn.Module:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM
    try:
        from transformers.initialization import no_init_weights  # transformers ≥ 5
    except ImportError:  # pragma: no cover - older transformers
        from transformers.modeling_utils import no_init_weights

    from harness.models.adapters import ModelAdapter

    with no_init_weights():  # the dense skeleton: allocated, not initialised (weights come next)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    adapter = ModelAdapter(model)
    for entry in plan:
        cls = exportable_class(entry["class"])
        if cls is None:
            raise NotAnExport(f"{path} needs module class {entry['class']}, which no installed plugin registers")
        _set(model, entry["path"], cls.rebuild(adapter, entry["path"], entry["args"]))
    state = {}
    for file in sorted(path.glob("*.safetensors")):
        state.update(load_file(file))
    for name, tensor in state.items():  # every tensor decides the shape of what holds it
        owner_path, _, attr = name.rpartition(".")
        owner = _get(model, owner_path)
        if isinstance(owner, nn.Linear) and attr == "weight":
            has_bias = f"{owner_path}.bias" in state
            _set(model, owner_path, nn.Linear(tensor.shape[1], tensor.shape[0], bias=has_bias, device="meta",
                                              dtype=dtype))
        elif getattr(owner, attr, None) is not None and getattr(owner, attr).shape != tensor.shape:
            setattr(owner, attr, nn.Parameter(tensor.new_empty(tensor.shape, dtype=dtype), requires_grad=False))
            if isinstance(owner, nn.Embedding):
                owner.num_embeddings, owner.embedding_dim = tensor.shape
    missing, unexpected = model.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v
                                                 for k, v in state.items()}, strict=False, assign=True)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
        missing = [k for k in missing if not k.startswith(adapter.arch.lm_head)]
    if unexpected or missing:
        raise NotAnExport(f"{path}: weights do not fit the shape plan (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]})")
    model.requires_grad_(False)
    return model


def exportable_class(name: str) -> type[nn.Module] | None:
    """The ``@exportable`` class a shape plan names ("package.module.Class"), its module imported
    first if it is the harness's own or lies in the package of an installed plugin (a plan never
    makes anything else importable)."""
    module = name.rpartition(".")[0]
    packages = {"harness"} | {ep.value.split(":")[0].split(".")[0]
                              for ep in md.entry_points(group=harness.ENTRY_POINT_GROUP)}
    if name not in EXPORTABLE and module.split(".")[0] in packages:
        try:
            importlib.import_module(module)
        except ImportError:
            return None
    return EXPORTABLE.get(name)


def _get(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path) if path else root


def _set(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(_get(root, parent), name, module)
