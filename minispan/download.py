"""Downloads that no library serves: the official SQuAD 2.0 files (into data/), and SpanBERT's release tarball when
the Hugging Face Hub fails (hub.py). Each arrives as NAME.part, resumed after an interruption, renamed once whole and
validated before use. `python -m minispan.download squad` fetches them ahead; see docs/08-reproducing-the-paper.md.
"""
import argparse
import contextlib
import http.client
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from minispan.files import read_json

# MINISPAN_SQUAD_URL (or base_url=) points it elsewhere: at a mirror, or at the local server the tests run.
SQUAD_URL = "https://rajpurkar.github.io/SQuAD-explorer/dataset/"
# Questions in the official files: a file with another count is not the one the numbers are for.
SQUAD_QUESTIONS = {"train": 130_319, "dev": 11_873}
READ = 64 << 10  # one read from the network; less than this in `timeout` seconds is a stalled transfer
MAX_BYTES = 4 << 30  # per file: SpanBERT-large's tarball is 1.2 GB; a server sending more is not sending it
DEADLINE = 3600  # default seconds for a whole download, retries included (the command line's --deadline)


class DownloadError(RuntimeError):
    """A download or a downloaded file's validation failed; the message says what to do."""


class _Interrupted(Exception):
    """The transfer stopped midway; what arrived is kept in the .part file."""


