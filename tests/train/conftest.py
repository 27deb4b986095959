import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="session")
def glyphs():
    """Tiny synthetic data: (train, val) with disjoint classes, built once per session."""
    from metaedge.train.data import SyntheticGlyphs
    return (SyntheticGlyphs("train", num_classes=40, samples_per_class=10, seed=3),
            SyntheticGlyphs("val", num_classes=40, samples_per_class=10, seed=3))


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny tensors: one thread avoids OpenMP barrier spinning on a shared, oversubscribed machine
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
