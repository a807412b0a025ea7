"""train.py end to end, in subprocesses: the demo, kill -9 + --resume, torchrun with 2 processes, bad input.

Every run is the demo's tiny random BERT (2 layers, hidden 64) on data/sample.json for a few epochs, on the
CPU in fp32, with one thread per process so the runs stay fast on a shared 2-core machine.
"""
import contextlib
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from minispan.evaluate_cli import main as evaluate_main
from minispan.runtime import TrainingError
from minispan.train_cli import main, parse_args
from minispan.weights import load_state_dict_file

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
OFFICIAL_KEYS = ["exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total", "NoAns_exact", "NoAns_f1",
                 "NoAns_total", "best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh"]


def train_py(*args, check=True, **kwargs):
    result = subprocess.run([sys.executable, str(REPO / "train.py"), *map(str, args)], env=ENV, cwd=REPO,
                            capture_output=True, text=True, timeout=300, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"train.py {' '.join(map(str, args))} failed:\n{result.stderr[-3000:]}")
    return result


def run_main(*args):
    assert main([*map(str, args)]) == 0


def weights(directory):
    return load_state_dict_file(Path(directory) / "model.safetensors")


def test_demo_writes_a_loadable_model_and_the_official_metrics(tmp_path, sample_path, one_thread):
    out = tmp_path / "demo"
    result = train_py("--demo", "--epochs", "4", "--save-every", "10", "--log-every", "5", "--output-dir", out)
    for name in ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json", "predictions.json",
                 "null_odds.json", "span_predictions.json", "eval_results.json", "run_config.json", "log.jsonl"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "eval_results.json").read_text())
    assert list(metrics) == OFFICIAL_KEYS
    assert json.loads(result.stdout[:result.stdout.rindex("}") + 1]) == metrics  # printed too
    assert "train features: 100%" in result.stderr and "dev features: 100%" in result.stderr  # which bar is which
    assert result.stdout.endswith(f"wrote 11 files to {out}: run_config.json, log.jsonl, checkpoints/, config.json, "
                                  "model.safetensors, vocab.txt, tokenizer_config.json, predictions.json, "
                                  "null_odds.json, span_predictions.json, eval_results.json\n")  # all it wrote
    questions = json.loads((out / "predictions.json").read_text())
    assert metrics["total"] == len(questions) == 45
    assert set(json.loads((out / "null_odds.json").read_text())) == set(questions)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [5, 10, 15, 20, 24]  # 45 features / batch 8 = 6 steps x 4 epochs
    assert log[-1]["loss"] < log[0]["loss"] and log[-1]["lr"] == 0.0
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-24"]  # the newest only
    assert stat.S_IMODE((out / "checkpoints" / "step-24").stat().st_mode) == stat.S_IMODE(out.stat().st_mode)

    # eval_results.json is evaluate.py on the best spans with the null odds at threshold 0; its raw numbers
    # are those of predictions.json (already cut at 0), its best_* searched over every threshold.
    def evaluate_py(predictions):
        with contextlib.redirect_stdout(io.StringIO()) as stdout:
            assert evaluate_main([str(predictions), str(sample_path), "-n", str(out / "null_odds.json"), "-t", "0"]) == 0
        return json.loads(stdout.getvalue())

    assert evaluate_py(out / "span_predictions.json") == metrics
    cut = evaluate_py(out / "predictions.json")
    raw = [key for key in OFFICIAL_KEYS if not key.startswith("best_")]
    assert {key: cut[key] for key in raw} == {key: metrics[key] for key in raw}
    assert metrics["best_f1"] >= cut["best_f1"]
    # span_predictions.json is every question's best non-empty span: predictions.json where that answers.
    spans, answers = (json.loads((out / name).read_text()) for name in ("span_predictions.json", "predictions.json"))
    assert all(spans.values()) and all(spans[q] == a for q, a in answers.items() if a)

    # The output dir is a model directory: the pipeline loads it and answers from the context.
    from minispan import pipeline, read_squad

    example = read_squad(sample_path)[0]
    answer = pipeline(out)(question=example.question, context=example.context)
    assert example.context[answer["start"]:answer["end"]] == answer["answer"] != ""

    # Re-running the demo replaces the demo; anything else there is refused (see test_bad_input).
    run_main("--demo", "--epochs", "1", "--save-every", "0", "--output-dir", out)
    assert not (out / "checkpoints").exists()


