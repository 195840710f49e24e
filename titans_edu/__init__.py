"""titans_edu: the Titans paper (Behrouz, Zhong, Mirrokni, 2024), built step by step.

Modules, in the order of the notebooks:

    memories        01-02  the memory models: linear (depth 1), MLP (deep), any nn.Module; Eq. 12
    naive           03-05  the update rule as a per-token loop: surprise, momentum, forgetting (Eqs. 13-15)
    chunked         06     the chunked parallel form (Eqs. 16-18) and its dual-form read
    state                  the memory state carried between calls
    neural_memory          the memory as a layer: projections, convolutions, gates, output (§3.1, §4.4)
    attention       07     causal, sliding-window and segment masks; persistent memory (Eq. 19)
    mac, mag, mal   08-10  the three architectures (Eqs. 21-31), lmm the memory alone, baselines
    models                 build_model(variant, size): presets from tiny to the paper's 760M (model_config)
    train           11     the trainer: data, checkpoints, DDP/FSDP
"""

from .chunked import chunk_coefficients, chunked_memory, decay_matrix
from .memories import MLPMemory, ModuleMemory, associative_loss
from .naive import naive_memory
from .model_config import ModelConfig
from .models import build_model
from .neural_memory import MemoryConfig, NeuralMemory
from .state import MemoryState

__version__ = "0.1.0"

__all__ = [
    "MLPMemory",
    "MemoryConfig",
    "MemoryState",
    "ModelConfig",
    "ModuleMemory",
    "NeuralMemory",
    "associative_loss",
    "build_model",
    "chunk_coefficients",
    "chunked_memory",
    "decay_matrix",
    "naive_memory",
]
