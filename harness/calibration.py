"""The calibration engine: one shared calibration set, and the block-by-block driver.

Every method in a comparison gets the same ``Calibration`` (N sequences × L tokens drawn
with a seed, cached on disk). Methods walk the model with ``calibration.sequential``:

    for block in calibration.sequential(model):        # block 0, 1, ... in order
        stats = block.input_stats(["q", "down"])       # XᵀX per linear, float64
        ...                                            # transform block.module in place
    # on leaving each iteration the driver recomputes the (transformed) block's outputs,
    # which become the next block's inputs: the sequential protocol of SparseGPT, Wanda
    # and SliceGPT. Only the current block is on the compute device; the rest of the
    # model stays on the CPU, so a 70B model goes through one GPU.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from harness.atomic import atomic_write
from harness.models.adapters import CACHE_KEYWORDS, ModelAdapter


# --- the calibration set ------------------------------------------------------------------
@dataclass(frozen=True)
class CalibrationSpec:
    dataset: str = "wikitext2"
    n: int = 128
    length: int = 2048
    seed: int = 0

    @classmethod
    def parse(cls, text: str, seed: int = 0) -> CalibrationSpec:
        """``"wikitext2:128x2048"`` → CalibrationSpec("wikitext2", 128, 2048)."""
        match = re.fullmatch(r"([\w.-]+)(?::(\d+)x(\d+))?", text)
        if not match:
            raise ValueError(f"calibration must look like DATASET:NxL (e.g. wikitext2:128x2048), got {text!r}")
        n, length = (int(match[2]), int(match[3])) if match[2] else (cls.n, cls.length)
        if n < 1 or length < 2:
            raise ValueError(f"calibration needs N ≥ 1 sequences of L ≥ 2 tokens, got {n}x{length}")
        return cls(match[1], n, length, seed)

    def __str__(self) -> str:
        return f"{self.dataset}:{self.n}x{self.length}@seed{self.seed}"


def draw_windows(token_ids: torch.Tensor, n: int, length: int, seed: int) -> torch.Tensor:
    """N random windows of ``length`` tokens from one long token stream (seeded)."""
    if token_ids.numel() <= length:
        raise ValueError(f"calibration text has {token_ids.numel()} tokens, fewer than L={length}")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, token_ids.numel() - length, (n,), generator=generator)
    return torch.stack([token_ids[s : s + length] for s in starts.tolist()])


#: Where a BOS token goes (``--bos``, recorded with every calibration set and perplexity):
#:   stream  the tokenizer's own special tokens on the whole joined text, as the papers'
#:           reference code tokenises it (SparseGPT's and Wanda's ``get_wikitext2``): one BOS
#:           opens the stream, where the tokenizer adds one, so only the first window starts with it
#:   window  a BOS before every window (lm-eval's rolling windows), the text cut one token shorter
#:   none    no special token anywhere
#: What is recorded is what happened: ``stream`` with a tokenizer that adds no special token
#: (SmolLM2's, Qwen's) is ``none``.
BOS_MODES = ("stream", "window", "none")


def tokenize(tokenizer, text: str, bos: str = "none") -> torch.Tensor:
    """The whole text as one 1-D token stream: with the tokenizer's special tokens for
    ``bos="stream"``, without them otherwise (``window`` puts its BOS in later, per window)."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=bos == "stream").input_ids
    return ids[0]


def bos_placement(tokenizer, bos: str) -> str:
    """What ``bos`` amounts to with this tokenizer (``BOS_MODES``): ``stream`` is ``none`` when
    the tokenizer adds no special token."""
    if bos not in BOS_MODES:
        raise ValueError(f"--bos must be one of {', '.join(BOS_MODES)}, got {bos!r}")
    if bos == "stream":
        plain, special = (tokenizer("a", add_special_tokens=flag).input_ids for flag in (False, True))
        return "stream" if special != plain else "none"
    return bos