def test_a_run_resumes_from_any_working_directory(tmp_path, sample_path, monkeypatch, capsys):
    """run_config.json keeps the files a run used as absolute paths, so that --resume from another working
    directory reads the same ones (it stored them as given: "data/sample.json" was then looked up there)."""
    first, elsewhere = tmp_path / "first", tmp_path / "elsewhere"
    (first / "data").mkdir(parents=True)
    elsewhere.mkdir()
    shutil.copy(sample_path, first / "data" / "sample.json")
    monkeypatch.chdir(first)
    run_main("--demo", "--epochs", "1", "--train-file", "data/sample.json", "--dev-file", "data/sample.json",
             "--output-dir", "run")
    saved = json.loads((first / "run" / "run_config.json").read_text())["args"]
    assert saved["train_file"] == saved["dev_file"] == str((first / "data" / "sample.json").resolve())
    monkeypatch.chdir(elsewhere)
    assert main(["--resume", str(first / "run")]) == 0, capsys.readouterr().err
    # Repeating a flag as it was given is not a change, though the file is saved by its absolute path.
    monkeypatch.chdir(first)
    assert main(["--resume", "run", "--train-file", "data/sample.json"]) == 0, capsys.readouterr().err
    assert main(["--resume", "run", "--train-file", str(sample_path)]) == 2  # another file: refused
    assert "remove --train-file" in capsys.readouterr().err


def test_a_hand_edited_run_config_is_one_clear_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    cases = [({"lr": "fast"}, "args.lr must be a number, got \"fast\""),
             ({"epochs": 2.5}, "args.epochs must be an integer, got 2.5"),
             ({"epochs": True}, "args.epochs must be an integer, got true"),
             ({"compile": "yes"}, "args.compile must be true or false, got \"yes\""),
             ({"precision": "bf32"}, "args.precision must be 'bf16' or 'fp16' or 'fp32', got \"bf32\""),
             ({"train_file": ["a.json"]}, "args.train_file must be a string, got [\"a.json\"]")]
    for edit, message in cases:
        (run / "run_config.json").write_text(json.dumps({"args": {"lr": 3e-5, "epochs": 2, **edit}}))
        assert main(["--resume", str(run)]) == 2
        assert capsys.readouterr().err.strip() == f"error: {run / 'run_config.json'}: {message}"


def test_micro_batches_need_not_divide_the_global_batch(tmp_path, capsys):
    """--per-device-batch-size 3 splits the demo's batches of 8 into 3 + 3 + 2 (and its last batch, of 5, into
    3 + 2): each micro-batch weighted by its size, the run answers as the unsplit one does."""
    flags = ["--demo", "--epochs", "2", "--save-every", "0"]
    run_main(*flags, "--output-dir", tmp_path / "whole")
    run_main(*flags, "--per-device-batch-size", "3", "--output-dir", tmp_path / "split")
    odds = [json.loads((tmp_path / run / "null_odds.json").read_text()) for run in ("whole", "split")]
    assert max(abs(odds[0][q] - odds[1][q]) for q in odds[0]) < 1e-4  # measured 5.3e-7
    capsys.readouterr()


def test_ctrl_c_says_how_to_resume(tmp_path, monkeypatch, capsys):
    """Ctrl-C during training: one line saying how to go on, exit status 130 (as for SIGINT), no traceback."""
    import minispan.run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(minispan.run, "fine_tune", interrupted)
    out = tmp_path / "run"
    assert main(["--demo", "--output-dir", str(out)]) == 130
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (f"interrupted; continue with: python train.py --resume {out} "
                                    "(no checkpoint yet: it starts again from step 0)")
    assert "Traceback" not in err
    # Interrupted before this run wrote its run_config.json: the one there is the run --overwrite replaces.
    monkeypatch.setattr(minispan.train_cli, "train", interrupted)
    assert main(["--demo", "--epochs", "3", "--overwrite", "--output-dir", str(out)]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"
    # Under torchrun (as 2 processes would see it): said once, by rank 0, with the command that resumes on
    # as many processes.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    for rank, said in (("1", ""), ("0", f"interrupted; continue with: torchrun --nproc_per_node 2 train.py "
                                        f"--resume {out} (no checkpoint yet: it starts again from step 0)")):
        monkeypatch.setenv("RANK", rank)
        assert main(["--resume", str(out)]) == 130
        assert capsys.readouterr().err.strip() == said


