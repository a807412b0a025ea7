"""The timer the CPU benchmarks share: the best of several runs, since noise on a busy machine only adds."""
import time


def best_time(function, repeat):
    """Run `function` `repeat` times; return (fastest seconds, its last result)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), result
