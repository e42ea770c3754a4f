import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The files that take longest (minutes of subprocess runs), collected first. scripts/test.sh
# runs whole files per xdist worker in collection order (--no-loadscope-reorder), so these
# start at once and the short files fill in behind them; collected last, one of them would
# run alone at the end while the other worker idles.
HEAVIEST_FIRST = ("test_resume.py", "test_parallel.py", "test_experiments.py", "test_transfer.py",
                  "test_benchmarks.py", "test_gan_task.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(HEAVIEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture(scope="session")
def tfds_data_dir():
    """The TFDS data dir holding the real Fashion-MNIST (prepared on first use)."""
    from jaxvision.data import default_data_dir, ensure_prepared

    data_dir = default_data_dir()
    ensure_prepared("fashion_mnist", data_dir)
    return data_dir
