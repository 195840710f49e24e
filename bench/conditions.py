"""What a benchmark ran on, printed above its figures and stored beside them: speed means little without it."""

from __future__ import annotations

import os
import platform

import torch


def machine_conditions() -> dict:
    """CPU model, cores, torch version and threads, the OpenMP wait policy and the load average at the start.

    ``OMP_WAIT_POLICY=PASSIVE`` makes idle OpenMP threads sleep. That keeps a shared machine responsive (CI sets
    it) but wakes a thread for every parallel region, and a memory layer runs many short ones: our layer is about
    20% slower under it than under the default policy, which is how the figures in ``bench/README.md`` were taken.
    """
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "default"),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def print_conditions(conditions: dict) -> None:
    print("conditions: " + ", ".join(f"{k} {v}" for k, v in conditions.items()))
    if conditions["OMP_WAIT_POLICY"].upper() == "PASSIVE":
        print("note: OMP_WAIT_POLICY=PASSIVE slows titans_edu's layer by about 20%; the README's figures use the default")
