"""minispan.pipeline and `python -m minispan.answer`, against transformers 4.46's question-answering pipeline."""
import json
import re
import shutil
import subprocess
import sys

import pytest
import torch

from minispan import BertConfig, BertForQuestionAnswering, load_model, save_model
from minispan.answer import main as answer_main
from minispan.features import build_features, make_batch
from minispan.answer import pipeline
from minispan.squad import Example
from minispan.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def minilm_qa_dir(minilm_dir, tmp_path_factory):
    """Real MiniLM weights plus a random span head, saved by transformers: one checkpoint for both pipelines.

    The head's weights are N(0, 0.5) rather than BERT's N(0, 0.02), so that span scores are spread out and
    their order is decided by the model, not by rounding.
    """
    transformers = pytest.importorskip("transformers", reason="transformers 4.46 is the test oracle")
    directory = tmp_path_factory.mktemp("minilm_qa")
    torch.manual_seed(0)
    model = transformers.BertForQuestionAnswering.from_pretrained(str(minilm_dir))
    with torch.no_grad():
        model.qa_outputs.weight.normal_(0, 0.5)
    model.save_pretrained(str(directory), safe_serialization=True)
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(minilm_dir / name, directory / name)
    return directory


OPTIONS = [
    {},
    {"top_k": 5},
    {"handle_impossible_answer": True},
    {"handle_impossible_answer": True, "top_k": 20},
    {"max_answer_len": 3, "top_k": 3},
    {"max_seq_len": 48, "doc_stride": 16, "top_k": 4},  # more, smaller windows
    {"align_to_words": False, "top_k": 5},
    {"max_question_len": 32},  # longer than the question: no truncation, as in transformers' fast path
]


def as_list(result):
    return result if isinstance(result, list) else [result]


def compare(ours, theirs, question, context, **options):
    """Both pipelines on one input: answer, start and end equal, scores within 1e-3 relative."""
    expected = as_list(theirs(question=question, context=context, **options))
    got = as_list(ours(question=question, context=context, **options))
    assert [(a["answer"], a["start"], a["end"]) for a in got] == [(a["answer"], a["start"], a["end"]) for a in expected]
    for a, b in zip(got, expected):
        assert a["score"] == pytest.approx(b["score"], rel=1e-3)
        is_null = (a["answer"], a["start"], a["end"]) == ("", 0, 0)
        assert a["answer"] == context[a["start"] : a["end"]] or is_null
    return max(abs(a["score"] - b["score"]) / b["score"] for a, b in zip(got, expected)), got


def test_matches_transformers_pipeline_on_real_text(minilm_qa_dir, dev_half_path):
    """Real weights, real text: a one-window context and a three-window one (about 750 tokens).
    Measured: all equal, max relative score difference 1.3e-5 (float32 model outputs in both)."""
    transformers = pytest.importorskip("transformers", reason="transformers 4.46 is the test oracle")
    theirs = transformers.pipeline("question-answering", model=str(minilm_qa_dir), tokenizer=str(minilm_qa_dir))
    ours = pipeline(minilm_qa_dir)
    paragraphs = json.loads(dev_half_path.read_text(encoding="utf-8"))["data"][0]["paragraphs"]
    long_context = " ".join(p["context"] for p in paragraphs[:4])
    for question, context in [(paragraphs[0]["qas"][0]["question"], paragraphs[0]["context"]),
                              (paragraphs[1]["qas"][0]["question"], long_context)]:
        compare(ours, theirs, question, context, top_k=5, handle_impossible_answer=True)
    assert len(ours.tokenizer.encode(long_context).ids) > 2 * 384 - 128


