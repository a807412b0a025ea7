"""How fast is minispan's SQuAD v2 evaluation next to its peers, measured in the same run?

    python bench/eval_speed.py [--dev ../shared/data/squad2-dev-half.json] [--copies 2] [--repeat 3]

The dev half is tiled (each article copied with fresh ids) to the full dev set's size, ~12k questions, with
predictions that are gold, mutated, empty or wrong, and random no-answer probabilities. Peers: transformers'
port of the official functions (composed like the official main), and, when MINISPAN_OFFICIAL_EVAL points at
the official evaluate-v2.0.py, that script's functions in-process and the two command lines end to end.
Prints seconds (best of --repeat) and peer/minispan ratios (> 1: minispan is faster).
"""
import argparse
import copy
import importlib.util
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from minispan.metrics import squad_v2_metrics
from common import DEV_HALF, best_time  # bench/common.py, beside this script

REPO = Path(__file__).resolve().parents[1]


def tiled_inputs(path, copies, seed=0):
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    articles = []
    for c in range(copies):
        for article in data["data"]:
            article = copy.deepcopy(article)
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    qa["id"] = f"{qa['id']}-{c}"
            articles.append(article)
    dataset = {"version": data["version"], "data": articles}
    rng = random.Random(seed)
    preds, probs = {}, {}
    for article in articles:
        for paragraph in article["paragraphs"]:
            words = paragraph["context"].split()
            for qa in paragraph["qas"]:
                golds = [a["text"] for a in qa["answers"]] or [""]
                i = rng.randrange(len(words))
                preds[qa["id"]] = rng.choice([golds[0], "", golds[-1] + " " + words[i], " ".join(words[i:i + 4])])
                probs[qa["id"]] = rng.random()
    return dataset, preds, probs


def official_like_main(module, dataset, preds, probs):
    """The official main's steps, from a module that has the official functions (the script or the port)."""
    qas = [qa for article in dataset["data"] for p in article["paragraphs"] for qa in p["qas"]]
    has_ans = {qa["id"]: bool(qa["answers"]) for qa in qas}
    if hasattr(module, "make_qid_to_has_ans"):  # the official script reads the JSON articles
        exact_raw, f1_raw = module.get_raw_scores(dataset["data"], preds)
    else:  # the port reads example objects
        examples = [argparse.Namespace(qas_id=qa["id"], answers=qa["answers"]) for qa in qas]
        exact_raw, f1_raw = module.get_raw_scores(examples, preds)
    exact = module.apply_no_ans_threshold(exact_raw, probs, has_ans, 1.0)
    f1 = module.apply_no_ans_threshold(f1_raw, probs, has_ans, 1.0)
    out = module.make_eval_dict(exact, f1)
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        qids = [k for k, v in has_ans.items() if v == wanted]
        module.merge_eval(out, module.make_eval_dict(exact, f1, qid_list=qids), prefix)
    module.find_all_best_thresh(out, preds, exact_raw, f1_raw, probs, has_ans)
    return out



def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dev", default=str(DEV_HALF))
    parser.add_argument("--copies", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    dataset, preds, probs = tiled_inputs(args.dev, args.copies)
    print(f"{len(preds)} questions ({args.copies} copies of {args.dev})")

    ours, result = best_time(lambda: squad_v2_metrics(dataset, preds, probs), args.repeat)
    print(f"minispan squad_v2_metrics: {ours:.3f} s")
    peers = {}
    try:
        from transformers.data.metrics import squad_metrics
        peers["transformers 4.x port"] = squad_metrics
    except ImportError:
        print("transformers not installed: no port to compare with")
    official_path = os.environ.get("MINISPAN_OFFICIAL_EVAL")
    if official_path:
        spec = importlib.util.spec_from_file_location("official_eval", official_path)
        peers["official evaluate-v2.0.py"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(peers["official evaluate-v2.0.py"])
    for name, module in peers.items():
        seconds, theirs = best_time(lambda: official_like_main(module, dataset, preds, probs), args.repeat)
        assert json.dumps(theirs) == json.dumps(result), f"{name} disagrees"
        print(f"{name}: {seconds:.3f} s   ratio {name} / minispan = {seconds / ours:.2f}x (same numbers)")

    if official_path:  # the two command lines, end to end: interpreter start, imports, JSON reading, printing
        with tempfile.TemporaryDirectory() as tmp:
            files = [Path(tmp) / name for name in ("dev.json", "preds.json", "probs.json")]
            for path, obj in zip(files, (dataset, preds, probs)):
                path.write_text(json.dumps(obj), encoding="utf-8")
            dev, pred, prob = map(str, files)
            commands = {"minispan evaluate.py": [str(REPO / "evaluate.py"), pred, dev, "-n", prob],
                        "official script": [official_path, dev, pred, "-n", prob]}
            seconds = {}
            for name, command in commands.items():
                seconds[name], out = best_time(lambda: subprocess.run([sys.executable, *command], check=True,
                                                                      capture_output=True, text=True).stdout,
                                               args.repeat)
                print(f"CLI {name}: {seconds[name]:.3f} s")
            ratio = seconds["official script"] / seconds["minispan evaluate.py"]
            print(f"CLI ratio official / minispan = {ratio:.2f}x")


if __name__ == "__main__":
    main()
