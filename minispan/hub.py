"""Models from the Hugging Face Hub through `huggingface_hub`, with its cache and HF_* settings (README.md): hub_model
gives an id's snapshot folder in the cache, ensure_spanbert models/NAME/ with BERT's cased vocab.txt. Only what
minispan reads is fetched: config.json, ONE weights file (never TF, Flax or ONNX weights) and the tokenizer's files.
"""
import os
import re
import shutil
from pathlib import Path

from huggingface_hub import constants, hf_hub_download
from huggingface_hub.utils import (EntryNotFoundError, GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                   RepositoryNotFoundError, RevisionNotFoundError)

from minispan.archive import extract_tarball
from minispan.download import DownloadError, download, env_url, new_folders
from minispan.files import write_json

SPANBERT_URL = "https://dl.fbaipublicfiles.com/fairseq/models/"  # MINISPAN_SPANBERT_URL: the release tarballs
# name -> (Hub repo, original release tarball, Hub repo of the vocabulary it was pretrained with).
# The vocabularies are the ones SpanBERT's own code maps these names to (28,996 entries).
SPANBERT = {
    "spanbert-base-cased": ("SpanBERT/spanbert-base-cased", "spanbert_hf_base.tar.gz", "google-bert/bert-base-cased"),
    "spanbert-large-cased": ("SpanBERT/spanbert-large-cased", "spanbert_hf.tar.gz", "google-bert/bert-large-cased"),
}
WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")  # the first the repo has
TOKENIZER_FILES = ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json")  # the last two optional


def is_hub_id(name):
    """owner/name, as the Hub names a model (ids without an owner are the Hub's legacy aliases: not taken)."""
    return re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", str(name)) is not None and ".." not in str(name)


def resolve_model(name, revision=None, token=None, *, weights=True):
    if Path(name).is_dir():
        return Path(name)
    if not is_hub_id(name):
        raise ValueError(f"{name}: not a directory, and not a Hugging Face Hub model id (owner/name)")
    return hub_model(name, revision, token, weights=weights)


def hub_model(repo_id, revision=None, token=None, *, weights=True):
    """`repo_id`'s snapshot folder in the Hugging Face cache, with what minispan reads (weights=False: a tokenizer)."""
    folder = None
    for names in ([("config.json",), WEIGHTS_FILES] if weights else []) + [(name,) for name in TOKENIZER_FILES]:
        path = hub_file(repo_id, names, revision, token, required=names[0] not in TOKENIZER_FILES[1:])
        if folder is None:  # the first file says which commit `revision` is now: the others come from it
            folder, revision = path.parent, path.parent.name
    return folder


def hub_file(repo_id, names, revision=None, token=None, required=True):
    """The cached path of the first of `names` the repo has (fetched if missing; None if none and not required)."""
    for name in names:
        try:
            return Path(hf_hub_download(repo_id, name, revision=revision, token=token))
        except LocalEntryNotFoundError as e:  # not cached, and offline or the Hub unreachable (or refusing)
            if required and name == names[-1]:
                raise DownloadError(hub_error(e.__cause__ or e, repo_id, revision)) from None
        except EntryNotFoundError:  # the repo has no such file
            continue
        except HfHubHTTPError as e:  # no such repo or revision; refused
            raise DownloadError(hub_error(e, repo_id, revision)) from None
    if required:
        raise DownloadError(f"{repo_id}: no {' or '.join(names)} in the Hub repo" + (": minispan reads no other "
                            "weights (TF, Flax, ONNX)" if names == WEIGHTS_FILES else ""))


def hub_error(e, repo_id, revision):
    """huggingface_hub's exception -> one line saying what to do."""
    status = getattr(getattr(e, "response", None), "status_code", None)
    page = f"{constants.ENDPOINT}/{repo_id}"
    if isinstance(e, GatedRepoError) or status in (401, 403):
        return (f"{repo_id}: the Hub refused access (HTTP {status}: a gated or private model, or none by that "
                f"name): accept its conditions at {page} and set HF_TOKEN to an access token of that account")
    if isinstance(e, RepositoryNotFoundError):
        return f"{repo_id}: no such model on the Hugging Face Hub ({page}: HTTP {status})"
    if isinstance(e, RevisionNotFoundError):
        return f"{repo_id}: no revision {revision!r} on the Hub"
    offline = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else \
        f"{constants.ENDPOINT} cannot be reached" + (f" (HTTP {status})" if status else "")
    return (f"{repo_id}: not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {offline}: fetch it once "
            "online, or point HF_HOME / HF_HUB_CACHE at a cache that has it")