def test_real_text_word_alignment_lists_and_long_questions(minilm_qa_dir, dev_half_path):
    """top_k=20 on real paragraphs reaches spans that start or end inside a word (WordPiece's ## pieces), which
    align_to_words grows to whole words; lists in give lists out, in both input forms; a question of more
    than 64 tokens is not truncated (transformers' default). Measured: all equal, scores within 1.3e-5."""
    transformers = pytest.importorskip("transformers", reason="transformers 4.46 is the test oracle")
    theirs = transformers.pipeline("question-answering", model=str(minilm_qa_dir), tokenizer=str(minilm_qa_dir))
    ours = pipeline(minilm_qa_dir)
    paragraphs = json.loads(dev_half_path.read_text(encoding="utf-8"))["data"][0]["paragraphs"][:3]
    for p in paragraphs:
        compare(ours, theirs, p["qas"][0]["question"], p["context"], top_k=20)
    inputs = [{"question": p["qas"][0]["question"], "context": p["context"]} for p in paragraphs]
    got = ours(inputs)  # transformers 4.46 deprecates a list of dicts: it gets the same as two lists
    expected = theirs(question=[x["question"] for x in inputs], context=[x["context"] for x in inputs])
    assert isinstance(got, list) and got == [ours(x) for x in inputs]
    assert [(a["answer"], a["start"], a["end"]) for a in got] == [(a["answer"], a["start"], a["end"]) for a in expected]
    questions = [qa["question"] for qa in paragraphs[0]["qas"][:3]]
    got = ours(question=questions, context=paragraphs[0]["context"])  # many questions, one context
    assert got == [ours(question=q, context=paragraphs[0]["context"]) for q in questions]
    long_question = " ".join([paragraphs[0]["qas"][0]["question"]] * 12)
    assert len(ours.tokenizer.encode(long_question).ids) > 64
    compare(ours, theirs, long_question, paragraphs[0]["context"], top_k=5)


# ---- a tiny model we make ourselves: input handling and the command line ----------------------------------------

WORDS = ["ann", "met", "bob", "in", "paris", "who", "where", "did", "?", ".", "the", "city", "of", "light"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny")
    (directory / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + WORDS) + "\n")
    (directory / "tokenizer_config.json").write_text('{"do_lower_case": true}')
    torch.manual_seed(0)
    config = BertConfig(vocab_size=4 + len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    model = BertForQuestionAnswering(config).eval()
    # A spread-out span head (scores decided by the model, not by rounding), pointed partly from the context
    # tokens' hidden states towards [CLS]'s, so that the null answer wins some of the time.
    example = Example("x", "", "Who did Ann meet?", "Ann met Bob in Paris.")
    features = build_features([example], load_tokenizer(directory))
    batch = make_batch(features)
    with torch.no_grad():
        hidden = model.bert(**batch)[0]
        toward_cls = hidden[0] - hidden[batch["token_type_ids"][0] == 1].mean(0)
        model.qa_outputs.weight.normal_(0, 1.0)
        model.qa_outputs.weight += 1.5 * toward_cls / toward_cls.norm()
    save_model(model, directory)
    return directory


CONTEXT = "Ann met Bob in Paris, the city of light. " * 6  # 66 tokens: two windows at max_seq_len 64
QUESTIONS = ["Who did Ann meet?", "Where did Ann meet Bob?", "Who?", "What is the city of light?"]


def test_matches_transformers_pipeline(tiny_dir):
    """Each option, short (one window) and long (two to four windows) contexts, on a tiny random model that
    both pipelines load from the same directory. Measured: all equal, max relative score difference 4.5e-6."""
    transformers = pytest.importorskip("transformers", reason="transformers 4.46 is the test oracle")
    theirs = transformers.pipeline("question-answering", model=str(tiny_dir), tokenizer=str(tiny_dir))
    ours = pipeline(tiny_dir)
    worst, null_won = 0.0, False
    for question in QUESTIONS:
        for context in ["Ann met Bob in Paris.", CONTEXT]:
            for options in OPTIONS:
                options = {"max_seq_len": 64, **options}  # the tiny model has 64 positions
                difference, answers = compare(ours, theirs, question, context, **options)
                worst = max(worst, difference)
                null_won |= answers[0]["answer"] == ""
    assert null_won  # handle_impossible_answer's null answer really won sometimes
    assert worst < 1e-3


def test_answers_are_spans_of_the_context(tiny_dir):
    qa = pipeline(tiny_dir)
    answer = qa(question="Who did Ann meet?", context=CONTEXT)
    assert set(answer) == {"score", "start", "end", "answer"}
    assert answer["answer"] == CONTEXT[answer["start"] : answer["end"]] and 0 < answer["score"] <= 1
    answers = qa(question="Where?", context=CONTEXT, top_k=3, handle_impossible_answer=True)
    assert len(answers) == 3 and [a["score"] for a in answers] == sorted((a["score"] for a in answers), reverse=True)
    assert load_tokenizer(tiny_dir).lowercase
    # device="auto", as the CLI takes it: the GPU when there is one, else the CPU (the same answer here).
    auto = pipeline(tiny_dir, device="auto")
    assert auto.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        assert auto(question="Who did Ann meet?", context=CONTEXT) == answer


def test_top_k_beyond_the_valid_spans_returns_only_valid_spans(tiny_dir):
    """A short context has fewer spans of <= max_answer_len tokens than a large top_k asks for: the answers
    are exactly those spans, none longer (the score matrix's zeros outside the band are not spans).
    Before the fix this returned 6 answers, among them 'Bob.' and 'Ann met Bob.' at score 0. (transformers
    4.46 returns such zero-score spans too, but not the same ones: no parity to keep in this corner.)"""
    qa = pipeline(tiny_dir)
    context = "Ann met Bob."
    answers = qa(question="Who?", context=context, top_k=10, max_answer_len=1)
    tokens = qa.tokenizer.tokenize(context)  # one token per word and the full stop: 4 one-token spans
    assert len(answers) == len(tokens)
    assert all(len(qa.tokenizer.tokenize(a["answer"])) == 1 for a in answers)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda qa: qa(question="", context=CONTEXT), "input 0: question is empty"),
        (lambda qa: qa(question="Who?", context="  \n"), "input 0: context is empty"),
        (lambda qa: qa(question="Who?", context=3), "input 0: context must be a string, got int"),
        (lambda qa: qa(question=["Who?", "Who?"], context=["Ann.", "\x00"]), "input 1: context has no tokens"),
        (lambda qa: qa([{"question": "Who?", "context": "Ann."}, {"question": "Who?"}]),
         "input 1: the dict has no 'context'"),
        (lambda qa: qa([{"question": "Who?", "context": "Ann."}, "Who?"]),
         "input 1: expected a dict with keys 'question' and 'context', got str"),
        (lambda qa: qa({"question": "Who?", "context": "Ann."}, question="Who?"), "not both"),
        (lambda qa: qa(question=["Who?", "Where?"], context=["Ann."]), "2 questions but 1 contexts"),
        (lambda qa: qa(), r"expected qa\(\{'question'"),
        (lambda qa: qa(question="Who?", context="Ann.", top_k=0), "top_k must be a positive integer"),
        (lambda qa: qa(question="Who?", context="Ann.", doc_stride=60), "not more than the doc_stride=60 overlap"),
        (lambda qa: qa(question="Who?", context="Ann.", max_seq_len=512), "exceeds the model's 64 positions"),
    ],
)
def test_bad_input_is_a_clear_error(tiny_dir, call, message):
    with pytest.raises(ValueError, match=message):
        call(pipeline(tiny_dir))


