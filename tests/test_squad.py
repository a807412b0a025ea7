"""read_squad: the bundled sample, the shared real dev half, and every validation rule on files made here."""
import json
import warnings

import pytest

from minispan.squad import Answer, SquadFormatError, SquadWarning, read_squad


def test_sample_reads_in_file_order_with_exact_offsets(sample_path):
    raw = json.loads(sample_path.read_text(encoding="utf-8"))
    assert raw["version"] == "v2.0"
    examples = read_squad(sample_path)
    qas = [(a["title"], p["context"], qa) for a in raw["data"] for p in a["paragraphs"] for qa in p["qas"]]
    assert [e.id for e in examples] == [qa["id"] for _, _, qa in qas]
    assert len(examples) == 45 and sum(e.is_impossible for e in examples) == 14
    assert sum(len(e.answers) > 1 for e in examples) >= 10  # several gold answers
    for e, (title, context, qa) in zip(examples, qas):
        assert (e.title, e.context, e.question) == (title, context, qa["question"])
        assert e.is_impossible == (not e.answers)  # plausible_answers are not gold answers
        for answer in e.answers:
            assert context[answer.start:answer.start + len(answer.text)] == answer.text
    iceland = next(e for e in examples if e.id == "iceland-3")
    assert iceland.answers == [Answer("Eyjafjallajökull", iceland.context.index("Eyja"))]  # non-ASCII offsets


def test_dev_half_reads_completely(dev_half_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every answer of the real data is at its offset
        examples = read_squad(dev_half_path)
        assert len(read_squad(dev_half_path, training=True)) == len(examples) == 6078
    assert sum(not e.is_impossible for e in examples) == 2910


def write(tmp_path, obj, name="bad.json"):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    return path


def squad(qas, context="Mainz is a city."):
    return {"version": "v2.0", "data": [{"title": "T", "paragraphs": [{"context": context, "qas": qas}]}]}


def qa(qid="q1", question="Which city?", answers=({"text": "Mainz", "answer_start": 0},), **extra):
    return {"id": qid, "question": question, "answers": list(answers), **extra}


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ([1, 2], "expected a JSON object with a 'data' list"),
    ({"version": "v2.0"}, "expected a JSON object with a 'data' list"),
    ({"data": [{"title": "T", "paragraphs": [{"qas": []}]}]}, "data[0].paragraphs[0]: missing field 'context'"),
    ({"data": [{"title": "T", "paragraphs": [{"context": 3, "qas": []}]}]}, "field 'context': expected a string"),
    (squad([{"question": "?", "answers": []}]), "qas[0]: missing field 'id'"),
    (squad([{"id": "q1", "answers": []}]), "question 'q1': missing field 'question'"),
    (squad([qa(), qa()]), "question 'q1': duplicate id"),
    (squad([qa(answers=[{"text": "Mainz", "answer_start": "0"}])]),
     "question 'q1': answers[0]: field 'answer_start': expected an integer, got \"0\""),
    (squad([qa(answers=[{"text": "Mainz", "answer_start": True}])]), "field 'answer_start': expected an integer"),
    (squad([qa(is_impossible=True)]), "question 'q1': field 'is_impossible': true, but 'answers' is not empty"),
    (squad([qa(is_impossible="no")]), "field 'is_impossible': expected true or false"),
])
def test_errors_name_file_id_and_field_in_one_line(tmp_path, content, message):
    path = write(tmp_path, content)
    with pytest.raises(SquadFormatError) as info:
        read_squad(path)
    text = str(info.value)
    assert text.startswith(str(path)) and message in text and "\n" not in text
    assert isinstance(info.value, ValueError)


def test_missing_file_is_a_format_error(tmp_path):
    with pytest.raises(SquadFormatError, match="cannot read"):
        read_squad(tmp_path / "absent.json")


@pytest.mark.parametrize("answer, problem", [
    ({"text": "Mainz", "answer_start": 1}, "text 'Mainz' is not at answer_start 1"),
    ({"text": "city", "answer_start": 40}, "answer_start 40 is out of range for a context of 16 characters"),
    ({"text": "city", "answer_start": -1}, "answer_start -1 is out of range for a context of 16 characters"),
])
def test_unlocatable_answers_warn_and_training_drops_them(tmp_path, answer, problem):
    good = {"text": "city", "answer_start": 11}
    path = write(tmp_path, squad([qa("q1", answers=[answer]), qa("q2", answers=[answer, good])]))

    with pytest.warns(SquadWarning) as record:
        examples = read_squad(path)  # evaluation keeps them: scoring compares texts, not offsets
    assert [len(e.answers) for e in examples] == [1, 2]
    assert f"{path}: question 'q1': answers[0]: {problem}" == str(record[0].message)

    with pytest.warns(SquadWarning) as record:
        examples = read_squad(path, training=True)
    assert [(e.id, e.answers) for e in examples] == [("q2", [Answer("city", 11)])]
    messages = [str(r.message) for r in record]
    assert f"{path}: question 'q1': answers[0]: {problem}; answer dropped" in messages
    assert f"{path}: question 'q1': answerable but no answer can be located in the context; example dropped" \
        in messages


def test_a_blank_answer_is_dropped_from_training_with_a_warning(tmp_path):
    blank, good = {"text": " ", "answer_start": 5}, {"text": "city", "answer_start": 11}  # "Mainz is a city."
    path = write(tmp_path, squad([qa("q1", answers=[blank, good])]))
    with pytest.warns(SquadWarning, match=r"question 'q1': answers\[0\]: text ' ' is blank; answer dropped"):
        [example] = read_squad(path, training=True)
    assert example.answers == [Answer("city", 11)]  # the first answer is the target: now a real one
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(read_squad(path)[0].answers) == 2  # evaluation keeps gold answers as they are


def test_squad_2_fields_and_defaults(tmp_path):
    path = write(tmp_path, squad([
        qa("has"),
        qa("none", answers=[], is_impossible=True, plausible_answers=[{"text": "city", "answer_start": 11}]),
        {"id": "v1-style", "question": "No is_impossible field?", "answers": []},  # SQuAD 1.1 has no flag
        {"id": "unlabelled", "question": "No answers field at all?"},               # a file for prediction
    ]))
    examples = read_squad(path)
    assert [(e.id, e.is_impossible, e.answers) for e in examples] == [
        ("has", False, [Answer("Mainz", 0)]), ("none", True, []), ("v1-style", True, []), ("unlabelled", True, [])]
    assert all(e.title == "T" for e in examples)