def test_a_run_stopped_before_its_first_checkpoint_starts_over_on_resume(tmp_path, monkeypatch, capsys, caplog):
    """run_config.json is the first file a run writes: stopped at any point after it (here while saving its
    tokenizer), the folder holds a run that --resume starts over, not a half run that nothing accepts."""
    from minispan.tokenizer import WordPieceTokenizer

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(WordPieceTokenizer, "save", interrupted)
        assert main(["--demo", "--epochs", "1", "--output-dir", str(out)]) == 130
    assert capsys.readouterr().err.endswith(f"--resume {out} (no checkpoint yet: it starts again from step 0)\n")
    assert main(["--resume", str(out)]) == 0
    assert f"no checkpoint in {out / 'checkpoints'}: starting the run over" in caplog.text
    assert (out / "vocab.txt").is_file() and json.loads((out / "eval_results.json").read_text())["total"] == 45


def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path):
    flags = ["--demo", "--epochs", "8", "--log-every", "4"]  # 48 steps
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    train_py(*flags, "--save-every", "0", "--output-dir", whole)  # a fresh process, like the others

    process = subprocess.Popen([sys.executable, str(REPO / "train.py"), *flags, "--save-every", "6",
                                "--output-dir", str(killed)], env=ENV, cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Kill it once step 8 is logged: after the checkpoint at step 6 (most likely before the one at 12).
    log = killed / "log.jsonl"
    deadline = time.time() + 120
    while not (log.exists() and '"step": 8,' in log.read_text()) and process.poll() is None \
            and time.time() < deadline:
        time.sleep(0.01)
    # Meanwhile, a second run in its folder (a resume, or a new run over it) is refused, naming the process.
    for second in (["--resume", killed], ["--demo", "--overwrite", "--output-dir", killed]):
        with contextlib.redirect_stderr(io.StringIO()) as err:
            assert main([*map(str, second)]) == 2
        assert err.getvalue().endswith(f"error: --output-dir {killed} is in use by another run (process "
                                       f"{process.pid}); wait for it to end, or use another --output-dir\n")
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL  # killed mid-run, not finished
    assert not (killed / "model.safetensors").exists()
    # What a kill can leave half-written (a model-sized temporary file, a checkpoint folder being filled) is
    # removed by the next run there; a user's own hidden files are not. The lock died with its process.
    ours = [".model.safetensors.k2x_9abc.tmp", ".predictions.json.abcdefgh.tmp", "checkpoints/.step-12.tmp"]
    theirs = [".notes.tmp", ".mine.json.abcdefgh.tmp"]
    (killed / ours[-1]).mkdir(exist_ok=True)
    for name in (ours[-1] + "/model.safetensors", *ours[:-1], *theirs):
        (killed / name).write_bytes(b"x")

    result = train_py("--resume", killed)
    assert "resuming from" in result.stderr
    assert [name for name in ours + theirs if (killed / name).exists()] == theirs
    resumed = weights(killed)
    for name, tensor in weights(whole).items():
        assert torch.equal(tensor, resumed[name]), name  # bit for bit
    assert (whole / "predictions.json").read_text() == (killed / "predictions.json").read_text()
    # The steps the killed run logged after its checkpoint are logged once, by the resumed run, and the log is
    # the uninterrupted run's: the loss since the last log line (saved with the checkpoint at step 6) included.
    logged = [[{k: v for k, v in json.loads(line).items() if k != "features_per_s"}
               for line in (run / "log.jsonl").read_text().splitlines()] for run in (whole, killed)]
    assert logged[0] == logged[1] and [record["step"] for record in logged[1]] == list(range(4, 49, 4))

    bad = train_py("--resume", killed, "--lr", "1", check=False)
    assert bad.returncode == 2 and "remove --lr" in bad.stderr


# Parameters whose true gradient is exactly 0, because softmax ignores a constant added to all its inputs:
# qa_outputs.bias and the last LayerNorm's bias (it only feeds qa_outputs) shift all start (or end) logits,
# an attention key bias shifts all of one query's scores. Their gradients are float rounding noise, which
# Adam divides by its own size into steps of ~lr in a random direction (qa_outputs.bias ends 4.6e-3
# apart here); they change no output.
def loss_free(name):
    return name in ("qa_outputs.bias", "bert.encoder.layer.1.output.LayerNorm.bias") or name.endswith("key.bias")


def test_torchrun_two_processes_equal_one(tmp_path, one_thread):
    """Global batches of 11: 1 process x 11, 1 process x 11 micro-batches of 1 (gradient accumulation), and
    2 processes (gloo) with micro-batches of up to 5, which divide nothing: of each batch process 0 takes 6
    features (5 + 1) and process 1 takes 5 (one micro-batch), so they accumulate different numbers of
    micro-batches before the all-reduce. 45 features make each epoch's last batch a single feature, so
    process 1 has none and joins with a weight-0 batch. Dropout is 0 in the demo: only float rounding
    differs."""
    flags = ["--demo", "--epochs", "2", "--batch-size", "11", "--save-every", "0"]
    one, accumulated, two = tmp_path / "one", tmp_path / "accumulated", tmp_path / "two"
    run_main(*flags, "--output-dir", one)
    run_main(*flags, "--output-dir", accumulated, "--per-device-batch-size", "1")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(REPO / "train.py"), *flags, "--per-device-batch-size", "5", "--output-dir", str(two)],
                            env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es) x 5 features per micro-batch" in result.stderr
    assert "10 steps of 11 features" in result.stderr
    reference = weights(one)
    null_odds = json.loads((one / "null_odds.json").read_text())
    for other in (accumulated, two):
        worst = max((reference[name] - tensor).abs().max().item() for name, tensor in weights(other).items()
                    if not loss_free(name))
        assert worst < 1e-5, (other.name, worst)  # measured after 10 steps: 6.8e-7 and 1.4e-6
        assert (other / "predictions.json").read_text() == (one / "predictions.json").read_text()
        other_odds = json.loads((other / "null_odds.json").read_text())
        assert max(abs(null_odds[q] - other_odds[q]) for q in null_odds) < 1e-5  # measured 6.0e-7 and 3.9e-7


