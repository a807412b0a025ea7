"""Hub checkpoints by name, through huggingface_hub, against a stand-in for the Hub on 127.0.0.1: the card's
call, only the files minispan reads, the cache (server gone, HF_HUB_OFFLINE), a pinned revision, the errors
in one line each, train.py --model <id> --eval-only, and SpanBERT's weights (the Hub, or the release tarball)."""
import functools
import hashlib
import http.server
import io
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest
import torch

import minispan
from minispan import BertConfig, BertForQuestionAnswering, save_model
from minispan.download import DownloadError, main as download_main
from minispan.hub import ensure_spanbert, hub_model
from minispan.tokenizer import load_tokenizer
from minispan.weights import load_model

REPO = Path(__file__).resolve().parents[1]


# --- the Hub on 127.0.0.1: what huggingface_hub 0.36's hf_hub_download asks for -----------------------------

class Hub:
    """repo id -> {commit: {file: bytes}}, and which commit each branch or tag names; plus who may see what."""

    def __init__(self):
        self.repos, self.refs = {}, {}
        self.gated, self.private = set(), {}  # private: repo id -> the token that opens it
        self.requests = []  # (method, repo id, revision, file)
        self.files = {}  # other paths this server answers (a release tarball)
        self.url = None

    def add(self, repo, files, ref="main"):
        """A new commit of `repo` holding `files`, which `ref` then names; returns its id."""
        commit = hashlib.sha1(f"{repo} {len(self.repos.get(repo, {}))}".encode()).hexdigest()
        self.repos.setdefault(repo, {})[commit] = dict(files)
        self.refs.setdefault(repo, {})[ref] = commit
        return commit


