import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def tfds_data_dir():
    """The TFDS data dir holding the real Fashion-MNIST (prepared on first use)."""
    from jaxvision.data import default_data_dir, ensure_prepared

    data_dir = default_data_dir()
    ensure_prepared("fashion_mnist", data_dir)
    return data_dir
