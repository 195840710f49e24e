"""Language models: one shared block structure, six sequence mixers (paper §4-5; notebooks 07-10).

    tokens (batch, seq)
      -> embedding                                   (batch, seq, dim)
      -> depth x Block: x + mixer(RMSNorm(x)); x + SwiGLU(RMSNorm(x))
      -> RMSNorm, output head tied to the embedding   (batch, seq, vocab)

Variants (the mixer of every block):

    "lmm"          the neural memory alone                       :mod:`titans_edu.models.lmm`
    "mac"          memory as a context, Eqs. 21-25               :mod:`titans_edu.models.mac`
    "mag"          memory as a gate, Eqs. 26-28                  :mod:`titans_edu.models.mag`
    "mal"          memory as a layer, Eqs. 29-31                 :mod:`titans_edu.models.mal`
    "transformer"  Transformer++: full causal attention, RoPE    :mod:`titans_edu.models.baselines`
    "swa"          sliding-window attention                      :mod:`titans_edu.models.baselines`

``forward(tokens, state)`` returns the logits and the state after the last token; passing that state to the
next call continues the stream, so chained calls equal one call, and :func:`titans_edu.models.generate.generate`
streams one token at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .baselines import AttentionMixer
from .blocks import Block
from .config import SIZES, VARIANTS, ModelConfig
from .generate import generate
from .lmm import LMMMixer
from .mac import MACMixer
from .mag import MAGMixer
from .mal import MALMixer


def make_mixer(config: ModelConfig) -> nn.Module:
    """The sequence mixer of one block for ``config.variant``."""
    builders = {
        "lmm": lambda: LMMMixer(config),
        "mac": lambda: MACMixer(config),
        "mag": lambda: MAGMixer(config),
        "mal": lambda: MALMixer(config),
        "transformer": lambda: AttentionMixer(config, window=None),
        "swa": lambda: AttentionMixer(config, window=config.window),
    }
    return builders[config.variant]()


@dataclass
class ModelState:
    """The streaming state of a whole model: one mixer state per block, and the tokens seen so far."""

    layers: list[Any]
    batch: int
    position: int = 0

    def detach(self) -> "ModelState":
        """Cut the autograd history (truncated backprop through time between training calls)."""
        return ModelState([s.detach() for s in self.layers], self.batch, self.position)


class TitansLM(nn.Module):
    """A language model of any variant. Build it with :func:`build_model`; ``.config`` says what it is."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.blocks = nn.ModuleList(
            Block(config.dim, make_mixer(config), config.mlp_hidden, config.norm_eps) for _ in range(config.depth)
        )
        self.norm = nn.RMSNorm(config.dim, eps=config.norm_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Linear and embedding weights ~ N(0, init_std); the projections that write into the residual stream
        are scaled by 1/sqrt(2 depth). Biases, the memory's M_0, gates' biases and norms keep their own init."""
        std = self.config.init_std
        nn.init.normal_(self.embed.weight, std=std)
        residual_out = {"to_out", "down"}
        for name, module in self.blocks.named_modules():
            if isinstance(module, nn.Linear):
                last = name.rsplit(".", 1)[-1]
                scale = 1 / math.sqrt(2 * self.config.depth) if last in residual_out else 1.0
                nn.init.normal_(module.weight, std=std * scale)

    def num_params(self) -> int:
        """Trainable parameters, the tied embedding counted once."""
        return sum(p.numel() for p in self.parameters())

    def init_state(self, batch: int) -> ModelState:
        """The state before the first token (the memories of LMM, MAG and MAL have read ``p``)."""
        return ModelState([block.init_state(batch) for block in self.blocks], batch)

    def forward(self, tokens: Tensor, state: ModelState | None = None) -> tuple[Tensor, ModelState]:
        """``tokens (batch, seq)`` -> ``logits (batch, seq, vocab)`` and the state after the last token."""
        if tokens.dim() != 2 or tokens.dtype not in (torch.long, torch.int32, torch.int64):
            raise ValueError(
                f"tokens must be integer ids of shape (batch, seq), got dtype {tokens.dtype} and shape "
                f"{tuple(tokens.shape)}; add a batch dim with tokens.unsqueeze(0)"
            )
        check_token_ids(tokens, self.config.vocab_size)
        batch = tokens.shape[0]
        if state is None:  # each block builds its own initial state when it runs (so FSDP has its weights gathered)
            state = ModelState([None] * len(self.blocks), batch)
        elif not isinstance(state, ModelState) or state.batch != batch or len(state.layers) != len(self.blocks):
            got = (type(state).__name__, getattr(state, "batch", None), len(getattr(state, "layers", [])))
            raise ValueError(
                f"state must be a ModelState for batch {batch} with {len(self.blocks)} layers, got {got}; pass the "
                f"state returned by this model for the same batch, or state=None"
            )
        x = self.embed(tokens)
        layers = []
        for block, layer_state in zip(self.blocks, state.layers):
            x, layer_state = block(x, layer_state)
            layers.append(layer_state)
        logits = F.linear(self.norm(x), self.embed.weight)  # the output head is the embedding, transposed
        return logits, ModelState(layers, batch, state.position + tokens.shape[1])

    @torch.no_grad()
    def generate(self, prompt: Tensor, max_new_tokens: int, **kwargs) -> tuple[Tensor, ModelState]:
        """See :func:`titans_edu.models.generate.generate`."""
        return generate(self, prompt, max_new_tokens, **kwargs)


def check_token_ids(tokens: Tensor, vocab_size: int) -> None:
    """A ``ValueError`` naming the range and the offending id unless every id is in ``[0, vocab_size)``.

    The embedding would otherwise fail with "index out of range" (on a GPU, a device-side assert that ends the
    process's CUDA context). Skipped while ``torch.compile`` traces the model: reading the ids is a graph break.
    """
    if tokens.numel() == 0 or tokens.device.type == "meta" or torch.compiler.is_compiling():
        return
    low, high = (int(v) for v in torch.aminmax(tokens))
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise ValueError(
            f"token id {bad} is out of range: the model's vocabulary has ids 0 to {vocab_size - 1} "
            f"(vocab_size={vocab_size}). Encode the text with the tokenizer the model was built for, or build the "
            f"model with a larger vocab_size."
        )


def build_model(variant: str, size: str = "tiny", **overrides) -> TitansLM:
    """A model of ``variant`` in {lmm, mac, mag, mal, transformer, swa} at preset ``size`` in
    {tiny, 170m, 340m, 400m, 760m}; ``overrides`` replace any :class:`ModelConfig` field."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    return TitansLM(ModelConfig.preset(variant, size, **overrides))