def bos_id(tokenizer) -> int:
    """The token a ``window`` BOS is: the tokenizer's BOS, else its end-of-text token (the prefix
    lm-eval's rolling windows use)."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise ValueError("--bos window: the tokenizer has neither a BOS nor an end-of-text token")
    return int(token)


def prefixed(windows: torch.Tensor, token: int) -> torch.Tensor:
    """Each window with ``token`` in front (N × L → N × (L + 1))."""
    return torch.cat([torch.full((windows.shape[0], 1), token, dtype=windows.dtype), windows], 1)


def _cache_file(cache_dir: Path, kind: str, *key: object) -> Path:
    digest = hashlib.sha256(repr(key).encode()).hexdigest()[:16]
    return cache_dir / kind / f"{digest}.pt"


def load_or_make(cache_dir: Path | None, kind: str, key: tuple, make):
    """Return ``make()``, cached on disk under ``key`` (written atomically)."""
    if cache_dir is None:
        return make()
    path = _cache_file(Path(cache_dir), kind, *key)
    if path.is_file():
        return torch.load(path, weights_only=True)
    value = make()
    atomic_write(path, lambda f: torch.save(value, f), binary=True)  # unique temp file: many writers are safe
    return value


@dataclass
class Calibration:
    """The shared calibration set and where to compute on it."""

    input_ids: torch.Tensor  # (N, L) token ids
    spec: CalibrationSpec
    source: str = ""  # where the text came from (file path or hub)
    device: torch.device = torch.device("cpu")
    batch_size: int = 8
    sha256: str | None = None  # the source file's content hash (None: the hub)
    bos: str = "none"  # where a BOS token went (BOS_MODES), as placed

    def sequential(self, model: ModelAdapter, desc: str = "blocks") -> Iterator[BlockStep]:
        return sequential(model, self.input_ids, self.device, self.batch_size, desc)

    def describe(self) -> dict:
        return {**asdict(self.spec), "source": self.source, "sha256": self.sha256, "batch_size": self.batch_size,
                "bos": self.bos}


# --- the block-by-block driver -------------------------------------------------------------
class _Stop(Exception):
    pass


class _Recorder(nn.Module):
    """Stands in for one decoder block: records the keyword arguments the model hands it
    (mask, positions, rotary tables: per block, since layers of different types, e.g.
    Gemma's sliding and global ones, get different ones) and passes the hidden states on.
    The first also keeps the hidden states (block 0's input); the last stops the forward
    pass, so the final norm and the LM head never run on the calibration set."""

    def __init__(self, block: nn.Module, store: list, first: bool, last: bool):
        super().__init__()
        self.store, self.first, self.last = store, first, last
        if hasattr(block, "attention_type"):  # read by some models' forward loops
            self.attention_type = block.attention_type

    def forward(self, hidden_states, *args, **kwargs):
        self.store.append((hidden_states if self.first else None, kwargs))
        if self.last:
            raise _Stop
        return hidden_states


def _to(value, device, moved: dict):
    """``value`` on ``device``; a tensor shared by several blocks' arguments moves once."""
    if torch.is_tensor(value):
        if id(value) not in moved:
            moved[id(value)] = value.to(device)
        return moved[id(value)]
    if isinstance(value, tuple):
        return tuple(_to(v, device, moved) for v in value)
    return value


def capture_block_inputs(model: ModelAdapter, input_ids: torch.Tensor, device: torch.device,
                         batch_size: int) -> tuple[list[torch.Tensor], list[list[dict]]]:
    """Hidden states entering block 0 (per batch), and the keyword arguments of every block
    (per block, per batch): masks, positions, rotary tables, as the model's own forward
    computes them. No block runs: each is replaced by a recorder for this pass."""
    blocks = model.blocks
    originals = list(blocks)
    n = len(originals)
    per_block: list[list] = [[] for _ in range(n)]
    outer = [model.embeddings] + ([model.rotary] if model.rotary is not None else [])
    for m in outer:
        m.to(device)
    for i, block in enumerate(originals):
        blocks[i] = _Recorder(block, per_block[i], first=i == 0, last=i == n - 1)
    try:
        with torch.no_grad():
            for batch in input_ids.split(batch_size):
                try:
                    model.model(batch.to(device), use_cache=False)
                except _Stop:
                    pass
    finally:
        for i, block in enumerate(originals):
            blocks[i] = block
        for m in outer:
            m.to("cpu")
    hidden = [h for h, _ in per_block[0]]
    moved: dict = {}
    kwargs = [[{k: _to(v, device, moved) for k, v in kw.items() if k not in CACHE_KEYWORDS}
               for _, kw in calls] for calls in per_block]
    for calls in kwargs:
        for kw in calls:
            kw["use_cache"] = False
    return hidden, kwargs


def run_block(block: nn.Module, hidden: list[torch.Tensor], kwargs: list[dict]) -> list[torch.Tensor]:
    outputs = []
    for h, kw in zip(hidden, kwargs):
        out = block(h, **kw)
        outputs.append(out[0] if isinstance(out, tuple) else out)
    return outputs


@dataclass
class InputStats:
    """Statistics of one linear layer's input X (tokens × features) over the calibration set."""

    gram: torch.Tensor | None  # XᵀX, float64 (features × features)
    sqnorm: torch.Tensor  # Σ_tokens x_j², float64: diag(XᵀX), Wanda's ‖X_j‖²
    tokens: int

    @property
    def norm(self) -> torch.Tensor:
        return self.sqnorm.sqrt()


class _StatsHook:
    def __init__(self, features: int, device, gram: bool):
        self.gram = torch.zeros(features, features, dtype=torch.float64, device=device) if gram else None
        self.sqnorm = torch.zeros(features, dtype=torch.float64, device=device)
        self.tokens = 0

    def __call__(self, module, args, output):
        x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
        self.sqnorm += (x * x).sum(0)
        if self.gram is not None:
            self.gram.addmm_(x.T, x)
        self.tokens += x.shape[0]

    def result(self) -> InputStats:
        return InputStats(self.gram, self.sqnorm, self.tokens)


@dataclass
class BlockStep:
    """One decoder block on the compute device, with its calibration inputs."""

    index: int
    module: nn.Module
    model: ModelAdapter
    inputs: list[torch.Tensor]
    kwargs: list[dict]
    #: The block's outputs, set by the driver once the loop body is done with the block
    #: (after the last block: the final hidden states, which perplexity reads).
    outputs: list[torch.Tensor] | None = None
    #: What the next block reads, if the loop body sets it (AWQ: the block's outputs before its
    #: weights changed, as its reference computes them); by default the block's outputs as the
    #: body left it.
    next_inputs: list[torch.Tensor] | None = None

    @property
    def linears(self) -> dict[str, nn.Linear]:
        return self.model.linears(self.module)

    @torch.no_grad()
    def forward(self) -> list[torch.Tensor]:
        """The block's outputs on all calibration inputs, as the block is now."""
        return run_block(self.module, self.inputs, self.kwargs)

    @torch.no_grad()
    def input_stats(self, roles: list[str] | None = None, gram: bool = True) -> dict[str, InputStats]:
        """Input statistics of the named linears (default: all), from one forward pass.

        Linears that read the same tensor (q/k/v, gate/up) share one accumulation.
        """
        linears = self.linears
        roles = list(roles or linears)
        hooks, handles, by_role = {}, [], {}
        for role in roles:
            group = next((g for g in self.model.arch.norm_readers.values() if role in g), (role,))
            leader = next(r for r in group if r in roles)
            if leader not in hooks:
                layer = linears[leader]
                hooks[leader] = _StatsHook(layer.in_features, layer.weight.device, gram)
                handles.append(layer.register_forward_hook(hooks[leader]))
            by_role[role] = leader
        try:
            self.forward()
        finally:
            for h in handles:
                h.remove()
        results = {leader: hook.result() for leader, hook in hooks.items()}
        return {role: results[leader] for role, leader in by_role.items()}


def sequential(model: ModelAdapter, input_ids: torch.Tensor, device: torch.device | str,
               batch_size: int = 8, desc: str = "blocks") -> Iterator[BlockStep]:
    """Walk the decoder blocks in order; see the module docstring.

    After the loop the last block's outputs are available as ``.outputs`` of the final
    step (the perplexity evaluator reads them).
    """
    device = torch.device(device)
    hidden, kwargs_by_block = capture_block_inputs(model, input_ids, device, batch_size)
    blocks = model.blocks
    # disable=None: no bar when output is not a terminal (CI logs stay readable).
    for index in tqdm(range(len(blocks)), desc=desc, leave=False, dynamic_ncols=True, disable=None):
        block = blocks[index].to(device)
        kwargs = kwargs_by_block[index]
        step = BlockStep(index, block, model, hidden, kwargs)
        yield step
        block = blocks[index]  # the method may have replaced the whole block
        step.module = block
        if step.next_inputs is not None:
            hidden = step.next_inputs
        else:
            with torch.no_grad():
                hidden = run_block(block, hidden, kwargs)
        step.outputs = hidden
        block.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()
