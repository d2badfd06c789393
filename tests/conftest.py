import os
import tempfile

import pytest
import torch


def pytest_configure(config):
    # Caches (candidate caches, searches, the demo data set) go to a fresh folder,
    # never to the user's ~/.cache/edgeanchor.
    os.environ["EDGEANCHOR_CACHE"] = tempfile.mkdtemp(prefix="edgeanchor-test-cache-")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
