"""The notebooks' common setup (titans_edu.course.env)."""

import random

import numpy as np
import torch

from titans_edu.course.env import check_environment, setup


def test_setup_fixes_seeds_threads_and_dtype():
    threads = torch.get_num_threads()
    try:
        setup(seed=3, threads=1)
        assert torch.get_default_dtype() == torch.float64 and torch.get_num_threads() == 1
        first = (torch.randn(3), random.random(), np.random.rand())
        setup(seed=3, threads=1)
        second = (torch.randn(3), random.random(), np.random.rand())
        assert torch.equal(first[0], second[0]) and first[1:] == second[1:]
        assert first[0].dtype == torch.float64
        setup(dtype=torch.float32)
        assert torch.get_default_dtype() == torch.float32
    finally:
        torch.set_default_dtype(torch.float32)
        torch.set_num_threads(threads)


def test_environment_check_reports_every_runtime_dependency():
    report = check_environment()
    assert set(report) == {"torch", "numpy", "einops", "matplotlib", "ipywidgets", "tqdm"}
    assert all(ok for _, ok in report.values()), report
