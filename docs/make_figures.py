"""Draw the course's figures from the code itself: nothing in docs/figures/ is drawn by hand.

    pip install -e ".[plot]"
    python docs/make_figures.py                      # about a minute on a CPU: writes docs/figures/*.png
    python docs/make_figures.py --out-dir /tmp/figs  # somewhere else

windows.png  chapter 2: the windows build_features cuts from a long context, and where each is max-context
loss.png     chapter 5: the training loss in the log.jsonl of `python train.py --demo`
pr_f1.png    chapter 7: the precision-recall curve `evaluate.py -p` draws for a shorter demo's predictions
"""
import argparse
import contextlib
import io
import json
import shutil
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no window
import matplotlib.pyplot as plt

import minispan.metrics
import minispan.evaluate_cli
import minispan.run
import minispan.train_cli
from minispan import Answer, Example, build_features, read_squad

FIGURES = Path(__file__).resolve().parent / "figures"
SAMPLE = minispan.run.SAMPLE
PR_EPOCHS = 10


def save(fig, path):
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


def long_example(examples):
    """The sample's paragraphs joined into one long context, with a question about one in the middle."""
    paragraphs = list(dict.fromkeys(e.context for e in examples))
    context = "\n\n".join(paragraphs)
    middle = paragraphs[len(paragraphs) // 2]
    question = next(e for e in examples if e.context == middle and e.answers)
    start = context.index(middle) + question.answers[0].start
    return Example("long", "", question.question, context, [Answer(question.answers[0].text, start)])


def draw_windows(path, tokenizer, examples, max_seq_length=384, doc_stride=128):
    example = long_example(examples)
    features = build_features([example], tokenizer, max_seq_length, doc_stride, training=True)
    num_tokens = len(tokenizer.encode(example.context).ids)
    question_tokens = features[0].token_type_ids.index(1) - 2
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(features) + 1.6))
    for k, f in enumerate(features):
        window = [i for i, offset in enumerate(f.offsets) if offset is not None]
        start = f.window_start  # the window's first token, in the whole context's numbering
        owned = [start + j for j, i in enumerate(window) if f.token_is_max_context[i]]
        y = len(features) - 1 - k
        ax.barh(y, len(window), left=start, height=0.6, color="#c6dbef")
        ax.barh(y, owned[-1] - owned[0] + 1, left=owned[0], height=0.6, color="#3182bd")
        ax.text(start + len(window) + 8, y, f"tokens {start}-{start + len(window) - 1}", va="center", fontsize=8)
        if f.start_position:
            answer = (start + f.start_position - window[0], start + f.end_position - window[0])
    ax.axvspan(answer[0], answer[1] + 1, color="#e6550d", alpha=0.8, label=f"answer: {example.answers[0].text!r}")
    ax.annotate("", xy=(doc_stride, len(features) - 1.5), xytext=(0, len(features) - 1.5),
                arrowprops=dict(arrowstyle="<->", color="0.3"))
    ax.text(doc_stride / 2, len(features) - 1.58, "doc_stride", ha="center", va="top", fontsize=8)
    ax.set_yticks(range(len(features)), [f"window {k}" for k in reversed(range(len(features)))])
    ax.set_xlim(0, num_tokens * 1.13)
    ax.set_xlabel(f"context token ({num_tokens} in all)")
    ax.set_title(f"max_seq_length={max_seq_length}, doc_stride={doc_stride}: a {question_tokens}-token question "
                 f"leaves {max_seq_length - question_tokens - 3} context tokens per window\n"
                 "light: the window; dark: the tokens for which it is the max-context window", fontsize=9)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    save(fig, path)


def draw_loss(path, log_file):
    log = [json.loads(line) for line in log_file.read_text(encoding="utf-8").splitlines()]
    steps = [record["step"] for record in log]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.plot(steps, [record["loss"] for record in log], color="#3182bd", label="training loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (mean since the last log)")
    lr = ax.twinx()
    lr.plot(steps, [record["lr"] for record in log], color="0.6", linestyle="--", label="learning rate")
    lr.set_ylabel("learning rate")
    fig.legend(loc="upper right", bbox_to_anchor=(0.86, 0.88), fontsize=8)
    ax.set_title("python train.py --demo: a tiny random BERT learns the 45 sample questions", fontsize=9)
    fig.tight_layout()
    save(fig, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=FIGURES, help=f"where to write (default {FIGURES})")
    parser.add_argument("--demo-epochs", type=int, help="train the demos for this many epochs (the tests' quick run)")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    examples = read_squad(SAMPLE)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        draw_windows(args.out_dir / "windows.png", minispan.run.demo_tokenizer(examples), examples)

        def demo(name, epochs):  # the demo as train.py runs it, logging every 2 steps for a smoother curve
            flags = [] if epochs is None else ["--epochs", str(epochs)]
            minispan.train_cli.main(["--demo", "--log-every", "2", "--output-dir", str(scratch / name), *flags])
            return scratch / name

        run = demo("demo", args.demo_epochs)
        draw_loss(args.out_dir / "loss.png", run / "log.jsonl")

        # The full demo answers nearly all of the sample right, so its precision-recall curve is nearly flat:
        # draw the curve of a demo stopped after PR_EPOCHS epochs, which still makes mistakes.
        # Scored at the threshold its predictions were made with (0), as chapter 7 explains.
        # (--demo-epochs: the run above is already that short one.)
        if args.demo_epochs is None:
            run = demo("demo-short", PR_EPOCHS)
        with contextlib.redirect_stdout(io.StringIO()):
            status = minispan.evaluate_cli.main([str(run / "predictions.json"), str(SAMPLE), "-n",
                                            str(run / "null_odds.json"), "-t", "0", "-p", str(scratch / "images")])
        if status:
            raise SystemExit(f"evaluate.py failed with status {status}")
        shutil.copyfile(scratch / "images" / "pr_f1.png", args.out_dir / "pr_f1.png")
        print(f"wrote {args.out_dir / 'pr_f1.png'}")


if __name__ == "__main__":
    main()
