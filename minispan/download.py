"""Downloads: the official SQuAD 2.0 files and SpanBERT's pretrained weights.

What a fresh machine needs before training, and where it goes:

    data/train-v2.0.json, data/dev-v2.0.json    the SQuAD explorer site's files
    models/spanbert-base-cased/                 config.json + pytorch_model.bin (SpanBERT's release),
                                                vocab.txt (BERT's cased vocabulary: SpanBERT ships
                                                none, it was pretrained with BERT's), and
                                                tokenizer_config.json saying do_lower_case false

SpanBERT's weights come from the Hugging Face hub, or, when that fails, from the original
release tarball on dl.fbaipublicfiles.com.

Every file is fetched to NAME.part and renamed once complete, so an interrupted download is
resumed with an HTTP Range request instead of restarted, and a half file is never taken for a
whole one. A file over 4 GiB, larger than any of these, is refused. Nothing is used before it is
validated. Offline, the error says what to fetch from where and where to put it.

    python -m minispan.download squad|spanbert-base-cased|spanbert-large-cased [--dest DIR]
"""
import argparse
import contextlib
import http.client
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from minispan.files import read_json, write_json

# Base URLs; the environment variables (or the functions' url arguments) point them elsewhere,
# e.g. at a mirror, or at the local server the tests run.
SQUAD_URL = "https://rajpurkar.github.io/SQuAD-explorer/dataset/"  # MINISPAN_SQUAD_URL
HUB_URL = "https://huggingface.co/"  # MINISPAN_HUB_URL: {HUB_URL}{repo}/resolve/main/{file}
SPANBERT_URL = "https://dl.fbaipublicfiles.com/fairseq/models/"  # MINISPAN_SPANBERT_URL

# Questions in the official files: a file with another count is not the one the numbers are for.
SQUAD_QUESTIONS = {"train": 130_319, "dev": 11_873}

# name -> (hub repo, original release tarball, hub repo of the vocabulary it was pretrained with).
# The vocabularies are the ones SpanBERT's own code maps these names to (28,996 entries).
SPANBERT = {
    "spanbert-base-cased": ("SpanBERT/spanbert-base-cased", "spanbert_hf_base.tar.gz",
                            "google-bert/bert-base-cased"),
    "spanbert-large-cased": ("SpanBERT/spanbert-large-cased", "spanbert_hf.tar.gz",
                             "google-bert/bert-large-cased"),
}
WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")
CHUNK = 1 << 20
MAX_BYTES = 4 << 30  # per file: SpanBERT-large's tarball is 1.2 GB; a server sending more is not sending it
USER_AGENT = "minispan-download"


class DownloadError(RuntimeError):
    """A download or a downloaded file's validation failed; the message says what to do."""


class _Interrupted(Exception):
    """The transfer stopped midway; what arrived is kept in the .part file."""


def _base_url(given, env_var, default):
    url = given or os.environ.get(env_var) or default
    return url if url.endswith("/") else url + "/"


# --- one file over HTTP, resumable ------------------------------------------------------------

def download(url, dest, attempts=3, timeout=60, progress=True, max_bytes=MAX_BYTES):
    """Fetch `url` into `dest` through `dest`.part; an interrupted transfer resumes where it stopped.

    Connection refused, unknown host or an HTTP error status fail at once (retrying won't help);
    a transfer cut midway is resumed up to `attempts` times, then the .part file is kept for the
    next call. A file over `max_bytes` is refused and removed, so a wrong server cannot fill the disk.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    if part.is_symlink() or (part.exists() and not part.is_file()):  # appending would write elsewhere
        raise DownloadError(f"{part}: not a regular file (a link?); delete it to download {url}")
    with _new_folders(dest.parent):
        for attempt in range(1, attempts + 1):
            try:
                _fetch(url, part, timeout, progress, max_bytes)
                break
            except _Interrupted as e:
                if attempt == attempts:
                    kept = part.stat().st_size if part.exists() else 0
                    raise DownloadError(f"download of {url} interrupted ({e}); the {kept:,} bytes so far "
                                        f"are kept in {part}: run again to resume") from None
    os.replace(part, dest)
    return dest


@contextlib.contextmanager
def _new_folders(folder):
    """mkdir -p folder; if the block fails, remove the folders this made that are still empty, so a failed
    download leaves no trace (a kept .part file keeps its folder)."""
    created = [f for f in (folder, *folder.parents) if not f.exists()]  # innermost first
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for f in created:
            with contextlib.suppress(OSError):  # not empty
                f.rmdir()
        raise


class _HttpRedirectsOnly(urllib.request.HTTPRedirectHandler):
    """urllib also follows redirects to ftp://; a download here only ever goes to http(s)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlsplit(newurl).scheme not in ("http", "https"):
            raise urllib.error.HTTPError(newurl, code, f"{msg}, to a non-HTTP address: refused", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpRedirectsOnly)


