"""Answer one question from the command line and print the answer as JSON.

    python -m minispan.answer --model models/spanbert-finetuned-squadv2 \\
        --question "Who wrote it?" --context "It was written by Ann."
"""
import argparse
import json
import sys

from minispan.pipeline import pipeline


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m minispan.answer", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="directory with config.json, the weights and vocab.txt")
    parser.add_argument("--question", required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--context", help="the text to find the answer in")
    source.add_argument("--context-file", help="read the context from this UTF-8 text file")
    parser.add_argument("--top-k", type=int, default=1, help="how many answers (default 1)")
    parser.add_argument("--handle-impossible-answer", action="store_true", help='allow the answer "" (no answer)')
    parser.add_argument("--max-answer-len", type=int, default=15, help="longest answer in tokens (default 15)")
    parser.add_argument("--device", default=None, help="e.g. cpu or cuda (default: cpu)")
    args = parser.parse_args(argv)

    try:
        context = args.context
        if args.context_file is not None:
            with open(args.context_file, encoding="utf-8") as f:
                context = f.read()
        qa = pipeline(args.model, device=args.device)
        result = qa(
            question=args.question,
            context=context,
            top_k=args.top_k,
            handle_impossible_answer=args.handle_impossible_answer,
            max_answer_len=args.max_answer_len,
        )
    except (OSError, ValueError) as e:  # missing files, bad JSON or weights, bad input
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