def sample_variant(tmp_path, sample_path, name, change):
    data = json.loads(Path(sample_path).read_text())
    change(data)
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_bad_input_is_one_clear_line_and_overwrites_nothing(tmp_path, sample_path, capsys):
    def fails(*args, expect):
        assert main([*map(str, args)]) == 2
        err = capsys.readouterr().err
        assert expect in err and err.startswith("error: ") and "Traceback" not in err, err

    def unanswerable(data):
        for article in data["data"]:
            for paragraph in article["paragraphs"]:
                paragraph["qas"] = [dict(q, answers=[], is_impossible=True) for q in paragraph["qas"]]

    no_answers = sample_variant(tmp_path, sample_path, "no_answers.json", unanswerable)
    out = tmp_path / "out"
    fails("--demo", "--train-file", no_answers, "--output-dir", out, expect="no answerable questions")
    not_squad = tmp_path / "not_squad.json"
    not_squad.write_text(json.dumps({"rows": [1, 2, 3]}))
    fails("--demo", "--dev-file", not_squad, "--output-dir", out, expect=str(not_squad))
    def no_gold(data):
        del data["data"][0]["paragraphs"][0]["qas"][0]["answers"]

    no_gold_dev = sample_variant(tmp_path, sample_path, "no_gold.json", no_gold)
    fails("--demo", "--dev-file", no_gold_dev, "--output-dir", out,
          expect=f"{no_gold_dev}: cannot score predictions against it: question 'bellrock-1': missing field 'answers'")
    def long_question(data):
        data["data"][-1]["paragraphs"][-1]["qas"][-1]["question"] = "which " * 90

    # A dev question whose windows these settings cannot make: refused before training, not after it.
    long_dev = sample_variant(tmp_path, sample_path, "long_question.json", long_question)
    assert main(["--demo", "--dev-file", str(long_dev), "--max-query-length", "300", "--max-seq-length", "48",
                 "--doc-stride", "16", "--output-dir", str(out)]) == 2
    last_line = capsys.readouterr().err.splitlines()[-1]  # after the training features' progress bar
    assert last_line.startswith("error: ") and last_line.endswith("fewer than doc_stride=16: windows would skip tokens")
    fails("--model", "spanbert-huge", "--train-file", sample_path, "--dev-file", sample_path, "--output-dir", out,
          expect="--model spanbert-huge: not a directory, and not a known model")
    fails("--demo", "--model", "x", expect="takes no --model")
    fails("--demo", "--batch-size", "0", expect="--batch-size must be > 0")
    # Past what any run takes: named, not torch's "Overflow when unpacking long long", nor a plan that never ends.
    fails("--demo", "--seed", str(2**70), expect=f"--seed must be at most 9,223,372,036,854,775,807, got {2**70}")
    fails("--demo", "--seed", str(-2**70), expect=f"--seed must be >= -9,223,372,036,854,775,808, got {-2**70}")
    assert parse_args(["--demo", "--seed", "-1"]).seed == -1  # torch takes negative seeds too
    fails("--demo", "--lr", "nan", "--epochs", "0", expect="--lr must be a finite number, got nan")  # as before
    fails("--demo", "--epochs", "1000000000", expect="--epochs must be at most 10,000,000, got 1000000000")
    assert main(["--demo", "--epochs", "1000000", "--output-dir", str(out)]) == 2  # known once the features are
    assert capsys.readouterr().err.splitlines()[-1] == ("error: --epochs 1000000: 1,000,000 x 45 training features "
                                                       "is more than the 10,000,000 a run can plan; use fewer epochs")
    for flag in ("--lr", "--weight-decay", "--max-grad-norm"):
        for value in ("nan", "inf"):
            fails("--demo", flag, value, expect=f"{flag} must be a finite number, got {value}")
    # Checked before anything is written, not when the first long batch comes (the demo model has 256).
    fails("--demo", "--max-seq-length", "300", "--output-dir", out,
          expect="--max-seq-length 300: the model (the demo) has 256 positions; use --max-seq-length 256 or less")
    fails("--resume", tmp_path, expect="no run_config.json")
    fails("--resume", tmp_path, "--overwrite", expect="--overwrite replaces it: give one")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "run_config.json").write_text('{"args": ')
    fails("--resume", broken, expect=f"{broken / 'run_config.json'}: not valid JSON")
    assert not out.exists()  # nothing was written by any of them

    # An output dir holding another run (not a demo) is left alone.
    other = tmp_path / "other"
    other.mkdir()
    (other / "run_config.json").write_text('{"args": {"demo": false}}')
    (other / "model.safetensors").write_bytes(b"precious")
    fails("--demo", "--output-dir", other, expect="holds another run (run_config.json, model.safetensors)")
    assert (other / "model.safetensors").read_bytes() == b"precious"
    assert sorted(os.listdir(other)) == ["model.safetensors", "run_config.json"]  # not even a .lock

    # It filled while this run read its inputs (minutes on SQuAD): start(), under the lock, looks again.
    from minispan.run import RunDir
    late = RunDir(parse_args(["--demo", "--output-dir", str(tmp_path / "late")]))
    late.check()
    shutil.copytree(other, tmp_path / "late")
    with pytest.raises(TrainingError, match="holds another run"):
        late.start(None, None, None)
    late.close()
    assert (tmp_path / "late" / "model.safetensors").read_bytes() == b"precious"

    # A run that diverges says so, instead of failing in the metrics on a NaN null odds.
    assert main(["--demo", "--epochs", "1", "--lr", "1e10", "--output-dir", str(tmp_path / "diverged")]) == 2
    last_line = capsys.readouterr().err.splitlines()[-1]
    assert last_line.startswith("error: the model's outputs are not finite (NaN or inf): training diverged")
    # Its log.jsonl stays standard JSON (null, not Python's bare NaN, which jq and browsers refuse).
    def strict(constant):
        raise AssertionError(f"log.jsonl holds the non-JSON constant {constant}")
    logged = [json.loads(line, parse_constant=strict)
              for line in (tmp_path / "diverged" / "log.jsonl").read_text().splitlines()]
    assert None in (logged[-1]["loss"], logged[-1]["grad_norm"])

    if not torch.cuda.is_available():
        result = train_py("--demo", "--device", "cuda", "--output-dir", out, check=False)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines() == ["error: --device cuda: no CUDA GPU is available to this "
                                                      f"torch ({torch.__version__}); use --device cpu"]
        assert not out.exists()


