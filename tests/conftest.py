import os

import numpy as np
import pytest

OMNIGLOT_DIR = os.environ.get("METAEDGE_OMNIGLOT",
                              os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "omniglot"))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def omniglot_dir():
    """The shared Omniglot zips (../shared/data/omniglot or $METAEDGE_OMNIGLOT); skips when absent."""
    path = os.path.abspath(OMNIGLOT_DIR)
    if not os.path.exists(os.path.join(path, "images_background_small1.zip")):
        pytest.skip(f"Omniglot zips not found in {path} (set METAEDGE_OMNIGLOT)")
    return path