def _fetch(url, part, timeout, progress, max_bytes):
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = _OPENER.open(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # the .part is as long as the file or longer: start afresh
            part.unlink()
            return _fetch(url, part, timeout, progress, max_bytes)
        raise DownloadError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:  # offline, refused, ...
        raise DownloadError(f"cannot download {url}: {getattr(e, 'reason', e)}") from None

    with response:
        if response.status == 206:  # a part of the file (even unasked): the whole file's size is in Content-Range
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != offset:  # not the bytes we asked for: start over on the next attempt
                part.unlink(missing_ok=True)
                raise _Interrupted(f"asked for bytes from {offset}, got Content-Range "
                                   f"{response.headers.get('Content-Range')!r}")
            if total is None:  # "bytes 0-99/*": no way to tell when the file is whole
                part.unlink(missing_ok=True)
                raise DownloadError(f"cannot download {url}: a partial reply without the file's size "
                                    f"(Content-Range {response.headers.get('Content-Range')!r})")
            mode = "ab"
        else:  # 200: a server that ignores Range sends the whole file, so start over
            offset, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        announced = max(offset, total or 0)
        if announced > max_bytes:
            part.unlink(missing_ok=True)
            raise DownloadError(f"cannot download {url}: {announced:,} bytes, more than the "
                                f"{max_bytes:,} any file here needs")
        with open(part, mode) as f, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                         unit_divisor=1024, desc=part.name[:-len(".part")],
                                         disable=not progress) as bar:
            try:
                while True:
                    try:
                        chunk = response.read(CHUNK)
                    except (OSError, http.client.HTTPException) as e:  # reset, timeout, bad chunking
                        raise _Interrupted(str(e) or type(e).__name__) from None
                    if not chunk:
                        break
                    offset += len(chunk)
                    if offset > max_bytes:  # no size was announced
                        f.close()
                        part.unlink()
                        raise DownloadError(f"cannot download {url}: more than the {max_bytes:,} bytes "
                                            "any file here needs")
                    f.write(chunk)  # an OSError here (a full disk) is not the network's: no retry
                    bar.update(len(chunk))
            finally:
                if not f.closed:
                    f.flush()
                    os.fsync(f.fileno())
    # urllib returns a short body without complaint when the server hangs up early.
    size = part.stat().st_size
    if total is not None and size != total:
        raise _Interrupted(f"got {size:,} of {total:,} bytes")


def _content_range(value):
    """'bytes 100-199/200' -> (100, 200); the total is None for '*'; (None, None) if unreadable."""
    try:
        unit, spec = value.split(" ", 1)
        first_last, total = spec.split("/")
        if unit != "bytes":
            return None, None
        return int(first_last.split("-")[0]), None if total == "*" else int(total)
    except (AttributeError, ValueError):
        return None, None


# --- SQuAD 2.0 ---------------------------------------------------------------------------------

def ensure_squad(split, data_dir="data", *, base_url=None, expected_questions=None, progress=True):
    """Path of the official SQuAD 2.0 `split` ("train" or "dev") in `data_dir`, downloaded if missing."""
    if split not in SQUAD_QUESTIONS:
        raise ValueError(f"unknown SQuAD split {split!r}: expected 'train' or 'dev'")
    expected = SQUAD_QUESTIONS[split] if expected_questions is None else expected_questions
    path = Path(data_dir) / f"{split}-v2.0.json"
    if path.exists():  # put there by an earlier run or by hand: it still has to be the official file
        _check_squad(path, expected, f"delete {path} to download it again")
        return path
    url = _base_url(base_url, "MINISPAN_SQUAD_URL", SQUAD_URL) + path.name
    try:
        download(url, path, progress=progress)
    except DownloadError as e:
        raise DownloadError(f"{e}. Offline? Download {url} and save it as {path}") from None
    try:
        _check_squad(path, expected, f"the download from {url} is not the official file")
    except BaseException:  # not the official file, or Ctrl-C while checking: not left under the official name
        path.unlink()
        raise
    return path


