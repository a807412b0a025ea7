"""evaluate.py / minispan.evaluate_cli.main: output, argument order, reports, errors and exit codes.

With MINISPAN_OFFICIAL_EVAL pointing at a copy of the official evaluate-v2.0.py, the last tests run it on the
same files and require byte-identical output (stdout and --out-file).
"""
import errno
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from minispan.evaluate_cli import main
from minispan.metrics import squad_v2_metrics

REPO = Path(__file__).resolve().parents[1]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def make_inputs(tmp_path, sample_path, seed=0, ties=False):
    """Predictions and no-answer probabilities for the sample: golds, mutations, "" and wrong spans."""
    data = json.loads(sample_path.read_text(encoding="utf-8"))
    rng = random.Random(seed)
    preds, probs = {}, {}
    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                golds = [a["text"] for a in qa["answers"] + qa["plausible_answers"]] if qa["is_impossible"] \
                    else [a["text"] for a in qa["answers"]]
                choice = rng.random()
                preds[qa["id"]] = (rng.choice(golds) if golds and choice < 0.5 else
                                   ("The " + golds[0]) if golds and choice < 0.7 else
                                   "" if choice < 0.9 else rng.choice(paragraph["context"].split()))
                probs[qa["id"]] = rng.choice([0.0, 0.5, 1.0]) if ties else rng.random()
    paths = tmp_path / "preds.json", tmp_path / "na_probs.json"
    for path, obj in zip(paths, (preds, probs)):
        path.write_text(json.dumps(obj), encoding="utf-8")
    return data, preds, probs, paths[0], paths[1]


def test_prints_the_official_keys_as_indented_json(tmp_path, sample_path, capsys):
    data, preds, probs, pred_file, prob_file = make_inputs(tmp_path, sample_path)
    code, out, err = run(capsys, pred_file, sample_path)
    assert (code, err) == (0, "")
    assert out == json.dumps(squad_v2_metrics(data, preds), indent=2) + "\n"
    # -n without -t: the official default threshold, 1.0 (probabilities, not null odds).
    code, out, err = run(capsys, pred_file, sample_path, "-n", prob_file)
    assert out == json.dumps(squad_v2_metrics(data, preds, probs, 1.0), indent=2) + "\n"
    assert out != json.dumps(squad_v2_metrics(data, preds, probs, 0.0), indent=2) + "\n"
    code, out, err = run(capsys, pred_file, sample_path, "-n", prob_file, "-t", "0.4")
    assert out == json.dumps(squad_v2_metrics(data, preds, probs, 0.4), indent=2) + "\n"
    assert list(json.loads(out))[-1] == "best_f1_thresh"


def test_swapped_order_is_detected(tmp_path, sample_path, capsys):
    _, _, _, pred_file, prob_file = make_inputs(tmp_path, sample_path)
    _, expected, _ = run(capsys, pred_file, sample_path, "-n", prob_file)
    code, out, err = run(capsys, sample_path, pred_file, "-n", prob_file)  # the official script's order
    assert (code, out) == (0, expected)
    assert "the official script's order" in err and err.count("\n") == 1


def test_out_file_is_written_compactly_and_nothing_is_printed(tmp_path, sample_path, capsys):
    data, preds, _, pred_file, _ = make_inputs(tmp_path, sample_path)
    out_file = tmp_path / "eval" / "metrics.json"
    code, out, err = run(capsys, pred_file, sample_path, "-o", out_file)
    assert (code, out, err) == (0, "", "")
    assert out_file.read_text() == json.dumps(squad_v2_metrics(data, preds))  # as the official json.dump
    assert [p.name for p in out_file.parent.iterdir()] == ["metrics.json"]    # no temporary file left


def test_missing_and_unknown_predictions_are_reported(tmp_path, sample_path, capsys):
    data, preds, _, pred_file, _ = make_inputs(tmp_path, sample_path)
    ids = list(preds)
    for qid in ids[:7]:
        del preds[qid]
    preds["not-a-question"] = "x"
    pred_file.write_text(json.dumps(preds), encoding="utf-8")
    code, out, err = run(capsys, pred_file, sample_path)
    assert code == 0
    assert json.loads(out) == squad_v2_metrics(data, {**{qid: "" for qid in ids[:7]}, **preds})
    assert f"no prediction for 7 of 45 questions, counted as answered \"\" (first: {ids[0]!r}" in err
    assert "ignored 1 predictions for ids not in" in err and "'not-a-question'" in err

    code, out, err = run(capsys, pred_file, sample_path, "--strict")
    assert (code, out) == (2, "")
    assert err.startswith(f"{Path(sys.argv[0]).name}: error: {pred_file}: no prediction for 7 of 45 questions")


