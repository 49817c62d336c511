import sys
from pathlib import Path

import pytest

try:  # the torch-free runtime/serving tests also run in a venv without torch
    import torch
except ImportError:  # pragma: no cover - exercised in the torch-free CI venv
    torch = None

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Run the suite with one intra-op thread: on small CI machines whose other core is busy,
    a second thread mostly waits (the model tests run several times faster this way)."""
    if torch is None:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The project's shared folder beside the checkout (sample data, specification)."""
    path = ROOT.parent / "shared"
    if not path.is_dir():
        pytest.skip(f"shared folder not found at {path}")
    return path


@pytest.fixture
def cuda_device():
    if torch is None or not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return torch.device("cuda")
