"""Read SQuAD 2.0 JSON into plain Example objects, validating as we go (the format: docs/01-reading-squad.md).
Every problem is one line naming the file, the question id and the field. `plausible_answers` are ignored.
"""
import json
import warnings
from dataclasses import dataclass, field

from minispan.files import read_json


@dataclass
class Answer:
    text: str
    start: int  # character offset of the answer in the context


@dataclass
class Example:
    id: str
    title: str
    question: str
    context: str
    answers: list[Answer] = field(default_factory=list)
    is_impossible: bool = False


class SquadFormatError(ValueError):
    """The file is not SQuAD-format JSON; the message names the file, the question id and the field."""


class SquadWarning(UserWarning):
    """Data we can read but not fully trust, e.g. an answer that is not at its answer_start."""


def read_squad(path, training=False):
    """Read a SQuAD 1.1/2.0 JSON file into a list of Example, in the file's order. Answers not found in their context
    are named in a warning; with training=True they are dropped (the target is their position), and so is an
    answerable question left without one. For evaluation they are kept: scoring compares texts."""
    try:
        root = read_json(path)
    except ValueError as e:
        raise SquadFormatError(str(e)) from None
    data = root.get("data") if isinstance(root, dict) else None
    if not isinstance(data, list):
        raise SquadFormatError(f"{path}: expected a JSON object with a 'data' list of articles")

    examples, seen = [], set()
    for a, article in enumerate(data):
        where = f"{path}: data[{a}]"
        title = get_field(article, "title", str, where, default="")
        for p, paragraph in enumerate(get_field(article, "paragraphs", list, where)):
            where = f"{path}: data[{a}].paragraphs[{p}]"
            context = get_field(paragraph, "context", str, where)
            for q, qa in enumerate(get_field(paragraph, "qas", list, where)):
                qid = get_field(qa, "id", str, f"{where}.qas[{q}]")
                where_q = f"{path}: question {qid!r}"
                if qid in seen:
                    raise SquadFormatError(f"{where_q}: duplicate id")
                seen.add(qid)
                examples.append(_read_question(qa, qid, title, context, where_q, training))
    return [example for example in examples if example is not None]  # None: dropped for training


def _read_question(qa, qid, title, context, where, training):
    question = get_field(qa, "question", str, where)
    # `answers` may be absent in a file made for prediction only (no gold answers).
    raw_answers = get_field(qa, "answers", list, where, default=[])
    answers = []
    for i, raw in enumerate(raw_answers):
        text = get_field(raw, "text", str, f"{where}: answers[{i}]")
        start = get_field(raw, "answer_start", int, f"{where}: answers[{i}]")
        if not 0 <= start <= len(context) - len(text):
            problem = f"answer_start {start} is out of range for a context of {len(context)} characters"
        elif context[start:start + len(text)] != text:
            problem = f"text {text!r} is not at answer_start {start}"
        elif training and not text.strip():  # no span to learn (build_features would skip it silently)
            problem = f"text {text!r} is blank"
        else:
            answers.append(Answer(text, start))
            continue
        warnings.warn(f"{where}: answers[{i}]: {problem}" + ("; answer dropped" if training else ""),
                      SquadWarning, stacklevel=3)
        if not training:
            answers.append(Answer(text, start))

    is_impossible = get_field(qa, "is_impossible", bool, where, default=not raw_answers)
    if is_impossible and raw_answers:
        raise SquadFormatError(f"{where}: field 'is_impossible': true, but 'answers' is not empty")
    if training and not is_impossible and not answers:
        warnings.warn(f"{where}: answerable but no answer can be located in the context; example dropped",
                      SquadWarning, stacklevel=3)
        return None
    return Example(qid, title, question, context, answers, is_impossible)


_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false", list: "a list"}


def get_field(obj, key, kind, where, default=None):
    """obj[key], checked to be of type `kind`; `default` (when given) stands in for a missing key.
    `where` says where obj is in the file. The evaluation (metrics.py) checks its dataset with this too."""
    if not isinstance(obj, dict):
        raise SquadFormatError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if key not in obj:
        if default is not None:
            return default
        raise SquadFormatError(f"{where}: missing field '{key}'")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):  # a bool is an int, not an offset
        raise SquadFormatError(f"{where}: field '{key}': expected {_TYPE_NAMES[kind]}, got {json.dumps(value)[:40]}")
    return value
