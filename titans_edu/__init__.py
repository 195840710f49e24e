"""titans_edu: the Titans paper (Behrouz, Zhong, Mirrokni, 2024, arXiv 2501.00663), built step by step.

The package has four layers, each a subpackage, in the order a reader meets them in the notebooks:

    memory/      01-06  the neural long-term memory: the memory networks, the update rule as a per-token loop
                        (the reference) and as chunks (the fast path and its fused twin), the state, the layer
    models/      07-10  what is built on it: attention and masks, persistent memory, the blocks, the mixers of
                        LMM, MAC, MAG and MAL, the baselines, the model config and presets, generation
    training/    11     the trainer and everything around it: config, data, tokenizers, checkpoints, logs,
                        devices and DDP/FSDP, parameter/FLOP/memory counts
    course/      00-11  what the notebooks use to teach: reproducible setup, synthetic streams and tasks, the demo
    viz/         01-10  the notebooks' widgets and figures

The names below are the ones the README and the notebooks use; everything else is imported from its module,
e.g. ``from titans_edu.memory.chunked import dual_form_chunk``. The command-line entry points are
``python -m titans_edu.train``, ``python -m titans_edu.prepare`` and ``python -m titans_edu.demo``.
"""

from .course.env import check_environment, setup
from .memory.chunked import chunked_memory
from .memory.coefficients import chunk_coefficients, decay_matrix
from .memory.layer import MemoryConfig, NeuralMemory
from .memory.naive import naive_memory
from .memory.networks import MLPMemory, ModuleMemory, associative_loss
from .memory.state import MemoryState
from .models.config import ModelConfig
from .models.generate import generate
from .models.lm import ModelState, TitansLM, build_model
from .training.checkpoint import load_checkpoint
from .training.config import TrainConfig

__version__ = "0.1.0"

__all__ = [
    "MLPMemory",
    "MemoryConfig",
    "MemoryState",
    "ModelConfig",
    "ModelState",
    "ModuleMemory",
    "NeuralMemory",
    "TitansLM",
    "TrainConfig",
    "associative_loss",
    "build_model",
    "check_environment",
    "chunk_coefficients",
    "chunked_memory",
    "decay_matrix",
    "generate",
    "load_checkpoint",
    "naive_memory",
    "setup",
]