def _check_squad(path, expected_questions, hint):
    try:
        dataset = read_json(path)
    except ValueError as e:
        raise DownloadError(f"{e}; {hint}") from None
    version = dataset.get("version") if isinstance(dataset, dict) else None
    if version != "v2.0":
        raise DownloadError(f"{path}: 'version' is {version!r}, expected 'v2.0'; {hint}")
    try:
        questions = sum(len(paragraph["qas"]) for article in dataset["data"]
                        for paragraph in article["paragraphs"])
    except (KeyError, TypeError):
        raise DownloadError(f"{path}: not in SQuAD format (data[].paragraphs[].qas[]); {hint}") from None
    if questions != expected_questions:
        raise DownloadError(f"{path}: {questions:,} questions, the official file has "
                            f"{expected_questions:,}; {hint}")


# --- SpanBERT ----------------------------------------------------------------------------------

def ensure_spanbert(name, cache_dir="models", *, source="auto", hub_url=None, tarball_url=None,
                    progress=True):
    """Directory `cache_dir`/`name` holding SpanBERT's config.json, weights, vocab.txt and
    tokenizer_config.json (cased), ready for load_model and load_tokenizer; downloaded if missing.

    source: "hub" (the Hugging Face hub), "tarball" (the original release) or "auto" (hub, then
    tarball). Files are gathered and validated in `cache_dir`/.`name`.download/ (which keeps
    partial downloads between runs) and the directory is renamed into place when complete.
    Call it from one process only (rank 0 under torchrun).
    """
    if name not in SPANBERT:
        raise ValueError(f"unknown model {name!r}: expected one of {', '.join(SPANBERT)} or a directory")
    if source not in ("auto", "hub", "tarball"):
        raise ValueError(f"unknown source {source!r}: expected 'auto', 'hub' or 'tarball'")
    repo, tarball, vocab_repo = SPANBERT[name]
    target = Path(cache_dir) / name
    if target.exists():
        return _existing(target)

    hub = _base_url(hub_url, "MINISPAN_HUB_URL", HUB_URL)
    release = _base_url(tarball_url, "MINISPAN_SPANBERT_URL", SPANBERT_URL) + tarball
    vocab_url = f"{hub}{vocab_repo}/resolve/main/vocab.txt"
    staging = Path(cache_dir) / f".{name}.download"
    offline_hint = (f"Offline? Put config.json and pytorch_model.bin from {hub}{repo}/resolve/main/ "
                    f"(or extracted from {release}) and {vocab_url} in {target}/")
    try:
        with _new_folders(staging):  # nothing arrived: no trace left
            if not (staging / "config.json").exists() or _weights_file(staging) is None:
                errors = []
                for each in ("hub", "tarball") if source == "auto" else (source,):
                    try:
                        if each == "hub":
                            for file in ("config.json", "pytorch_model.bin"):
                                download(f"{hub}{repo}/resolve/main/{file}", staging / file, progress=progress)
                        else:
                            _weights_from_tarball(release, staging, progress)
                        break
                    except DownloadError as e:
                        errors.append(str(e))
                else:
                    raise DownloadError("; ".join(errors))
            if not (staging / "vocab.txt").exists():
                download(vocab_url, staging / "vocab.txt", progress=progress)
    except DownloadError as e:
        raise DownloadError(f"cannot get {name}: {e}. {offline_hint}") from None

    try:
        check_model_dir(staging)
    except DownloadError as e:
        raise DownloadError(f"{e} (delete {staging} to download again)") from None
    os.replace(staging, target)
    return _existing(target)  # which also writes tokenizer_config.json


def _existing(target):
    """A model directory from an earlier run, or one filled by hand after the offline message."""
    missing = [f for f in ("config.json", "vocab.txt") if not (target / f).exists()]
    if _weights_file(target) is None:
        missing.append(" or ".join(WEIGHTS_FILES))
    if missing:
        raise DownloadError(f"{target} exists but lacks {', '.join(missing)}: complete it or delete it")
    if not (target / "tokenizer_config.json").exists():
        write_json(target / "tokenizer_config.json", {"do_lower_case": False})  # SpanBERT is cased
    return target


def _weights_file(directory):
    return next((directory / f for f in WEIGHTS_FILES if (directory / f).exists()), None)