def test_compile_flag_compiles_the_layers_of_the_trained_model(tmp_path, monkeypatch):
    """train.py --compile hands the model it trains to compile_layers, before training. Dynamo's own
    "eager" backend stands in for inductor (test_training.py runs inductor itself): it traces, not compiles."""
    from minispan import loop

    compiled, compile_layers = [], loop.compile_layers

    def spy(model):
        compiled.append(model)
        compile_layers(model, backend="eager")

    monkeypatch.setattr(loop, "compile_layers", spy)
    torch._dynamo.reset()
    run_main("--demo", "--compile", "--epochs", "1", "--output-dir", tmp_path / "run")
    model, = compiled
    assert all(layer._compiled_call_impl is not None for layer in model.bert.encoder.layer)
    assert (tmp_path / "run" / "eval_results.json").is_file()
    run_main("--demo", "--epochs", "1", "--output-dir", tmp_path / "plain")
    assert len(compiled) == 1  # without --compile: not called


def test_resume_from_a_corrupt_trainer_state_is_one_line(tmp_path, capsys):
    """--resume with a trainer_state.pt cut short or refused: "error: <file>: <what>", exit 2, no traceback,
    never torch's advice to load with weights_only=False."""
    out = tmp_path / "run"
    assert main(["--demo", "--epochs", "1", "--save-every", "3", "--output-dir", str(out)]) == 0
    state = out / "checkpoints" / "step-6" / "trainer_state.pt"
    for content, problem in ((state.read_bytes()[:100], "not a readable PyTorch checkpoint"),
                             (b"\x80\x02cos\nsystem\nq\x00.", "refused: not a plain tensor checkpoint")):
        state.write_bytes(content)
        capsys.readouterr()
        assert main(["--resume", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.splitlines()[-1].startswith(f"error: {state}: {problem}") and "Traceback" not in err
        assert "weights_only" not in err


# --- train.py --eval-only: a fine-tuned checkpoint scored, no training (issue 17) ---------------------------------

def tiny_checkpoint(directory, sample_path, head=True):
    """A small random BERT with (or without) a span head, and a vocabulary of the sample's words."""
    from minispan import BertConfig, BertForQuestionAnswering, read_squad, save_model
    from minispan.run import demo_tokenizer
    from minispan.weights import save_safetensors

    tokenizer = demo_tokenizer(read_squad(sample_path))
    torch.manual_seed(0)
    model = BertForQuestionAnswering(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                                num_attention_heads=2, intermediate_size=64))
    save_model(model, directory)
    if not head:  # a pretrained encoder, as SpanBERT's own release
        save_safetensors({k: v for k, v in model.state_dict().items() if not k.startswith("qa_outputs.")},
                         Path(directory) / "model.safetensors")
    tokenizer.save(directory)
    return Path(directory)


def test_eval_only_defaults_are_run_squads_and_it_takes_no_training_flags(tmp_path, sample_path, capsys):
    from minispan.train_cli import parse_args

    cfg = parse_args(["--model", "owner/checkpoint", "--eval-only"])
    assert cfg.eval_only and (cfg.max_seq_length, cfg.doc_stride, cfg.max_query_length) == (384, 128, 64)
    assert cfg.precision == "fp32" and cfg.output_dir == str(Path("runs") / "checkpoint")
    assert not parse_args(["--demo"]).eval_only and parse_args(["--demo"]).max_seq_length == 192
    for args, expect in [(["--lr", "1e-3", "--epochs", "2"], "trains nothing; remove --epochs; remove --lr"),
                         (["--resume", str(tmp_path)], "remove --resume"), (["--demo"], "remove --demo")]:
        assert main(["--model", str(tmp_path), "--eval-only", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --eval-only predicts") and expect in err and err.count("\n") == 1, err


def test_eval_only_scores_the_dev_file_and_writes_only_the_predictions(tmp_path, sample_path, capsys):
    model = tiny_checkpoint(tmp_path / "model", sample_path)
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    args = ["--model", model, "--eval-only", "--dev-file", sample_path, "--max-seq-length", "192",
            "--output-dir", model]
    run_main(*args)  # in the model's own folder: it writes the predictions beside it, and nothing else
    metrics = json.loads((model / "eval_results.json").read_text())
    assert list(metrics) == OFFICIAL_KEYS and metrics["total"] == 45
    assert {p.name: p.read_bytes() for p in model.iterdir() if p.name in before} == before
    assert sorted(set(p.name for p in model.iterdir()) - set(before)) == [
        "eval_results.json", "null_odds.json", "predictions.json", "span_predictions.json"]
    assert capsys.readouterr().out.endswith(f"wrote 4 files to {model}: predictions.json, null_odds.json, "
                                            "span_predictions.json, eval_results.json\n")
    assert main([*map(str, args)]) == 2  # its predictions are there now: replaced only with --overwrite
    assert "holds predictions: use --overwrite" in capsys.readouterr().err
    run_main(*args, "--overwrite")


def test_eval_only_refuses_a_checkpoint_without_a_span_head_in_one_line(tmp_path, sample_path):
    model = tiny_checkpoint(tmp_path / "encoder", sample_path, head=False)
    result = train_py("--model", model, "--eval-only", "--dev-file", sample_path, "--output-dir", tmp_path / "out",
                      check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: --model {model}: no span head: fine-tune it first")
    assert not (tmp_path / "out").exists()


def test_eval_only_matches_the_legacy_run_squad_evaluation(tmp_path, minilm_dir, dev_half_path):
    """The card's raw metrics came from run_squad's evaluation; `train.py --eval-only` on the same checkpoint
    (MiniLM with a span head fitted on 24 questions) and a slice of the shared dev half (the first 100
    questions; bench/eval_only_parity.py runs all 6,078) gives the same answers, the same metrics (every
    key of eval_results.json against squad_evaluate of the best spans with the null odds at threshold 0, the
    raw ones against squad_evaluate of the predictions, as the card reports them), the same null odds.
    Measured: all 100 answers and best spans equal, every metric equal, null odds within 2.0e-5. On the whole
    dev half (bench): 99.93% of answers equal (the other 4: legacy's whole-word fallback), metrics equal."""
    import importlib.util

    import pytest

    pytest.importorskip("transformers", reason="transformers 4.46's run_squad evaluation is the oracle")
    spec = importlib.util.spec_from_file_location("eval_only_parity", REPO / "bench" / "eval_only_parity.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.fit_head(minilm_dir, bench.dev_slice(dev_half_path, 24, tmp_path / "fit.json"), tmp_path / "model")
    dev = bench.dev_slice(dev_half_path, 100, tmp_path / "dev.json")
    r = bench.compare(tmp_path / "model", dev, tmp_path)
    assert r["ours"]["total"] == 100 and list(r["ours"]) == OFFICIAL_KEYS
    assert r["same"] >= 0.999 and r["gap"] <= 0.05 and r["odds"] < 1e-3, r
    # The best non-null spans too: any difference is one of legacy's known quirks (bench.legacy_quirks).
    assert bench.legacy_quirks(r["spans"]) == list(r["spans"]), r["spans"]


def test_the_default_output_dir_is_named_after_the_model(tmp_path, monkeypatch):
    """runs/ and the model's name; a folder with a name that says nothing (.../model) gets its parent's too."""
    (tmp_path / "minilm" / "model").mkdir(parents=True)
    (tmp_path / "minilm-v2").mkdir()
    (tmp_path / "linked").symlink_to(tmp_path / "minilm" / "model")  # named by the link, not its target
    monkeypatch.chdir(tmp_path)
    for model, out in (("minilm/model", "runs/minilm-model"), ("minilm-v2", "runs/minilm-v2"),
                       (".", f"runs/{tmp_path.name}"), ("linked", "runs/linked"),
                       ("owner/checkpoint", "runs/checkpoint")):  # a Hub id
        assert parse_args(["--model", model]).output_dir == str(Path(out)), model


def test_the_demo_runs_on_one_thread_unless_omp_num_threads_says(tmp_path, monkeypatch):
    """A tiny model: on a busy 2-core machine the demo took 272 s with torch's default threads, 12 s on one."""
    import minispan.train_cli

    seen, threads = [], torch.get_num_threads()
    monkeypatch.setattr(minispan.train_cli, "train", lambda cfg, run_dir: seen.append(torch.get_num_threads()))
    torch.set_num_threads(2)
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert main(["--demo", "--output-dir", str(tmp_path / "a")]) == 0
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's choice stands
        assert main(["--demo", "--output-dir", str(tmp_path / "b")]) == 0
        assert seen == [1, 2] and torch.get_num_threads() == 2  # and main() leaves the process as it was
    finally:
        torch.set_num_threads(threads)