def ensure_spanbert(name, cache_dir="models", *, tarball_url=None, progress=True, deadline=None):
    """`cache_dir`/`name`: SpanBERT's config.json and weights (the Hub's, else the release tarball's), BERT's cased
    vocab.txt; gathered and checked in `cache_dir`/.`name`.download/, then renamed. For one process at a time."""
    from minispan.tokenizer import load_tokenizer  # and torch: not needed to download SQuAD (download.main)
    from minispan.weights import load_model

    if name not in SPANBERT:
        raise ValueError(f"unknown model {name!r}: expected one of {', '.join(SPANBERT)} or a directory")
    repo, tarball, vocab_repo = SPANBERT[name]
    target, staging = Path(cache_dir) / name, Path(cache_dir) / f".{name}.download"
    if target.exists():
        return _existing(target)
    release = env_url(tarball_url, "MINISPAN_SPANBERT_URL", SPANBERT_URL) + tarball
    try:
        with new_folders(staging):  # nothing arrived: no trace left
            try:
                _link(config := hub_file(repo, ("config.json",)), staging)
                _link(hub_file(repo, WEIGHTS_FILES, revision=config.parent.name), staging)  # the same commit's
            except DownloadError as e:  # the original release instead
                try:
                    _weights_from_tarball(release, staging, progress, deadline)
                except DownloadError as again:
                    raise DownloadError(f"{e}; {again}") from None
            _link(hub_file(vocab_repo, ("vocab.txt",)), staging)
    except DownloadError as e:
        raise DownloadError(f"cannot get {name}: {e}. Offline? Put config.json and pytorch_model.bin of "
                            f"{repo} (or from {release}) and vocab.txt of {vocab_repo} in {target}/") from None
    try:  # read as training will read it, before the folder takes its name
        vocab_size, model = load_tokenizer(staging, lowercase=False).vocab_size, load_model(staging)
        if vocab_size != model.config.vocab_size:
            raise ValueError(f"{staging / 'vocab.txt'}: {vocab_size:,} tokens, expected the config's vocab_size "
                             f"{model.config.vocab_size:,}")
    except (ValueError, OSError) as e:  # ConfigError, WeightsError; a vocabulary that is not UTF-8
        raise DownloadError(f"{e} (delete {staging} to fetch it again)") from None
    os.replace(staging, target)
    return _existing(target)  # which also writes tokenizer_config.json


def _link(cached, folder):
    """A file of the Hub cache into `folder`: a hard link to the cached bytes (a copy across file systems)."""
    if not (folder / cached.name).exists():  # from an earlier, interrupted call
        try:
            os.link(os.path.realpath(cached), folder / cached.name)
        except OSError:
            shutil.copyfile(cached, folder / cached.name)


def _existing(target):
    """A model directory from an earlier run, or one filled by hand after the offline message."""
    missing = [f for f in ("config.json", "vocab.txt") if not (target / f).exists()]
    if not any((target / f).exists() for f in WEIGHTS_FILES):
        missing.append(" or ".join(WEIGHTS_FILES))
    if missing:
        raise DownloadError(f"{target} exists but lacks {', '.join(missing)}: complete it or delete it")
    if not (target / "tokenizer_config.json").exists():
        write_json(target / "tokenizer_config.json", {"do_lower_case": False})  # SpanBERT is cased
    return target


def _weights_from_tarball(url, staging, progress, deadline):
    """The original release: a .tar.gz holding config.json and pytorch_model.bin (no vocabulary)."""
    archive = staging / url.rsplit("/", 1)[-1]
    download(url, archive, progress=progress, deadline=deadline)
    extracted = staging / "extracted"
    shutil.rmtree(extracted, ignore_errors=True)
    extract_tarball(archive, extracted)
    for file in ("config.json", "pytorch_model.bin"):
        found = sorted(extracted.rglob(file))  # at the top or inside one folder, depending on release
        if len(found) != 1:
            raise DownloadError(f"{archive}: expected one {file}, found {len(found)}")
        os.replace(found[0], staging / file)
    shutil.rmtree(extracted)
    archive.unlink()
