"""Score SQuAD 2.0 predictions: python evaluate.py predictions.json dev-v2.0.json [-n null_odds.json].

The metrics equal the official evaluate-v2.0.py's, key for key; see minispan/metrics.py.
"""
import sys

from minispan.metrics import main

if __name__ == "__main__":
    sys.exit(main())
