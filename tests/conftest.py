"""Test-session settings."""

import pytest
import torch

# One intra-op thread: the tests' tensors are tiny, and on a 2-core machine two processes
# each spinning two OpenMP threads (a test beside a spawned worker, or beside another job)
# can slow each other down tens of times.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _private_twoshot_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test (and the processes it starts) caches exported graphs in a temporary folder,
    never in the user's ~/.cache/twoshot."""
    monkeypatch.setenv("TWOSHOT_CACHE", str(tmp_path_factory.mktemp("twoshot-cache")))
