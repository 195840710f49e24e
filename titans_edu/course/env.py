"""Reproducible notebook setup and the environment check of notebook 00."""

from __future__ import annotations

import importlib
import platform
import random

import numpy as np
import torch

NOTEBOOK_THREADS = 2  # results are bitwise repeatable at a fixed thread count, so every notebook fixes it


def setup(seed: int = 0, threads: int = NOTEBOOK_THREADS, dtype: torch.dtype = torch.float64) -> None:
    """Fix the seeds, the thread count, the default dtype and the plot style, so a notebook prints the same
    numbers every run, and on other CPUs too.

    The default dtype is float64. Processors differ in how their matmul kernels round float32 (the order of the
    sums depends on the vector width), and a few hundred training steps grow that difference of about 1e-7 into
    the second decimal of a trained model's accuracy. In float64 the same growth stays far below the printed
    digits, except in a training run that learns almost nothing, which is chaotic: notebook 10 checks such
    runs with margins rather than digits. Pass ``dtype=torch.float32`` to see the precision the trainer uses on
    CPU.
    """
    torch.set_num_threads(threads)
    torch.set_default_dtype(dtype)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        import matplotlib

        matplotlib.rcParams.update({"figure.figsize": (7.0, 3.5), "figure.dpi": 100, "axes.grid": True,
                                    "grid.alpha": 0.3, "font.size": 10})
    except ImportError:  # plotting is optional for the package itself
        pass


REQUIRED = {"torch": "2.5", "numpy": "1.24", "einops": "0.7", "matplotlib": "3.7", "ipywidgets": "8.0", "tqdm": "4.0"}


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def check_environment() -> dict[str, tuple[str, bool]]:
    """``{package: (installed version or 'missing', meets the minimum)}`` for every runtime dependency."""
    report = {}
    for name, minimum in REQUIRED.items():
        try:
            version = importlib.import_module(name).__version__
            report[name] = (version, _version_tuple(version) >= _version_tuple(minimum))
        except ImportError:
            report[name] = ("missing", False)
    return report


def describe_machine() -> dict[str, str]:
    """Python version, thread count and accelerator, for the record (these differ between machines)."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {"python": platform.python_version(), "torch threads": str(torch.get_num_threads()), "gpu": gpu}
