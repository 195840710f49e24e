import pytest
import torch


@pytest.fixture(autouse=True)
def _fixed_threads_and_seed():
    """Every test starts from the same seed and thread count, and leaves the default dtype as it found it."""
    torch.set_num_threads(2)
    torch.manual_seed(0)
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)


@pytest.fixture
def float64():
    torch.set_default_dtype(torch.float64)
    yield torch.float64