def test_verbose_says_what_it_did(tmp_path, sample_path, capsys):
    _, _, _, pred_file, prob_file = make_inputs(tmp_path, sample_path)
    code, out, err = run(capsys, pred_file, sample_path, "-n", prob_file, "-v")
    assert code == 0 and json.loads(out)
    assert "45 questions (31 answerable, 14 unanswerable)" in err and "turned into \"\"" in err


def bad_inputs(tmp_path, sample_path):
    _, preds, probs, pred_file, prob_file = make_inputs(tmp_path, sample_path)
    first = next(iter(preds))
    files = {
        "not_json": "{oops",
        "list": json.dumps(["a"]),
        "number_pred": json.dumps({**preds, first: 7}),
        "probs_missing": json.dumps({k: v for k, v in probs.items() if k != first}),
        "probs_text": json.dumps({**probs, first: "high"}),
        "empty_data": json.dumps({"version": "v2.0", "data": []}),
        "no_id": json.dumps({"data": [{"paragraphs": [{"context": "c", "qas": [{"answers": []}]}]}]}),
    }
    for name, text in files.items():
        (tmp_path / f"{name}.json").write_text(text, encoding="utf-8")
    return pred_file, prob_file, first


@pytest.mark.parametrize("case, message", [
    ("missing file", "absent.json: cannot read: No such file or directory"),
    ("not json", "not_json.json: not valid JSON (Expecting property name"),
    ("no dataset", "expected one predictions file and one SQuAD dataset"),
    ("two datasets", "got two datasets"),
    ("non-string prediction", "number_pred.json: the prediction for"),
    ("prob missing", "probs_missing.json: no probability for 1 of 45 questions"),
    ("prob not a number", "probs_text.json: the no-answer probability for"),
    ("empty dataset", "empty_data.json: the dataset has no questions"),
    ("question without id", "no_id.json: data[0].paragraphs[0].qas[0]: missing field 'id'"),
    ("out-file is a directory", ": is a directory, expected a file name"),
    ("out-file under a file", "File exists: "),
])
def test_errors_are_one_line_and_exit_2(tmp_path, sample_path, capsys, case, message):
    pred_file, prob_file, _ = bad_inputs(tmp_path, sample_path)
    t = tmp_path
    argv = {
        "missing file": [t / "absent.json", sample_path],
        "not json": [t / "not_json.json", sample_path],
        "no dataset": [pred_file, t / "list.json"],
        "two datasets": [sample_path, sample_path],
        "non-string prediction": [t / "number_pred.json", sample_path],
        "prob missing": [pred_file, sample_path, "-n", t / "probs_missing.json"],
        "prob not a number": [pred_file, sample_path, "-n", t / "probs_text.json"],
        "empty dataset": [pred_file, t / "empty_data.json"],
        "question without id": [pred_file, t / "no_id.json"],
        "out-file is a directory": [pred_file, sample_path, "-o", t],
        "out-file under a file": [pred_file, sample_path, "-o", t / "not_json.json" / "eval.json"],
    }[case]
    code, out, err = run(capsys, *argv)
    assert (code, out) == (2, "")
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_images_need_matplotlib_and_a_probability_file(tmp_path, sample_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib", reason="the image test needs matplotlib")
    _, _, _, pred_file, prob_file = make_inputs(tmp_path, sample_path)
    code, out, err = run(capsys, pred_file, sample_path, "-p", tmp_path / "img")
    assert code == 0 and "needs --na-prob-file" in err and not (tmp_path / "img").exists()

    code, out, err = run(capsys, pred_file, sample_path, "-n", prob_file, "-p", tmp_path / "img")
    assert code == 0 and list(json.loads(out))[-3:] == ["pr_exact_ap", "pr_f1_ap", "pr_oracle_ap"]
    assert len(list((tmp_path / "img").glob("*.png"))) == 5

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if matplotlib were not installed
    code, out, err = run(capsys, pred_file, sample_path, "-n", prob_file, "-p", tmp_path / "img2")
    assert (code, out) == (2, "")
    assert "need matplotlib: pip install 'minispan[plot]'" in err and not (tmp_path / "img2").exists()


def test_an_output_that_is_an_input_is_refused_before_anything_is_written(tmp_path, sample_path, capsys):
    _, _, _, pred_file, prob_file = make_inputs(tmp_path, sample_path)
    data_file = tmp_path / "dev.json"
    shutil.copy(sample_path, data_file)
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.json").symlink_to(prob_file)
    before = {path: path.read_bytes() for path in (pred_file, prob_file, data_file)}
    for out in (pred_file, tmp_path / "sub" / ".." / "dev.json", tmp_path / "link.json"):  # the same files
        code, stdout, err = run(capsys, pred_file, data_file, "-n", prob_file, "-p", tmp_path / "img", "-o", out)
        assert (code, stdout) == (2, "") and err.count("\n") == 1
        assert f"--out-file {out} is the input file" in err and "refused" in err
    assert {path: path.read_bytes() for path in before} == before and not (tmp_path / "img").exists()


def test_huge_probabilities_and_unwritable_outputs_are_one_line(tmp_path, sample_path, capsys, monkeypatch):
    """A 4,000-digit integer is a valid JSON number but no float: refused before the image folder is made.
    A write that fails (a full disk) names the user's output, not the hidden temporary file."""
    pytest.importorskip("matplotlib", reason="the image test needs matplotlib")
    _, _, probs, pred_file, _ = make_inputs(tmp_path, sample_path)
    huge = tmp_path / "huge.json"
    huge.write_text(json.dumps(probs).replace(str(next(iter(probs.values()))), "9" * 4000, 1))
    code, out, err = run(capsys, pred_file, sample_path, "-n", huge, "-p", tmp_path / "img")
    assert (code, out) == (2, "") and err.count("\n") == 1 and not (tmp_path / "img").exists()
    assert f"{huge}: the no-answer probability for {next(iter(probs))!r} is an integer too large" in err

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    code, out, err = run(capsys, pred_file, sample_path, "-o", tmp_path / "eval.json")
    assert (code, out) == (2, "") and ".tmp" not in err
    assert err.endswith(f": error: [Errno 28] No space left on device: {str(tmp_path / 'eval.json')!r}\n")
    assert not list(tmp_path.glob("*eval.json*"))


def test_the_script_exits_2_without_a_traceback(tmp_path, sample_path):
    # The real entry point, once, in a subprocess: exit status and stderr as a user sees them.
    result = subprocess.run([sys.executable, str(REPO / "evaluate.py"), str(tmp_path / "absent.json"),
                             str(sample_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("evaluate.py: error:") and "Traceback" not in result.stderr

    # `evaluate.py ... | head -1`: the reader goes away before the metrics are printed. Nothing on stderr.
    _, _, _, pred_file, _ = make_inputs(tmp_path, sample_path)
    process = subprocess.Popen([sys.executable, str(REPO / "evaluate.py"), str(pred_file), str(sample_path)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # before the script has read its inputs, let alone printed
    assert process.stderr.read() == "" and process.wait(timeout=120) == 1


# ------------------------------------------------------------------------------ the official script itself

@pytest.fixture(scope="module")
def official_eval():
    path = os.environ.get("MINISPAN_OFFICIAL_EVAL")
    if not path:
        pytest.skip("set MINISPAN_OFFICIAL_EVAL to a copy of the official evaluate-v2.0.py to compare with it")
    return path


def official(script, data_file, pred_file, *options):
    result = subprocess.run([sys.executable, script, str(data_file), str(pred_file), *map(str, options)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("ties", [False, True])
def test_equals_the_official_script_on_the_sample(official_eval, tmp_path, sample_path, capsys, ties):
    _, _, _, pred_file, prob_file = make_inputs(tmp_path, sample_path, seed=3, ties=ties)
    for options in ([], ["-t", "0.5"], ["-n", prob_file], ["-n", prob_file, "-t", "0.5"],
                    ["-n", prob_file, "-t", "0.0", "-p", tmp_path / "img"]):
        assert run(capsys, pred_file, sample_path, *options)[1] == official(official_eval, sample_path, pred_file,
                                                                           *options)
    ours, theirs = tmp_path / "ours.json", tmp_path / "theirs.json"
    run(capsys, pred_file, sample_path, "-n", prob_file, "-o", ours)
    official(official_eval, sample_path, pred_file, "-n", prob_file, "-o", theirs)
    assert ours.read_bytes() == theirs.read_bytes()


def test_equals_the_official_script_on_the_dev_half(official_eval, tmp_path, dev_half_path, capsys):
    data = json.loads(dev_half_path.read_text(encoding="utf-8"))
    rng = random.Random(5)
    preds, probs = {}, {}
    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                golds = [a["text"] for a in qa["answers"]] or [""]
                preds[qa["id"]] = rng.choice([golds[0], "", golds[-1] + " of it", paragraph["context"][:20]])
                probs[qa["id"]] = round(rng.random(), 2)  # two decimals: many ties
    pred_file, prob_file = tmp_path / "preds.json", tmp_path / "probs.json"
    pred_file.write_text(json.dumps(preds), encoding="utf-8")
    prob_file.write_text(json.dumps(probs), encoding="utf-8")
    options = ["-n", prob_file, "-t", "0.3", "-p", tmp_path / "img"]
    assert run(capsys, pred_file, dev_half_path, *options)[1] == official(official_eval, dev_half_path, pred_file,
                                                                          *options)
