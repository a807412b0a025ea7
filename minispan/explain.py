"""Why this answer? One self-contained HTML page that shows what the pipeline saw and how it decided (`python -m
minispan.answer ... --explain answer.html`; docs/06-postprocess.md). Inline CSS, no script, no network; text escaped.
"""
import html

from minispan.answer import OPTIONS, window_probabilities
from minispan.files import atomic_write
from minispan.squad import Example

STYLE = """body{font:15px/1.5 sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}
.window{border:1px solid #ccc;border-radius:4px;padding:.5em 1em;margin:1em 0}
.tok{border-radius:2px;padding:1px 0}.cls{font-family:monospace;border:1px dashed #888}
.chosen{outline:2px solid #3182bd}.answer{font-weight:bold}.legend{color:#555;font-size:90%}"""


def write_explanation(path, qa, question, context, *, top_k=5, **options):
    """Answer `question` about `context` with the pipeline `qa` (`options` as qa takes them) and write the page to
    `path`, atomically. Returns the top_k answers, best first: the first is what qa(...) and the command line say."""
    answers = qa(question=question, context=context, top_k=top_k, **options)
    answers = answers if isinstance(answers, list) else [answers]  # one answer comes back as a dict
    o = {**OPTIONS, **qa.options, **options}
    features = qa.windows([Example("0", "", question, context)], o)  # the pipeline's own windows and logits
    start_logits, end_logits = qa.logits(features, o["batch_size"])
    windows, nulls = [], []
    for k, (feature, s, e) in enumerate(zip(features, start_logits, end_logits)):
        p_start, p_end = window_probabilities(feature, s, e)  # the pipeline's own: [CLS] in, the question out
        nulls.append(p_start[0] * p_end[0])
        windows.append(window_html(k, feature, context, (p_start, p_end), answers[0]))
    with atomic_write(path) as f:
        f.write(page(question, answers, min(nulls), windows, options.get("handle_impossible_answer", False)))
    return answers


def window_html(k, feature, context, probabilities, answer):
    """One window: [CLS], then its context tokens (and the text between them) shaded by start and end probability."""
    def token(text, i, cls=""):
        p_start, p_end = (float(p[i]) for p in probabilities)
        shade = f"background:rgba(49,163,84,{p_start:.3f});box-shadow:inset 0 -.3em rgba(230,85,13,{p_end:.3f})"
        return (f'<span class="tok{cls}" style="{shade}" title="start {p_start:.3f}, end {p_end:.3f}">'
                f"{html.escape(text)}</span>")

    positions = [i for i, offset in enumerate(feature.offsets) if offset is not None]
    parts, previous = [token("[CLS]", 0, " cls"), " "], feature.offsets[positions[0]][0]
    for i in positions:
        start, end = feature.offsets[i]
        parts.append(html.escape(context[previous:start]))  # the spaces (or nothing) between two tokens
        inside = answer["answer"] and answer["start"] <= start and end <= answer["end"]
        parts.append(token(context[start:end], i, " chosen" if inside else ""))
        previous = end
    first, last = feature.window_start, feature.window_start + len(positions) - 1
    return (f'<div class="window"><h3>Window {k + 1}: context tokens {first}-{last}, characters '
            f'{feature.offsets[positions[0]][0]}-{previous}</h3><p class="tokens">{"".join(parts)}</p></div>')


def page(question, answers, null, windows, handle_impossible):
    """The whole page: question, decision, n-best table, windows, legend."""
    best = next((a for a in answers if a["answer"]), None)
    span = f"the best span, {html.escape(repr(best['answer']))}, scores {best['score']:.4f}" if best else "no span"
    if not handle_impossible:
        verdict = (f"{span}. The null answer does not compete (handle_impossible_answer is off), so the "
                   f"pipeline answers with the best span; with it on, it would answer "
                   f"{'&quot;&quot; (no answer)' if best is None or null > best['score'] else 'the same'}.")
    elif answers[0]["answer"]:
        verdict = f"{span}, above the null score: the pipeline answers with it."
    else:
        verdict = f"{span}, not above the null score: the pipeline abstains and answers &quot;&quot;."
    rows = "".join(f'<tr><td>{n}</td><td class="answer">{html.escape(a["answer"]) or "&quot;&quot; (no answer)"}'
                   f'</td><td>{a["score"]:.4f}</td><td>{a["start"]}-{a["end"]}</td></tr>'
                   for n, a in enumerate(answers, 1))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Why this answer? minispan</title><style>{STYLE}</style></head>
<body><h1>Why this answer?</h1>
<p id="question"><b>Question:</b> {html.escape(question)}</p>
<section id="decision"><h2>The decision</h2>
<p>Answer: <span class="answer" id="answer">{html.escape(answers[0]["answer"]) or "&quot;&quot; (no answer)"}</span></p>
<p>Null score (the smallest [CLS] start &times; end probability over {len(windows)} window(s)): {null:.4f};
{verdict}</p></section>
<section id="nbest"><h2>The best spans</h2>
<table><tr><th>#</th><th>answer</th><th>score (start &times; end probability)</th><th>characters</th></tr>
{rows}</table></section>
<section id="windows"><h2>The windows</h2>
<p class="legend">Green: the probability that the answer starts at the token; orange bar: that it ends there
(hover for the numbers); outlined: the answer. [CLS] is the null answer.</p>
{"".join(windows)}</section></body></html>
"""