class HubHandler(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self):
        self.answer(body=False)

    def do_GET(self):
        self.answer(body=True)

    def answer(self, body):
        hub = self.server.hub
        if self.path in hub.files:
            return self.reply(200, {}, hub.files[self.path], body)
        match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", self.path)
        repo, revision, file = match.groups() if match else (None, None, None)
        hub.requests.append((self.command, repo, revision, file))
        token = self.headers.get("Authorization", "").removeprefix("Bearer ")
        commits = hub.repos.get(repo)
        commit = hub.refs.get(repo, {}).get(revision, revision if commits and revision in commits else None)
        if commits is None:  # as the Hub answers a request with a token: 404
            return self.reply(404, {"X-Error-Code": "RepoNotFound"})
        if repo in hub.private and token != hub.private[repo]:  # without the right token: 401, as for no repo
            return self.reply(401, {"X-Error-Code": "RepoNotFound"})
        if repo in hub.gated:
            return self.reply(403, {"X-Error-Code": "GatedRepo"})
        if commit is None:
            return self.reply(404, {"X-Error-Code": "RevisionNotFound"})
        data = commits[commit].get(file)
        if data is None:
            return self.reply(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit})
        etag = f'"{hashlib.sha256(data).hexdigest()}"'
        self.reply(200, {"X-Repo-Commit": commit, "ETag": etag}, data, body)

    def reply(self, status, headers, data=b"", body=False):
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def hub_server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HubHandler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def point_huggingface_hub_at(monkeypatch, url, cache=None, offline=False):
    """HF_ENDPOINT, HF_HUB_CACHE and HF_HUB_OFFLINE as huggingface_hub read them at import: its constants.
    And no retries: against a server that is gone, huggingface_hub waits 23 s before it looks in the cache."""
    from huggingface_hub import constants, file_download
    from huggingface_hub.utils import http_backoff, reset_sessions

    monkeypatch.setattr(file_download, "http_backoff", functools.partial(http_backoff, max_retries=0), raising=False)

    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(file_download, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    if cache is not None:
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    reset_sessions()  # its HTTP sessions are made for the offline mode of their time


@pytest.fixture
def hub(hub_server, tmp_path, monkeypatch):
    """An empty Hub, and huggingface_hub pointed at it with an empty cache in tmp_path/hf/hub, no token."""
    from huggingface_hub import constants
    from huggingface_hub.utils import reset_sessions

    hub_server.hub = Hub()
    hub_server.hub.url = f"http://127.0.0.1:{hub_server.server_address[1]}"
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    point_huggingface_hub_at(monkeypatch, hub_server.hub.url, cache=tmp_path / "hf" / "hub")
    yield hub_server.hub
    monkeypatch.undo()
    reset_sessions()


@pytest.fixture
def dead_url():
    """An address on 127.0.0.1 where nothing listens: the server stopped, or no network."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


# --- a checkpoint in the card's layout, made here -------------------------------------------------------------

WORDS = ["ann", "Ann", "met", "bob", "Bob", "in", "paris", "Paris", "who", "Who", "where", "Where", "did", "?", ".",
         ",", "the", "city", "of", "light"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
SPECIAL_TOKENS_MAP = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                      "mask_token": "[MASK]"}
CONTEXT = "Ann met Bob in Paris, the city of light. " * 5  # two windows at max_seq_len 64
QUESTIONS = ["Who did Ann meet?", "Where did Ann meet Bob?", "Who?"]


def card_files(folder, tokenizer_config="cased", seed=0, safetensors=False):
    """The files of a fine-tuned BERT-family checkpoint as the card's repo holds them: pytorch_model.bin with
    `bert.`-prefixed keys and the span head (or model.safetensors), a BertForQuestionAnswering config.json,
    vocab.txt, special_tokens_map.json, and tokenizer_config.json lower-casing, cased, or absent (None)."""
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    model = BertForQuestionAnswering(config)
    with torch.no_grad():
        model.qa_outputs.weight.normal_(0, 1.0)  # spread-out scores: their order is the model's, not rounding's
    save_model(model, folder)  # config.json as transformers writes it, and model.safetensors
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)  # keys bert.embeddings..., bert.encoder.layer.N..., qa_outputs.*
    files = {"config.json": (folder / "config.json").read_bytes(),
             "vocab.txt": "".join(t + "\n" for t in VOCAB).encode(),
             "special_tokens_map.json": json.dumps(SPECIAL_TOKENS_MAP).encode(),
             # What minispan must never fetch: other frameworks' weights, and the rest of the repo.
             "tf_model.h5": b"tf", "flax_model.msgpack": b"flax", "onnx/model.onnx": b"onnx", "README.md": b"card"}
    if safetensors:
        files["model.safetensors"] = (folder / "model.safetensors").read_bytes()
    files["pytorch_model.bin"] = buffer.getvalue()
    if tokenizer_config is not None:
        files["tokenizer_config.json"] = json.dumps({"do_lower_case": tokenizer_config == "lower",
                                                     "model_max_length": 64}).encode()
    return files


def fetched(hub, repo, method="GET"):
    """The files of `repo` asked for with `method` (HEAD: looked up; GET: downloaded), in order."""
    return list(dict.fromkeys(file for m, r, _, file in hub.requests if r == repo and m == method))


# What minispan looks up in a repo, in order: one weights file, the first of these two that the repo has.
LOOKED_UP = ["config.json", "model.safetensors", "pytorch_model.bin", "vocab.txt", "tokenizer_config.json",
             "special_tokens_map.json"]


# --- the card's call ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tokenizer_config", ["lower", "cased", None])
def test_the_cards_call_by_name_answers_as_transformers_does(hub, tmp_path, tokenizer_config, caplog):
    """pipeline("question-answering", model=ID, tokenizer=ID) fetches only what minispan reads (config, ONE
    weights file, vocabulary and tokenizer files; never the TF, Flax or ONNX weights) into the Hugging Face
    cache, and answers as transformers 4.46's pipeline does on the same files, for each tokenizer_config.json
    variant (its absence included: lower-cased, with a warning, as transformers reads it). Before this change
    the id was taken for a missing folder: 'no vocabulary (expected a directory with vocab.txt ...)'."""
    transformers = pytest.importorskip("transformers", reason="transformers 4.46 is the test oracle")
    hub.add("card/bert-qa", card_files(tmp_path, tokenizer_config))
    with caplog.at_level("WARNING", logger="minispan"):
        ours = minispan.pipeline("question-answering", model="card/bert-qa", tokenizer="card/bert-qa")
    assert fetched(hub, "card/bert-qa", "HEAD") == LOOKED_UP
    commit = hub.refs["card/bert-qa"]["main"]  # config.json's commit: every other file is asked for at it
    assert {revision for _, _, revision, file in hub.requests if file != "config.json"} == {commit}
    assert fetched(hub, "card/bert-qa") == [f for f in LOOKED_UP if f in hub.repos["card/bert-qa"][
        hub.refs["card/bert-qa"]["main"]]]  # the repo has no model.safetensors: pytorch_model.bin
    assert ("a cased vocabulary, read lower-cased" in caplog.text) == (tokenizer_config != "cased")
    folder = hub_model("card/bert-qa")  # the snapshot folder, in the cache
    assert folder.is_relative_to(tmp_path / "hf" / "hub") and ours.tokenizer.lowercase == (tokenizer_config != "cased")
    theirs = transformers.pipeline("question-answering", model=str(folder), tokenizer=str(folder))
    for question in QUESTIONS:
        for options in [{}, {"top_k": 5, "handle_impossible_answer": True}, {"doc_stride": 16, "top_k": 3}]:
            expected, got = theirs(question=question, context=CONTEXT, **options), ours(question=question,
                                                                                         context=CONTEXT, **options)
            expected, got = (x if isinstance(x, list) else [x] for x in (expected, got))
            assert [(a["answer"], a["start"], a["end"]) for a in got] == \
                [(a["answer"], a["start"], a["end"]) for a in expected]
            assert [a["score"] for a in got] == pytest.approx([a["score"] for a in expected], rel=1e-4)


def test_safetensors_when_the_repo_has_them_and_no_other_weights(hub, tmp_path):
    hub.add("card/both", card_files(tmp_path, safetensors=True))
    folder = hub_model("card/both")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "special_tokens_map.json",
                                                         "tokenizer_config.json", "vocab.txt"]
    assert fetched(hub, "card/both") == ["config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json",
                                         "special_tokens_map.json"]  # not pytorch_model.bin as well


def test_a_tokenizer_from_another_repo(hub, tmp_path):
    """tokenizer= names its own repo (or folder): from there only the vocabulary and tokenizer files are fetched."""
    files = card_files(tmp_path, tokenizer_config="cased")
    hub.add("card/bert-qa", files)
    hub.add("card/lower-tokenizer", {"vocab.txt": files["vocab.txt"],
                                     "tokenizer_config.json": b'{"do_lower_case": true}'})
    qa = minispan.pipeline("question-answering", model="card/bert-qa", tokenizer="card/lower-tokenizer")
    assert qa.tokenizer.lowercase and not minispan.pipeline("card/bert-qa").tokenizer.lowercase
    assert fetched(hub, "card/lower-tokenizer", "HEAD") == ["vocab.txt", "tokenizer_config.json",
                                                            "special_tokens_map.json"]


def test_the_cache_serves_without_the_hub_and_offline(hub, tmp_path, monkeypatch, dead_url):
    """Once fetched, a model is found in the cache with the server gone (huggingface_hub falls back to it) and
    with HF_HUB_OFFLINE=1 (no request at all), in this process and in `python -m minispan.answer --model ID`
    run with the environment variables alone (HF_HOME, HF_ENDPOINT, HF_HUB_OFFLINE)."""
    hub.add("card/bert-qa", card_files(tmp_path))
    online = minispan.pipeline("card/bert-qa")(question="Who did Ann meet?", context=CONTEXT, top_k=3)
    point_huggingface_hub_at(monkeypatch, dead_url)  # the server stopped
    assert minispan.pipeline("card/bert-qa")(question="Who did Ann meet?", context=CONTEXT, top_k=3) == online
    point_huggingface_hub_at(monkeypatch, hub.url, offline=True)
    count = len(hub.requests)
    assert minispan.pipeline("card/bert-qa")(question="Who did Ann meet?", context=CONTEXT, top_k=3) == online
    assert len(hub.requests) == count

    env = {name: value for name, value in os.environ.items() if not name.startswith(("HF_", "HUGGING"))}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=dead_url, HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "minispan.answer", "--model", "card/bert-qa", "--question", "Who did Ann meet?",
               "--context", CONTEXT, "--top-k", "3"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == online
    result = subprocess.run(command[:4] + ["card/never-fetched"] + command[5:], capture_output=True, text=True,
                            env=env, cwd=REPO, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr == (f"error: card/never-fetched: not in the Hugging Face cache ({tmp_path / 'hf' / 'hub'}) "
                             "and HF_HUB_OFFLINE is set: fetch it once online, or point HF_HOME / HF_HUB_CACHE at a "
                             "cache that has it\n")


def test_a_pinned_revision(hub, tmp_path):
    """revision= pins a commit: the old weights after the repo moved on, from the cache with no download when
    the commit is there (only a look-up of the weights file it lacks); a branch or tag name works too."""
    old = hub.add("card/bert-qa", card_files(tmp_path, seed=0), ref="v1")
    new = hub.add("card/bert-qa", card_files(tmp_path, seed=1))
    ask = dict(question="Who did Ann meet?", context=CONTEXT, top_k=3)
    pinned = minispan.pipeline("card/bert-qa", revision=old)(**ask)
    assert minispan.pipeline("card/bert-qa", revision="v1")(**ask) == pinned
    assert minispan.pipeline("card/bert-qa")(**ask) != pinned  # main: the new commit
    assert hub_model("card/bert-qa").name == new and hub_model("card/bert-qa", revision=old).name == old
    count = len(hub.requests)
    assert minispan.pipeline("card/bert-qa", revision=old)(**ask) == pinned
    assert hub.requests[count:] == [("HEAD", "card/bert-qa", old, "model.safetensors")]


def test_hub_errors_are_one_line_each(hub, tmp_path, monkeypatch, dead_url):
    files = card_files(tmp_path)
    hub.add("card/gated", files)
    hub.gated.add("card/gated")
    hub.add("card/private", files)
    hub.private["card/private"] = "hf_secret"
    hub.add("card/tf-only", {name: data for name, data in files.items() if name not in
                             ("pytorch_model.bin", "model.safetensors")})
    hub.add("card/no-vocab", {name: data for name, data in files.items() if name != "vocab.txt"})
    cache = tmp_path / "hf" / "hub"
    for model, kwargs, message in [
        ("card/missing", {}, f"card/missing: no such model on the Hugging Face Hub ({hub.url}/card/missing: HTTP 404)"),
        ("card/gated", {}, "card/gated: the Hub refused access (HTTP 403: a gated or private model, or none by that "
                           f"name): accept its conditions at {hub.url}/card/gated and set HF_TOKEN to an access "
                           "token of that account"),
        ("card/private", {}, "card/private: the Hub refused access (HTTP 401"),
        ("card/private", {"token": "hf_wrong"}, "card/private: the Hub refused access (HTTP 401"),
        ("card/tf-only", {}, "card/tf-only: no model.safetensors or pytorch_model.bin in the Hub repo: minispan "
                             "reads no other weights (TF, Flax, ONNX)"),
        ("card/no-vocab", {}, "card/no-vocab: no vocab.txt in the Hub repo"),
        ("card/gated", {"revision": "v9"}, "card/gated: the Hub refused access (HTTP 403"),
        ("card/no-vocab", {"revision": "v9"}, "card/no-vocab: no revision 'v9' on the Hub"),
        ("not/../a-model", {}, "not/../a-model: not a directory, and not a Hugging Face Hub model id (owner/name)"),
    ]:
        with pytest.raises((DownloadError, ValueError)) as error:
            minispan.pipeline("question-answering", model=model, tokenizer=model, **kwargs)
        assert str(error.value).startswith(message) and "\n" not in str(error.value), str(error.value)
    assert not any(f in ("tf_model.h5", "flax_model.msgpack", "onnx/model.onnx") for _, _, _, f in hub.requests)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")  # the token opens the private repo
    assert minispan.pipeline("card/private")(question="Who?", context=CONTEXT)["answer"]
    point_huggingface_hub_at(monkeypatch, dead_url)  # no network, nothing cached
    with pytest.raises(DownloadError) as error:
        minispan.pipeline("card/gated")
    assert str(error.value) == (f"card/gated: not in the Hugging Face cache ({cache}) and {dead_url} cannot be "
                                "reached: fetch it once online, or point HF_HOME / HF_HUB_CACHE at a cache that has it")


def test_train_py_eval_only_with_a_hub_id(hub, tmp_path, sample_path, capsys):
    """train.py --model <hub id> --eval-only: the card's command, on the card's layout, with a tiny model."""
    from minispan.train_cli import main

    hub.add("card/bert-qa", card_files(tmp_path))
    out = tmp_path / "eval"
    assert main(["--model", "card/bert-qa", "--eval-only", "--dev-file", str(sample_path), "--limit", "6",
                 "--max-seq-length", "64", "--doc-stride", "16", "--max-query-length", "16", "--output-dir",
                 str(out)]) == 0, capsys.readouterr().err
    metrics = json.loads((out / "eval_results.json").read_text())
    assert metrics["total"] == 6 and len(json.loads((out / "predictions.json").read_text())) == 6
    assert sorted(p.name for p in out.iterdir()) == ["eval_results.json", "null_odds.json", "predictions.json",
                                                     "span_predictions.json"]


# --- SpanBERT's pretrained weights: the Hub (huggingface_hub), or the release tarball -----------------------------

SPANBERT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "Paris", "is", "in", "France", "."]
TINY = dict(vocab_size=len(SPANBERT_VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=37, max_position_embeddings=64)


def spanbert_like_files():
    """config.json, pytorch_model.bin and vocab.txt shaped like SpanBERT's 2019 release: legacy
    (non-zip) torch.save, `bert.` keys with LayerNorm gamma/beta, pretraining heads under cls.*."""
    torch.manual_seed(0)
    encoder = {k: v for k, v in BertForQuestionAnswering(BertConfig(**TINY)).state_dict().items()
               if not k.startswith("qa_outputs.")}
    checkpoint = {re.sub(r"LayerNorm\.weight$", "LayerNorm.gamma", re.sub(r"LayerNorm\.bias$", "LayerNorm.beta", k)): v
                  for k, v in encoder.items()}
    checkpoint["cls.predictions.bias"] = torch.zeros(len(SPANBERT_VOCAB))
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer, _use_new_zipfile_serialization=False)
    config = json.dumps({**TINY, "hidden_act": "gelu", "type_vocab_size": 2}).encode()
    return {"config.json": config, "pytorch_model.bin": buffer.getvalue(),
            "vocab.txt": "\n".join(SPANBERT_VOCAB).encode() + b"\n"}, encoder


def serve_spanbert(hub, files, name="spanbert-base-cased", vocab_repo="google-bert/bert-base-cased"):
    hub.add(f"SpanBERT/{name}", {file: files[file] for file in ("config.json", "pytorch_model.bin")})
    hub.add(vocab_repo, {"vocab.txt": files["vocab.txt"]})


def files_under(path):
    return sorted(str(p.relative_to(path)) for p in Path(path).rglob("*"))


def assert_model_dir(directory, files, encoder):
    assert files_under(directory) == ["config.json", "pytorch_model.bin", "tokenizer_config.json", "vocab.txt"]
    assert json.loads((directory / "tokenizer_config.json").read_text()) == {"do_lower_case": False}
    assert (directory / "vocab.txt").read_bytes() == files["vocab.txt"]
    # Cased: lower-casing would turn "Paris" into "paris", which is not in the vocabulary.
    assert load_tokenizer(directory).tokenize("Paris is in France.") == ["Paris", "is", "in", "France", "."]
    state = load_model(directory).state_dict()
    assert all(torch.equal(state[k], v) for k, v in encoder.items())  # the very weights, not a fresh init


def test_ensure_spanbert_from_the_hub(hub, tmp_path):
    files, encoder = spanbert_like_files()
    serve_spanbert(hub, files)
    target = ensure_spanbert("spanbert-base-cased", tmp_path / "models", progress=False)
    assert target == tmp_path / "models" / "spanbert-base-cased"
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["spanbert-base-cased"]  # no staging left
    assert_model_dir(target, files, encoder)
    # Fetched into the Hugging Face cache (and only what minispan reads), linked from models/: one copy on disk.
    assert fetched(hub, "SpanBERT/spanbert-base-cased") == ["config.json", "pytorch_model.bin"]
    blobs = list((tmp_path / "hf" / "hub").rglob("blobs/*"))
    assert any(os.path.samefile(blob, target / "pytorch_model.bin") for blob in blobs)
    count = len(hub.requests)
    assert ensure_spanbert("spanbert-base-cased", tmp_path / "models") == target
    assert len(hub.requests) == count  # already there: no request


@pytest.mark.parametrize("folder", ["", "spanbert_hf/"])
def test_ensure_spanbert_falls_back_to_the_release_tarball(hub, tmp_path, folder):
    files, encoder = spanbert_like_files()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in ("config.json", "pytorch_model.bin"):
            info = tarfile.TarInfo(folder + name)
            info.size = len(files[name])
            tar.addfile(info, io.BytesIO(files[name]))
    hub.files["/fairseq/models/spanbert_hf.tar.gz"] = buffer.getvalue()
    # The Hub has the vocabulary but not SpanBERT's repo (404): the original release is used instead.
    hub.add("google-bert/bert-large-cased", {"vocab.txt": files["vocab.txt"]})
    target = ensure_spanbert("spanbert-large-cased", tmp_path / "models", tarball_url=hub.url + "/fairseq/models/",
                             progress=False)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["spanbert-large-cased"]
    assert_model_dir(target, files, encoder)


def test_ensure_spanbert_refuses_files_that_do_not_fit(hub, tmp_path):
    files, _ = spanbert_like_files()
    serve_spanbert(hub, {**files, "vocab.txt": files["vocab.txt"] + b"extra\n"})
    with pytest.raises(DownloadError, match=r"vocab\.txt: 11 tokens, expected the config's vocab_size 10"):
        ensure_spanbert("spanbert-base-cased", tmp_path, progress=False)
    assert not (tmp_path / "spanbert-base-cased").exists()

    config = json.dumps({**TINY, "num_hidden_layers": 3}).encode()  # the checkpoint has 2 layers
    serve_spanbert(hub, {**files, "config.json": config})
    with pytest.raises(DownloadError, match=r"holds 2 encoder layers but config\.json says num_hidden_layers=3"):
        ensure_spanbert("spanbert-base-cased", tmp_path / "other", progress=False)
    assert not (tmp_path / "other" / "spanbert-base-cased").exists()

    serve_spanbert(hub, {**files, "vocab.txt": files["vocab.txt"] + "caf\xe9\n".encode("latin-1")})
    with pytest.raises(DownloadError, match=r"vocab\.txt: not UTF-8 text"):
        ensure_spanbert("spanbert-base-cased", tmp_path / "third", progress=False)


def test_ensure_spanbert_offline_says_what_to_fetch_and_where(hub, tmp_path, monkeypatch, dead_url):
    point_huggingface_hub_at(monkeypatch, dead_url)
    with pytest.raises(DownloadError) as error:
        ensure_spanbert("spanbert-base-cased", tmp_path, tarball_url=dead_url, progress=False)
    message = str(error.value)
    assert "\n" not in message and message.startswith("cannot get spanbert-base-cased: SpanBERT/spanbert-base-cased: "
                                                      "not in the Hugging Face cache")
    assert "Put config.json and pytorch_model.bin of SpanBERT/spanbert-base-cased" in message  # from where ...
    assert f"{dead_url}/spanbert_hf_base.tar.gz" in message and "vocab.txt of google-bert/bert-base-cased" in message
    assert f"in {tmp_path / 'spanbert-base-cased'}/" in message  # ... and where to put it
    assert files_under(tmp_path) == ["hf", "hf/hub"] or files_under(tmp_path) == []
    with pytest.raises(DownloadError):  # the models/ folder it would have made is not left behind, empty
        ensure_spanbert("spanbert-base-cased", tmp_path / "models", tarball_url=dead_url, progress=False)
    assert not (tmp_path / "models").exists()
    with pytest.raises(ValueError, match="unknown model 'spanbert-huge'"):
        ensure_spanbert("spanbert-huge", tmp_path)


def test_model_dir_filled_by_hand_is_used_as_it_is(tmp_path):
    files, _ = spanbert_like_files()
    target = tmp_path / "spanbert-base-cased"
    target.mkdir()
    for name in ("config.json", "pytorch_model.bin"):
        (target / name).write_bytes(files[name])
    with pytest.raises(DownloadError, match="exists but lacks vocab.txt: complete it or delete it"):
        ensure_spanbert("spanbert-base-cased", tmp_path)
    (target / "vocab.txt").write_bytes(files["vocab.txt"])
    assert ensure_spanbert("spanbert-base-cased", tmp_path) == target
    assert json.loads((target / "tokenizer_config.json").read_text()) == {"do_lower_case": False}


def test_download_cli_fetches_spanbert_from_the_hub(hub, tmp_path, capsys):
    files, encoder = spanbert_like_files()
    serve_spanbert(hub, files)
    assert download_main(["spanbert-base-cased", "--dest", str(tmp_path / "models")]) == 0
    assert capsys.readouterr().out == f"{tmp_path / 'models' / 'spanbert-base-cased'}\n"
    assert_model_dir(tmp_path / "models" / "spanbert-base-cased", files, encoder)
