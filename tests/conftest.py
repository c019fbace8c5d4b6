import os
import warnings

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")

warnings.filterwarnings("ignore", ".*does not have many workers.*")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in a fresh folder (lightning_logs/ lands there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def pytest_configure(config):
    # the models under test are small: one intra-op thread is faster than two contending ones
    torch.set_num_threads(1)