def test_model_dir_without_vocabulary(tiny_dir, tmp_path):
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_dir / name, tmp_path / name)
    with pytest.raises(FileNotFoundError, match="no vocabulary"):
        pipeline(tmp_path)


def test_answer_command_line(tiny_dir, tmp_path, capsys):
    assert answer_main(["--model", str(tiny_dir), "--question", "Who did Ann meet?", "--context", CONTEXT]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == pipeline(tiny_dir)(question="Who did Ann meet?", context=CONTEXT)
    (tmp_path / "context.txt").write_text(CONTEXT, encoding="utf-8")
    args = ["--model", str(tiny_dir), "--question", "Who?", "--context-file", str(tmp_path / "context.txt")]
    args += ["--top-k", "2"]
    assert answer_main(args) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2

    assert answer_main(["--model", str(tmp_path / "missing"), "--question", "Who?", "--context", "Ann."]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert answer_main(["--model", str(tiny_dir), "--question", " ", "--context", "Ann."]) == 2
    assert capsys.readouterr().err.strip() == "error: input 0: question is empty"
    window = ["--max-seq-len", "24", "--doc-stride", "4"]  # passed on: several windows over this context
    assert answer_main(["--model", str(tiny_dir), "--question", "Who?", "--context", CONTEXT, *window]) == 0
    assert json.loads(capsys.readouterr().out) == pipeline(tiny_dir)(question="Who?", context=CONTEXT,
                                                                     max_seq_len=24, doc_stride=4)
    (tmp_path / "latin1.txt").write_bytes("Ann met Bj\xf6rn.".encode("latin-1"))
    assert answer_main(["--model", str(tiny_dir), "--question", "Who?", "--context-file",
                        str(tmp_path / "latin1.txt")]) == 2
    assert capsys.readouterr().err.strip() == \
        f"error: {tmp_path / 'latin1.txt'}: not UTF-8 text (invalid start byte at byte 10)"
    assert answer_main(["--model", str(tiny_dir), "--question", "Who?", "--context", "Ann.", "--device", "foo"]) == 2
    assert capsys.readouterr().err.strip() == "error: --device 'foo': expected auto, cpu, cuda or cuda:N"
    # The module runs as `python -m minispan.answer`; a bad input is one line on stderr, exit status 2.
    result = subprocess.run(
        [sys.executable, "-m", "minispan.answer", "--model", str(tiny_dir), "--question", "Who?", "--context-file",
         str(tmp_path / "nothing.txt")], capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "nothing.txt" in result.stderr


def test_a_broken_checkpoint_or_text_is_one_line_and_the_cli_prints_only_json(tiny_dir, tmp_path, capsys):
    """A vocabulary longer than the embeddings (else an IndexError at the first question using such a token),
    NaN weights (else [] or a bare NaN score, which is not JSON) and text with bytes that are not UTF-8 (Python
    decodes argv to lone surrogates; the tokenizer then fails with a TypeError) each fail in one line."""
    big = tmp_path / "big_vocab"
    shutil.copytree(tiny_dir, big)
    rows = (tiny_dir / "vocab.txt").read_text().count("\n")
    with open(big / "vocab.txt", "a") as f:
        f.write("".join(f"extra{i}\n" for i in range(10)))
    with pytest.raises(ValueError, match=re.escape(f"{big}: a vocabulary of {rows + 10} tokens, more than the "
                                                   f"{rows} embeddings of the model in {big}")):
        pipeline(big)

    nan = tmp_path / "nan"
    shutil.copytree(tiny_dir, nan)
    model = load_model(nan)
    with torch.no_grad():
        model.qa_outputs.weight.fill_(float("nan"))
    save_model(model, nan)
    message = "the model's outputs are not finite (NaN or inf): its weights are, or overflow its dtype"
    with pytest.raises(ValueError, match=re.escape(message)):
        pipeline(nan)(question="Who did Ann meet?", context=CONTEXT)
    assert answer_main(["--model", str(nan), "--question", "Who did Ann meet?", "--context", CONTEXT]) == 2
    assert capsys.readouterr() == ("", f"error: {message}\n")

    with pytest.raises(ValueError, match="input 0: question is not valid text: a lone surrogate at character 3"):
        pipeline(tiny_dir)(question="Who\udcff?", context=CONTEXT)
    assert answer_main(["--model", str(tiny_dir), "--question", "Who?", "--context", "Ann met \udce9."]) == 2
    assert capsys.readouterr() == ("", "error: input 0: context is not valid text: a lone surrogate at character 8\n")


# ---- the arguments code written for transformers 4.x passes (issue 17) -----------------------------------------------

def test_the_arguments_of_4x_code_mean_what_they_meant_there(tiny_dir):
    """device=-1 / torch.device, batch_size=, top_k= and the old topk= at construction (every call's defaults) and
    per call, as transformers 4.46's pipeline takes them, with the same answers. Before: pipeline(path,
    device=-1) raised 'Device index must not be negative', batch_size= and the card's form were TypeErrors."""
    transformers = pytest.importorskip("transformers", reason="transformers 4.46 is the test oracle")
    construction = dict(device=-1, batch_size=2, top_k=3, handle_impossible_answer=True, max_seq_len=64)
    theirs = transformers.pipeline("question-answering", model=str(tiny_dir), tokenizer=str(tiny_dir), **construction)
    ours = pipeline("question-answering", model=str(tiny_dir), tokenizer=str(tiny_dir), **construction)
    assert ours.device == torch.device("cpu")
    for call in [{}, {"top_k": 2}, {"batch_size": 1, "doc_stride": 16}]:
        compare(ours, theirs, "Who did Ann meet?", CONTEXT, **call)
    with pytest.warns(UserWarning, match="topk parameter is deprecated, use top_k instead"):
        old = ours(question="Who did Ann meet?", context=CONTEXT, topk=2)
    assert old == ours(question="Who did Ann meet?", context=CONTEXT, top_k=2) and len(old) == 2
    same = pipeline(tiny_dir, device=torch.device("cpu"))(question="Who?", context=CONTEXT)
    assert pipeline(tiny_dir, device=-1)(question="Who?", context=CONTEXT) == same


def test_batch_size_is_windows_per_forward_pass(tiny_dir):
    qa = pipeline(tiny_dir, batch_size=1, max_seq_len=24, doc_stride=4)  # several windows over CONTEXT
    passes = []
    qa.model.register_forward_pre_hook(lambda module, args, kwargs: passes.append(kwargs["input_ids"].shape[0]),
                                       with_kwargs=True)
    one_by_one = qa(question="Who?", context=CONTEXT, top_k=3)
    assert len(passes) > 2 and set(passes) == {1}
    passes.clear()
    assert qa(question="Who?", context=CONTEXT, top_k=3, batch_size=64) == one_by_one
    assert len(passes) == 2  # the windows of one length, then the shorter last one


def test_torch_dtype(tiny_dir):
    for dtype, expected in [("bfloat16", torch.bfloat16), (torch.float16, torch.float16), ("auto", torch.float32),
                            (None, torch.float32)]:
        qa = pipeline(tiny_dir, torch_dtype=dtype)
        assert next(qa.model.parameters()).dtype == expected
        assert qa(question="Who did Ann meet?", context=CONTEXT)["answer"]
    with pytest.raises(ValueError, match="dtype must be a floating-point torch.dtype"):
        pipeline(tiny_dir, torch_dtype="int8")


@pytest.mark.parametrize("call, message", [
    (lambda d: pipeline(d, foo=1), "pipeline: unknown argument 'foo' (minispan takes model, tokenizer, revision, "
                                   "token, top_k, "),
    (lambda d: pipeline(d, device_map="auto"), "pipeline: unknown argument 'device_map'"),
    (lambda d: pipeline(d)(question="Who?", context="Ann.", device=-1), "qa: unknown argument 'device'"),
    (lambda d: pipeline(d, top_k=0), "top_k must be a positive integer, got 0"),
    (lambda d: pipeline(d, batch_size=0), "batch_size must be a positive integer, got 0"),
    (lambda d: pipeline(d)(question="Who?", context="Ann.", doc_stride=-1), "doc_stride must be a non-negative"),
    (lambda d: pipeline("summarization", model=str(d)), "pipeline: task 'summarization'"),
    (lambda d: pipeline("question-answering"), "pipeline: task 'question-answering', model None: "),
    (lambda d: pipeline(d, device="tpu"), "--device 'tpu': expected auto, cpu, cuda or cuda:N"),
])
def test_arguments_4x_would_not_take_are_one_line(tiny_dir, call, message):
    with pytest.raises(ValueError) as error:
        call(tiny_dir)
    assert str(error.value).startswith(message) and "\n" not in str(error.value), str(error.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_device_0_without_a_gpu_is_one_line(tiny_dir):
    with pytest.raises(ValueError, match=r"^--device cuda:0: no CUDA GPU is available"):
        pipeline(tiny_dir, device=0)


def test_model_max_length_sets_the_default_windows(tiny_dir, tmp_path):
    """tokenizer_config.json's model_max_length caps the default max_seq_len, as in transformers 4.46 (384 at
    most): windows of 40 tokens here, so the scores differ from the 64-token windows the model's positions allow."""
    transformers = pytest.importorskip("transformers", reason="transformers 4.46 is the test oracle")
    for name in ("config.json", "model.safetensors", "vocab.txt"):
        shutil.copy(tiny_dir / name, tmp_path / name)
    (tmp_path / "tokenizer_config.json").write_text('{"do_lower_case": true, "model_max_length": 40}')
    theirs = transformers.pipeline("question-answering", model=str(tmp_path), tokenizer=str(tmp_path))
    _, got = compare(pipeline(tmp_path), theirs, "Who did Ann meet?", CONTEXT, top_k=3)
    assert got != as_list(pipeline(tiny_dir)(question="Who did Ann meet?", context=CONTEXT, top_k=3))
