"""Score SQuAD 2.0 predictions: python evaluate.py predictions.json dev-v2.0.json [-n null_odds.json].

The metrics equal the official evaluate-v2.0.py's, key for key; see minispan/metrics.py
(minispan/evaluate_cli.py is this command line).
"""
import sys

from minispan.evaluate_cli import main

if __name__ == "__main__":
    sys.exit(main())
