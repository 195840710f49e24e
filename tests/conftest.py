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


@pytest.fixture
def one_thread():
    """One torch thread for tests on tiny tensors: synchronising two costs more than it saves on a busy machine.

    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def small_config() -> dict:
    """Model settings small enough to be quick, with segments (5), windows (4), chunks (3) and conv kernels (4)
    all crossed: pass them to ``build_model`` or ``ModelConfig`` (override ``depth`` and the rest as needed)."""
    return dict(vocab_size=32, dim=16, heads=2, depth=2, segment=5, window=4, persistent=3, chunk_size=3)


@pytest.fixture
def close_figures():
    """Close every matplotlib figure a test leaves open. A module opts in as for ``one_thread``."""
    yield
    import matplotlib.pyplot as plt  # imported late, after the test module has chosen its backend

    plt.close("all")
