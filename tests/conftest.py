import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
#: small data files the tests need, in the repository (copies of ../shared/data)
DATA = Path(__file__).resolve().parent / "data"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture
def shared_data() -> Path:
    """``tests/data``: the shared example files (real positions, an arivis export), in the repo."""
    return DATA


@pytest.fixture
def rng():
    return np.random.default_rng(0)
