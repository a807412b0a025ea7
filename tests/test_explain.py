"""The answer explainer page (minispan/explain.py): its numbers are the pipeline's, its text is escaped, it is
one self-contained file, and it renders in a real browser."""
import contextlib
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
import torch

import minispan.answer
from minispan import BertConfig, BertForQuestionAnswering, read_squad
from minispan.answer import QuestionAnsweringPipeline
from minispan.explain import page, write_explanation
from minispan.run import SAMPLE, demo_tokenizer
from minispan.weights import save_model

OPTIONS = dict(max_seq_len=64, doc_stride=16)  # three windows over the sample's longest paragraph
QUESTION = "How many queens does <b>a colony</b> have & why?"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HEADLESS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def qa():
    """A tiny random BERT on the demo's vocabulary, its span head scaled up so that its probabilities peak."""
    examples = read_squad(SAMPLE)
    torch.manual_seed(0)
    tokenizer = demo_tokenizer(examples)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128)
    model = BertForQuestionAnswering(config)
    with torch.no_grad():
        model.qa_outputs.weight *= 100
    return QuestionAnsweringPipeline(model, tokenizer)


@pytest.fixture(scope="module")
def context():
    return max((e.context for e in read_squad(SAMPLE)), key=len)


class Elements(HTMLParser):
    """Tags, attribute names, ids, classes and token titles of a page."""

    def __init__(self, text):
        super().__init__()
        self.tags, self.ids, self.classes, self.titles, self.attributes = [], [], [], [], set()
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        self.attributes |= set(attrs)
        self.ids.append(attrs.get("id"))
        self.classes += (attrs.get("class") or "").split()
        if "tok" in (attrs.get("class") or "").split():
            self.titles.append(attrs["title"])


def window_probabilities(text):
    """Per window, the (start, end) probabilities written in the tokens' titles."""
    windows = text.split('<div class="window">')[1:]
    return [[tuple(map(float, re.findall(r"[\d.]+", title))) for title in Elements(w).titles] for w in windows]


@pytest.mark.parametrize("handle_impossible_answer", [False, True])
def test_the_page_shows_the_pipelines_own_decision(qa, context, tmp_path, handle_impossible_answer):
    options = dict(OPTIONS, handle_impossible_answer=handle_impossible_answer)
    answers = write_explanation(tmp_path / "answer.html", qa, QUESTION, context, **options)
    text = (tmp_path / "answer.html").read_text(encoding="utf-8")
    assert answers[0] == qa(question=QUESTION, context=context, **options)  # what the command line prints
    assert answers == qa(question=QUESTION, context=context, top_k=5, **options)
    elements = Elements(text)
    assert {"question", "decision", "answer", "nbest", "windows"} <= set(elements.ids)
    assert elements.tags.count("tr") == 1 + len(answers)
    windows = window_probabilities(text)
    assert len(windows) == 3 and elements.classes.count("cls") == 3
    for window in windows:  # the pipeline's softmax over [CLS] and the window's context tokens
        assert sum(start for start, _ in window) == pytest.approx(1, abs=1e-3 * len(window))
        assert sum(end for _, end in window) == pytest.approx(1, abs=1e-3 * len(window))
    # The null score is the smallest [CLS] start x end probability: the pipeline's score for "".
    null = next(a for a in qa(question=QUESTION, context=context, top_k=10 ** 4, **dict(
        options, handle_impossible_answer=True)) if a["answer"] == "")["score"]
    assert f"over 3 window(s)): {null:.4f}" in text
    assert elements.classes.count("chosen") >= 1 if answers[0]["answer"] else elements.classes.count("chosen") == 0


def test_all_text_is_escaped_and_nothing_is_loaded(qa, tmp_path):
    context = 'The <script>alert("x")</script> & <img src=x onerror=alert(1)> tags were "quoted" by Ann.'
    write_explanation(tmp_path / "a.html", qa, QUESTION, context, top_k=3)
    text = (tmp_path / "a.html").read_text(encoding="utf-8")
    tags = Elements(text).tags
    assert "script" not in tags and "img" not in tags  # escaped, so shown as text
    assert "<script" not in text and "<img" not in text and "&lt;b&gt;a colony&lt;/b&gt; have &amp; why?" in text
    assert not Elements(text).attributes & {"src", "href"}  # self-contained: nothing to load
    assert [p.name for p in tmp_path.iterdir()] == ["a.html"]  # written atomically: no temporary file left


def test_the_verdict_follows_the_null_score():
    span = {"answer": "Ann", "score": 0.5, "start": 0, "end": 3}
    null = {"answer": "", "score": 0.7, "start": 0, "end": 0}
    assert "abstains" in page("q", [null, span], 0.7, [], True)
    assert "answers with it" in page("q", [dict(span, score=0.8), null], 0.7, [], True)
    off = page("q", [span], 0.7, [], False)
    assert "does not compete" in off and "&quot;&quot; (no answer)" in off.split("would answer")[1]
    assert "would answer the same" in page("q", [span], 0.2, [], False)


@pytest.mark.skipif(CHROMIUM is None, reason="no headless browser: apt-get install chromium (Debian)")
def test_the_page_renders_in_a_real_browser(qa, context, tmp_path):
    path = tmp_path / "answer.html"
    write_explanation(path, qa, QUESTION, context, **OPTIONS)
    browser = [CHROMIUM, *HEADLESS, f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run([*browser, "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120)
    rendered = Elements(dom.stdout)
    assert {"question", "decision", "answer", "nbest", "windows"} <= set(rendered.ids)
    assert rendered.classes.count("window") == 3 and rendered.classes.count("tok") > 50
    shot = subprocess.run([*browser, "--window-size=1000,1400", f"--screenshot={tmp_path / 'shot.png'}",
                           path.as_uri()], capture_output=True, text=True, timeout=120)
    for run in (dom, shot):  # no page errors: the console stays silent (a script error would be logged here)
        assert run.returncode == 0 and ":CONSOLE" not in run.stderr, run.stderr[-2000:]
    image = (tmp_path / "shot.png").read_bytes()
    assert image[:8] == b"\x89PNG\r\n\x1a\n"
    matplotlib_image = pytest.importorskip("matplotlib.image", reason="checking the pixels needs matplotlib")
    pixels = matplotlib_image.imread(tmp_path / "shot.png")[..., :3]  # [height, width, RGB] in 0..1
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    assert ((green > red + 0.1) & (green > blue + 0.05)).sum() > 50  # the start shading, drawn


def answer_help():
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):
        minispan.answer.main(["--help"])
    return out.getvalue()


@pytest.mark.skipif("--explain" not in answer_help(), reason="--explain not wired yet")
def test_the_command_line_writes_the_page(qa, context, tmp_path):
    save_model(qa.model, tmp_path / "model")
    qa.tokenizer.save(tmp_path / "model")
    with contextlib.redirect_stdout(io.StringIO()) as out:
        status = minispan.answer.main(["--model", str(tmp_path / "model"), "--question", QUESTION, "--context",
                                       context, "--explain", str(tmp_path / "answer.html")])
    assert status == 0
    assert '<span class="answer" id="answer">' in (tmp_path / "answer.html").read_text(encoding="utf-8")
    assert out.getvalue()  # the answer is still printed
