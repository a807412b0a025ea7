"""evaluate.py's command line: the official evaluate-v2.0.py's flags, output and numbers (metrics.py computes them),
with every problem in the input files reported as one line naming the file. See docs/07-scoring.md.
"""
import argparse
import json
import os
import sys
import time

from minispan.files import atomic_write, read_json
from minispan.metrics import _figure_class, _first, check_na_probs, check_predictions, gold_answers, squad_v2_metrics


class UsageError(Exception):
    """A problem with the command's input files: printed as one line, exit status 2."""


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Score SQuAD 2.0 predictions with the official evaluation's metrics (same keys and values).")
    parser.add_argument("pred_file", metavar="predictions.json", help="{question id: answer text}")
    parser.add_argument("data_file", metavar="dev-v2.0.json", help="the SQuAD 2.0 dataset (either order works)")
    parser.add_argument("--na-prob-file", "-n", metavar="na_prob.json",
                        help="{question id: probability of no answer}, e.g. minispan's null_odds.json")
    parser.add_argument("--na-prob-thresh", "-t", type=float, default=1.0,
                        help='predict "" where the no-answer probability exceeds this (default 1.0)')
    parser.add_argument("--out-file", "-o", metavar="eval.json", help="write the metrics here (default: stdout)")
    parser.add_argument("--out-image-dir", "-p", metavar="out_images",
                        help="write precision-recall curves and no-answer histograms here (needs matplotlib)")
    parser.add_argument("--verbose", "-v", action="store_true", help="say what was read and done, on stderr")
    parser.add_argument("--strict", action="store_true", help="a question without a prediction is an error")
    args = parser.parse_args(argv)
    try:
        evaluate_files(args, parser.prog)
    except BrokenPipeError:  # `evaluate.py ... | head`: the reader has what it wanted; stay quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail again
        return 1
    except (UsageError, ImportError, OSError) as e:  # OSError: an --out-file or --out-image-dir it cannot write
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    return 0


def evaluate_files(args, prog):
    """evaluate.py itself: read the two files (either order), score, print, write -o / -p."""
    def say(message):
        print(f"{prog}: {message}", file=sys.stderr)

    began = time.perf_counter()
    for name in (args.pred_file, args.data_file, args.na_prob_file):  # samefile: links and ../ spellings too
        if args.out_file and name and os.path.exists(args.out_file) and os.path.exists(name) \
                and os.path.samefile(args.out_file, name):
            raise UsageError(f"--out-file {args.out_file} is the input file {name}: refused, it would be replaced")
    pred_file, data_file = args.pred_file, args.data_file
    predictions, dataset = _checked(None, read_json, pred_file), _checked(None, read_json, data_file)
    is_dataset = [isinstance(obj, dict) and isinstance(obj.get("data"), list) for obj in (predictions, dataset)]
    if is_dataset[0] == is_dataset[1]:
        raise UsageError(f"expected one predictions file and one SQuAD dataset (a JSON object with a 'data' "
                         f"list), got {'two' if is_dataset[0] else 'no'} datasets")
    if is_dataset[0]:
        say(f"{pred_file} is the dataset and {data_file} the predictions (the official script's order); "
            "reading them that way round")
        pred_file, data_file, predictions, dataset = data_file, pred_file, dataset, predictions

    gold = _checked(data_file, gold_answers, dataset)
    _checked(pred_file, check_predictions, predictions)
    if missing := [qid for qid in gold if qid not in predictions]:
        if args.strict:
            raise UsageError(f"{pred_file}: no prediction for {len(missing)} of {len(gold)} questions "
                             f"(first: {_first(missing)})")
        say(f"no prediction for {len(missing)} of {len(gold)} questions, counted as answered \"\" "
            f"(first: {_first(missing)})")
    if unknown := [qid for qid in predictions if qid not in gold]:
        say(f"ignored {len(unknown)} predictions for ids not in {data_file} (first: {_first(unknown)})")

    na_probs, image_dir = _read_na_probs(args, gold, data_file, say)
    out = squad_v2_metrics(dataset, predictions, na_probs, args.na_prob_thresh, image_dir)
    if args.out_file:
        with atomic_write(args.out_file) as f:
            json.dump(out, f)  # compact, like the official script's --out-file
    else:
        print(json.dumps(out, indent=2))
    if args.verbose:
        n_has = sum(1 for answers in gold.values() if answers)
        answered = sum(1 for qid in gold if predictions.get(qid, ""))
        say(f"{data_file}: {len(gold)} questions ({n_has} answerable, {len(gold) - n_has} unanswerable); "
            f"{pred_file}: {answered} answered, {len(gold) - answered} \"\"")
        if na_probs is not None:
            n_null = sum(1 for qid in gold if na_probs[qid] > args.na_prob_thresh)
            say(f"{n_null} predictions turned into \"\" (no-answer probability > {args.na_prob_thresh})")
        if image_dir:
            say(f"images written to {image_dir}")
        say(f"evaluated in {time.perf_counter() - began:.2f} s")


def _read_na_probs(args, gold, data_file, say):
    """-n's no-answer probabilities and -p's folder (None: no images), checked before anything is written."""
    if not args.na_prob_file:
        if args.out_image_dir:
            say("--out-image-dir needs --na-prob-file: no images written")
        return None, None
    na_probs = _checked(None, read_json, args.na_prob_file)
    _checked(args.na_prob_file, check_na_probs, na_probs, gold)
    if extra := [qid for qid in na_probs if qid not in gold]:
        say(f"ignored {len(extra)} no-answer probabilities for ids not in {data_file} (first: {_first(extra)})")
    if args.out_image_dir:
        _figure_class()
        if huge := [qid for qid in gold if isinstance(na_probs[qid], int) and abs(na_probs[qid]) > sys.float_info.max]:
            raise UsageError(f"{args.na_prob_file}: the no-answer probability for {huge[0]!r} is an integer too "
                             "large for a float, which the precision-recall images need")
    return na_probs, args.out_image_dir


def _checked(path, check, *args):
    """check(*args), its ValueError as a UsageError naming `path` (None: the message names the file already)."""
    try:
        return check(*args)
    except ValueError as e:
        raise UsageError(f"{path}: {e}" if path else str(e)) from None