def printable(text):
    """A server's text (status line, header) for a one-line message: control characters (terminal escapes) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def env_url(given, env_var, default):
    url = given or os.environ.get(env_var) or default
    return url if url.endswith("/") else url + "/"


def download(url, dest, attempts=3, timeout=60, progress=True, max_bytes=MAX_BYTES, *, deadline=None):
    """Fetch `url` into `dest` through `dest`.part. Connection refused, unknown host or an HTTP error status fail at
    once (retrying won't help); a transfer cut or stalled is resumed up to `attempts` times, then the .part is kept
    for the next call, as it is `deadline` seconds (default DEADLINE) after the start."""
    deadline = DEADLINE if deadline is None else deadline
    end, target = time.monotonic() + deadline, Path(os.path.realpath(dest))
    part = target.with_name(target.name + ".part")
    if target.exists() and not target.is_file():  # replacing /dev/null or a FIFO breaks what reads it
        raise DownloadError(f"{dest}: not a regular file (a device, FIFO or folder); name a file for {url}")
    if part.is_symlink() or (part.exists() and not part.is_file()):  # appending would write elsewhere
        raise DownloadError(f"{part}: not a regular file (a link?); delete it to download {url}")
    with new_folders(target.parent):
        for attempt in range(1, attempts + 1):
            try:
                _fetch(url, part, timeout, progress, max_bytes, end)
                break
            except _Interrupted as e:
                if (late := time.monotonic() > end) or attempt == attempts:
                    kept = part.stat().st_size if part.exists() else 0
                    why = f"its {deadline:g} s deadline passed: python -m minispan.download --deadline" if late else e
                    raise DownloadError(f"download of {url} interrupted ({why}); the {kept:,} bytes so far "
                                        f"are kept in {part}: run again to resume") from None
    if target.is_file():  # the file replaced keeps its mode
        os.chmod(part, target.stat().st_mode & 0o7777)
    os.replace(part, target)
    return Path(dest)


@contextlib.contextmanager
def new_folders(folder):
    """mkdir -p folder; if the block fails, remove the folders it made that are still empty (a kept .part keeps its)."""
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


def _fetch(url, part, timeout, progress, max_bytes, end):
    """One request, appending to `part` what arrives until `end` (time.monotonic())."""
    offset, response = _open(url, part, timeout)
    with response:
        offset, total = _body_size(response, url, part, offset, max_bytes)
        with open(part, "ab" if offset else "wb") as f, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                                             unit_divisor=1024, desc=part.name[:-len(".part")],
                                                             disable=not progress) as bar:
            try:
                for chunk in _chunks(response, timeout, end):
                    offset += len(chunk)
                    if offset > max_bytes:  # no size was announced
                        f.close()
                        part.unlink()
                        raise DownloadError(f"cannot download {url}: more than the {max_bytes:,} bytes "
                                            "any file here needs")
                    f.write(chunk)  # an OSError here (a full disk) is not the network's: no retry
                    bar.update(len(chunk))
            finally:
                if not f.closed:  # what arrived is on the disk before a rename, or a resume, relies on it
                    f.flush()
                    os.fsync(f.fileno())
    # urllib returns a short body without complaint when the server hangs up early.
    if total is not None and (size := part.stat().st_size) != total:
        raise _Interrupted(f"got {size:,} of {total:,} bytes")


def _open(url, part, timeout):
    """(offset, response): the request for the rest of `part`, with the errors that retrying won't fix."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "minispan-download"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        return offset, _OPENER.open(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # the .part is as long as the file or longer: start afresh
            part.unlink()
            return _open(url, part, timeout)
        raise DownloadError(f"cannot download {url}: HTTP {e.code} {printable(e.reason)}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:  # offline, refused, ...
        raise DownloadError(f"cannot download {url}: {printable(getattr(e, 'reason', e))}") from None


def _body_size(response, url, part, offset, max_bytes):
    """(offset, total): where the body goes in `part`, and the whole file's size (None: unknown)."""
    if response.status == 206:  # a part of the file (even unasked): the whole file's size is in Content-Range
        header = response.headers.get("Content-Range")
        match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", header or "")
        if not match or int(match[1]) != offset:  # not the bytes we asked for: start over on the next attempt
            part.unlink(missing_ok=True)
            raise _Interrupted(f"asked for bytes from {offset}, got Content-Range {header!r}")
        if match[2] == "*":  # "bytes 0-99/*": no way to tell when the file is whole
            part.unlink(missing_ok=True)
            raise DownloadError(f"cannot download {url}: a partial reply without the file's size "
                                f"(Content-Range {header!r})")
        total = int(match[2])
    else:  # 200: a server that ignores Range sends the whole file, so start over
        length = response.headers.get("Content-Length")
        offset, total = 0, int(length) if length and length.isdigit() else None
    if (size := max(offset, total or 0)) > max_bytes:
        part.unlink(missing_ok=True)
        raise DownloadError(f"cannot download {url}: {size:,} bytes, more than the {max_bytes:,} any file here needs")
    return offset, total


def _chunks(response, timeout, end):
    """The body as it arrives; _Interrupted when the connection fails, stalls (READ says when) or reaches `end`."""
    mark, since = time.monotonic(), 0
    while True:
        try:
            chunk = response.read1(READ)  # what has arrived: read(n) would wait for all n bytes
        except (OSError, http.client.HTTPException) as e:  # reset, timeout, bad chunking
            raise _Interrupted(printable(e) or type(e).__name__) from None
        if not chunk:
            return
        yield chunk
        now, since = time.monotonic(), since + len(chunk)
        if since >= READ:
            mark, since = now, 0
        if response.length != 0 and (now - mark > timeout or now > end):  # 0: the body is whole
            raise _Interrupted(f"stalled: {since:,} bytes in {now - mark:.0f} s")


def ensure_squad(split, data_dir="data", *, base_url=None, expected_questions=None, progress=True, deadline=None):
    """Path of the official SQuAD 2.0 `split` ("train" or "dev") in `data_dir`, downloaded if missing."""
    if split not in SQUAD_QUESTIONS:
        raise ValueError(f"unknown SQuAD split {split!r}: expected 'train' or 'dev'")
    expected = SQUAD_QUESTIONS[split] if expected_questions is None else expected_questions
    path = Path(data_dir) / f"{split}-v2.0.json"
    if path.exists():  # put there by an earlier run or by hand: it still has to be the official file
        _check_squad(path, expected, f"delete {path} to download it again")
        return path
    url = env_url(base_url, "MINISPAN_SQUAD_URL", SQUAD_URL) + path.name
    try:
        download(url, path, progress=progress, deadline=deadline)
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
        questions = sum(len(paragraph["qas"]) for article in dataset["data"] for paragraph in article["paragraphs"])
    except (KeyError, TypeError):
        raise DownloadError(f"{path}: not in SQuAD format (data[].paragraphs[].qas[]); {hint}") from None
    if questions != expected_questions:
        raise DownloadError(f"{path}: {questions:,} questions, the official file has {expected_questions:,}; {hint}")


def main(argv=None):
    from minispan.hub import SPANBERT, ensure_spanbert

    parser = argparse.ArgumentParser(prog="python -m minispan.download",
                                     description="Download SQuAD 2.0 or SpanBERT's pretrained weights.")
    parser.add_argument("what", choices=["squad", *SPANBERT])
    parser.add_argument("--dest", help="folder to put them in (default: data/ for squad, models/ for SpanBERT)")
    parser.add_argument("--deadline", type=float, default=DEADLINE, metavar="SECONDS",
                        help=f"stop a download after this long, keeping what arrived to resume (default {DEADLINE})")
    args = parser.parse_args(argv)
    if not 0 < args.deadline < float("inf"):
        parser.error(f"--deadline: {args.deadline:g} is not a positive number of seconds")
    try:
        if args.what == "squad":
            paths = [ensure_squad(split, args.dest or "data", deadline=args.deadline) for split in ("train", "dev")]
        else:
            paths = [ensure_spanbert(args.what, args.dest or "models", deadline=args.deadline)]  # Hub, else tarball
    except (DownloadError, ValueError, OSError) as e:  # OSError: a --dest it cannot create or write
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(*paths, sep="\n")
    return 0


if __name__ == "__main__":  # the imported module's main, not this copy's: its DownloadError is the one hub.py raises
    import minispan.download
    sys.exit(minispan.download.main())