def _weights_from_tarball(url, staging, progress):
    """The original release: a .tar.gz holding config.json and pytorch_model.bin (no vocabulary)."""
    archive = staging / url.rsplit("/", 1)[-1]
    download(url, archive, progress=progress)
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


def extract_tarball(archive, directory):
    """Extract regular files and folders only, after checking every member.

    An archive is refused whole, before anything is written, if a member is a link, a device
    or any other special file, has an absolute path, or would land outside `directory`. One that
    fails later (corrupt data, a bad checksum, a name the file system refuses) leaves nothing behind
    in a `directory` this call created.
    """
    directory = Path(directory).resolve()
    created = not directory.exists()
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, directory, archive)
            directory.mkdir(parents=True, exist_ok=True)
            for member in members:
                path = directory / member.name
                if member.isdir():
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(path, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
            # tarfile stops reading at the archive's end marker, before gzip's checksum: read to the end of
            # the compressed stream, so that a corrupted download fails here instead of loading garbage.
            while tar.fileobj.read(CHUNK):
                pass
    except (tarfile.TarError, EOFError, OSError) as e:  # OSError: gzip's BadGzipFile, CRC, names
        if created:
            shutil.rmtree(directory, ignore_errors=True)
        raise DownloadError(f"{archive}: not a readable tar archive ({e})") from None


def _check_member(member, directory, archive):
    name = member.name
    if not (member.isfile() or member.isdir()):
        raise DownloadError(f"{archive}: refusing member {name!r}: links, devices and other special "
                            f"files are not extracted")
    if name.startswith(("/", "\\")) or os.path.isabs(name):
        raise DownloadError(f"{archive}: refusing member {name!r}: absolute path")
    inside = (directory / name).resolve()
    if ".." in PurePosixPath(name).parts or (inside != directory and directory not in inside.parents):
        raise DownloadError(f"{archive}: refusing member {name!r}: path leaves the extraction folder")


def check_model_dir(directory):
    """Validate a downloaded model folder: the vocabulary fits the config and the weights load.

    Loading is done by load_model itself, the function training calls next, so every key of the
    encoder must be there with the config's shapes (a pretrained encoder has no span head: that
    one is initialised fresh).
    """
    # The readers load_model and load_tokenizer use. Imported here: tokenizers and torch are not needed
    # to download SQuAD.
    from minispan.config import BertConfig
    from minispan.tokenizer import SPECIAL_TOKENS, read_vocab
    from minispan.weights import load_model

    directory = Path(directory)
    try:
        vocab_size = BertConfig.from_json(directory / "config.json").vocab_size
    except (ValueError, OSError) as e:  # ConfigError is a ValueError
        raise DownloadError(f"{directory / 'config.json'}: not a BERT config ({e})") from None
    try:
        vocab = read_vocab(directory / "vocab.txt")
    except ValueError as e:  # empty, or not UTF-8 (read_vocab names the file)
        raise DownloadError(str(e)) from None
    ids = max(vocab.values()) + 1  # the embedding rows it needs (the tokenizer's vocab_size)
    bert_tokens = (*SPECIAL_TOKENS, "[MASK]")  # what the tokenizer needs, and pretraining's mask: any BERT vocabulary's
    if ids != vocab_size or not set(bert_tokens) <= set(vocab):
        raise DownloadError(f"{directory / 'vocab.txt'}: {ids:,} tokens, expected the config's "
                            f"vocab_size {vocab_size:,} including {' '.join(bert_tokens)}")

    try:
        load_model(directory)
    except (ValueError, OSError) as e:  # WeightsError and ConfigError are ValueErrors
        raise DownloadError(f"{directory}: the weights do not load ({e})") from None


# --- command line ------------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m minispan.download",
                                     description="Download SQuAD 2.0 or SpanBERT's pretrained weights.")
    parser.add_argument("what", choices=["squad", *SPANBERT])
    parser.add_argument("--dest", help="folder to put them in (default: data/ for squad, models/ for SpanBERT)")
    parser.add_argument("--source", choices=["auto", "hub", "tarball"], default="auto",
                        help="where SpanBERT's weights come from (default: the hub, then the tarball)")
    args = parser.parse_args(argv)
    try:
        if args.what == "squad":
            paths = [ensure_squad(split, args.dest or "data") for split in ("train", "dev")]
        else:
            paths = [ensure_spanbert(args.what, args.dest or "models", source=args.source)]
    except (DownloadError, ValueError, OSError) as e:  # OSError: a --dest it cannot create or write
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
