"""Downloads against a local HTTP server on 127.0.0.1: resume, Range ignored, validation,
malicious tarballs, offline errors and the command line. No network; several seconds in all.
(SpanBERT's weights come through huggingface_hub: test_hub.py.)"""
import http.server
import contextlib
import gzip
import io
import json
import os
import random
import re
import socket
import stat
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from minispan.archive import extract_tarball
from minispan.download import DownloadError, download, ensure_squad

REPO = Path(__file__).resolve().parents[1]
BLOB = random.Random(0).randbytes(2_500_000)  # spans several 1 MiB reads


# --- a small file server with Range support, and the misbehaviours we want to survive ----------

class FakeServer:
    def __init__(self):
        self.files = {}  # URL path -> bytes
        self.requests = []  # (path, Range header or None), in order
        self.drop_after = {}  # path -> bytes sent before hanging up (on the next request only)
        self.redirects = {}  # path -> path, answered with 302 as the hub does (to its CDN)
        self.ignore_range = False
        self.no_length = set()  # paths sent without Content-Length (the end of the body is the hang-up)
        self.unasked_part = {}  # path -> bytes of a 206 partial reply to the next request without Range
        self.unknown_total = False  # that reply's Content-Range says "/*" instead of the file's size
        self.trickle = {}  # path -> how many of the next requests get the body a byte every 0.05 s
        self.raw = {}  # path -> the whole reply, status line and headers included, sent as is
        self.url = None


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        fake = self.server.fake
        range_header = self.headers.get("Range")
        fake.requests.append((self.path, range_header))
        if self.path in fake.raw:
            self.wfile.write(fake.raw[self.path])
            self.close_connection = True
            return
        if self.path in fake.redirects:
            self.send_response(302)
            self.send_header("Location", fake.redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = fake.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        if not range_header and self.path in fake.unasked_part:  # a part of the file, though none was asked for
            end = fake.unasked_part.pop(self.path)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes 0-{end - 1}/{'*' if fake.unknown_total else len(body)}")
            self.send_header("Content-Length", str(end))
            self.end_headers()
            self.wfile.write(body[:end])
            return
        if range_header and not fake.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", range_header).group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        if self.path in fake.no_length:
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        cut = fake.drop_after.pop(self.path, None)
        if fake.trickle.get(self.path):
            fake.trickle[self.path] -= 1
            self.close_connection = True
            with contextlib.suppress(OSError):  # the client gave up
                for i in range(start, len(body)):
                    self.wfile.write(body[i:i + 1])
                    self.wfile.flush()
                    time.sleep(0.05)
            return
        self.wfile.write(body[start:] if cut is None else body[start:start + cut])
        if cut is not None:
            self.close_connection = True  # hang up with the body half sent

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.fake = FakeServer()
    httpd.fake.url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield httpd.fake
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def dead_url():
    """A URL on 127.0.0.1 where nothing listens: connection refused, as offline."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def files_under(path):
    return sorted(str(p.relative_to(path)) for p in Path(path).rglob("*"))


# --- one file -------------------------------------------------------------------------------

def test_interrupted_transfer_is_kept_and_resumed_with_range(server, tmp_path):
    server.files["/blob.bin"] = BLOB
    server.drop_after["/blob.bin"] = 1_000_000
    dest = tmp_path / "blob.bin"
    with pytest.raises(DownloadError, match="interrupted .*run again to resume"):
        download(server.url + "blob.bin", dest, attempts=1, progress=False)
    part = tmp_path / "blob.bin.part"
    assert not dest.exists() and part.read_bytes() == BLOB[:1_000_000]

    assert download(server.url + "blob.bin", dest, progress=False) == dest
    assert server.requests == [("/blob.bin", None), ("/blob.bin", "bytes=1000000-")]
    assert dest.read_bytes() == BLOB and not part.exists()


def test_one_call_resumes_by_itself(server, tmp_path):
    server.files["/blob.bin"] = BLOB
    server.drop_after["/blob.bin"] = 700_000
    download(server.url + "blob.bin", tmp_path / "blob.bin", progress=False)
    assert [r for _, r in server.requests] == [None, "bytes=700000-"]
    assert (tmp_path / "blob.bin").read_bytes() == BLOB


def test_a_full_disk_is_not_retried_as_a_network_error(server, tmp_path):
    """A write that fails (here: a 1 MB file-size limit, as a full disk would) is an OSError for the caller,
    not an interrupted transfer to retry with a Range request."""
    server.files["/blob.bin"] = BLOB
    code = ("import resource, signal, sys; from minispan.download import download; "
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (10**6, 10**6)); "
            "download(sys.argv[1], sys.argv[2], progress=False)")
    result = subprocess.run([sys.executable, "-c", code, server.url + "blob.bin", str(tmp_path / "blob.bin")],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 1 and "File too large" in result.stderr
    assert [r for _, r in server.requests] == [None]  # one request: no "resume" of a disk problem


def test_server_ignoring_range_restarts_the_file(server, tmp_path):
    server.files["/blob.bin"] = BLOB
    server.ignore_range = True
    (tmp_path / "blob.bin.part").write_bytes(b"stale bytes from another file")
    download(server.url + "blob.bin", tmp_path / "blob.bin", progress=False)
    assert server.requests == [("/blob.bin", "bytes=29-")]  # asked to resume, got 200: whole file
    assert (tmp_path / "blob.bin").read_bytes() == BLOB


def test_a_file_too_large_is_refused_and_removed(server, tmp_path):
    server.files["/blob.bin"] = BLOB
    with pytest.raises(DownloadError, match=r"blob\.bin: 2,500,000 bytes, more than the 1,000,000 any file"):
        download(server.url + "blob.bin", tmp_path / "blob.bin", progress=False, max_bytes=1_000_000)
    assert files_under(tmp_path) == []
    server.no_length.add("/blob.bin")  # no size announced: stopped once past the limit
    with pytest.raises(DownloadError, match=r"blob\.bin: more than the 1,000,000 bytes any file here needs"):
        download(server.url + "blob.bin", tmp_path / "blob.bin", progress=False, max_bytes=1_000_000)
    assert files_under(tmp_path) == []
    # A resumed file is judged by the whole file's size (Content-Range), not the part still to come.
    (tmp_path / "blob.bin.part").write_bytes(BLOB[:2_000_000])
    with pytest.raises(DownloadError, match=r"2,500,000 bytes, more than the 1,000,000"):
        download(server.url + "blob.bin", tmp_path / "blob.bin", progress=False, max_bytes=1_000_000)
    assert files_under(tmp_path) == []
    download(server.url + "blob.bin", tmp_path / "blob.bin", progress=False, max_bytes=len(BLOB))  # just fits
    assert (tmp_path / "blob.bin").read_bytes() == BLOB


def test_a_partial_reply_is_not_taken_for_the_whole_file(server, tmp_path):
    # 206 to a request without Range: its Content-Length is the part's, the file's size is in Content-Range.
    server.files["/blob.bin"] = BLOB
    server.unasked_part["/blob.bin"] = 1_000_000
    download(server.url + "blob.bin", tmp_path / "blob.bin", progress=False)
    assert server.requests == [("/blob.bin", None), ("/blob.bin", "bytes=1000000-")]
    assert (tmp_path / "blob.bin").read_bytes() == BLOB
    # Without the file's size ("bytes 0-999999/*") nothing says when it is whole: refused, nothing kept.
    server.unasked_part["/blob.bin"] = 1_000_000
    server.unknown_total = True
    with pytest.raises(DownloadError, match=r"a partial reply without the file's size "
                                            r"\(Content-Range 'bytes 0-999999/\*'\)"):
        download(server.url + "blob.bin", tmp_path / "again.bin", progress=False)
    assert not (tmp_path / "again.bin").exists() and not (tmp_path / "again.bin.part").exists()


def test_part_as_long_as_the_file_starts_afresh(server, tmp_path):
    server.files["/blob.bin"] = BLOB
    (tmp_path / "blob.bin.part").write_bytes(BLOB + b"extra")  # server answers 416
    download(server.url + "blob.bin", tmp_path / "blob.bin", progress=False)
    assert [r for _, r in server.requests] == [f"bytes={len(BLOB) + 5}-", None]
    assert (tmp_path / "blob.bin").read_bytes() == BLOB


def test_redirect_keeps_the_range_header(server, tmp_path):
    server.files["/cdn/blob.bin"] = BLOB
    server.redirects["/repo/resolve/main/blob.bin"] = "/cdn/blob.bin"
    (tmp_path / "blob.bin.part").write_bytes(BLOB[:1234])
    download(server.url + "repo/resolve/main/blob.bin", tmp_path / "blob.bin", progress=False)
    assert server.requests[-1] == ("/cdn/blob.bin", "bytes=1234-")
    assert (tmp_path / "blob.bin").read_bytes() == BLOB

    # Only to http(s): urllib on its own would follow this one and log in to an FTP server.
    server.redirects["/repo/resolve/main/other.bin"] = "ftp://127.0.0.1:1/other.bin"
    with pytest.raises(DownloadError, match="to a non-HTTP address: refused"):
        download(server.url + "repo/resolve/main/other.bin", tmp_path / "other.bin", progress=False)


def test_a_part_file_that_is_a_link_is_not_written_through(server, tmp_path):
    server.files["/blob.bin"] = BLOB
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl" / "blob.bin.part").symlink_to(victim)  # placed by someone sharing the folder
    with pytest.raises(DownloadError, match="blob.bin.part: not a regular file"):
        download(server.url + "blob.bin", tmp_path / "dl" / "blob.bin", progress=False)
    assert victim.read_bytes() == b"precious" and not (tmp_path / "dl" / "blob.bin").exists()


def test_http_error_and_offline_fail_at_once(server, dead_url, tmp_path):
    with pytest.raises(DownloadError, match=r"HTTP 404"):
        download(server.url + "missing.bin", tmp_path / "missing.bin", progress=False)
    with pytest.raises(DownloadError, match=r"cannot download http://127\.0\.0\.1:\d+/x\.bin: .*refused"):
        download(dead_url + "x.bin", tmp_path / "x.bin", progress=False)
    assert len(server.requests) == 1 and files_under(tmp_path) == []


SLOW = b"slow" * 25  # trickled, a byte every 0.05 s: 5 s in all


def test_a_trickling_transfer_is_stalled_and_resumed(server, tmp_path):
    """A byte every 0.05 s never lets a socket timeout fire: less than 64 KiB in `timeout` seconds is a stall,
    resumed as a cut transfer is (the second request, served at full speed, asks for the rest)."""
    server.files["/slow.bin"], server.trickle["/slow.bin"] = SLOW, 1
    download(server.url + "slow.bin", tmp_path / "slow.bin", timeout=1, progress=False)
    assert len(server.requests) == 2 and (tmp_path / "slow.bin").read_bytes() == SLOW
    server.trickle["/slow.bin"] = 1
    with pytest.raises(DownloadError, match=r"slow\.bin interrupted \((stalled: \d+ bytes in \d+ s|timed out)\); "):
        download(server.url + "slow.bin", tmp_path / "again.bin", attempts=1, timeout=1, progress=False)


def test_a_download_past_its_deadline_stops_and_keeps_the_part(server, tmp_path):
    server.files["/slow.bin"], server.trickle["/slow.bin"] = SLOW, 3
    dest, part = tmp_path / "slow.bin", tmp_path / "slow.bin.part"
    with pytest.raises(DownloadError) as error:
        download(server.url + "slow.bin", dest, timeout=30, deadline=0.5, progress=False)
    assert re.search(r"slow\.bin interrupted \(its 0\.5 s deadline passed: python -m minispan\.download "
                     r"--deadline\); the [\d,]+ bytes so far are kept in .*slow\.bin\.part: run again to resume$",
                     str(error.value))
    kept = len(part.read_bytes())
    assert len(server.requests) == 1 and not dest.exists() and part.read_bytes() == SLOW[:kept]
    server.trickle.clear()
    download(server.url + "slow.bin", dest, progress=False)  # resumed
    assert server.requests[-1] == ("/slow.bin", f"bytes={kept}-" if kept else None)
    assert dest.read_bytes() == SLOW and not part.exists()


@pytest.mark.parametrize("reply", [
    b"HTTP/1.1 404 Not\x1b[2J\x1b]0;owned\x07 Found\r\nContent-Length: 0\r\n\r\n",  # a reason phrase
    b"\x1b[2J\x1b]0;owned\x07\r\n\r\n",  # not a status line at all
])
def test_server_text_reaches_the_message_escaped(server, tmp_path, reply):
    server.raw["/x.bin"] = reply
    with pytest.raises(DownloadError) as error:
        download(server.url + "x.bin", tmp_path / "x.bin", progress=False)
    message = str(error.value)
    assert r"\x1b[2J\x1b]0;owned\x07" in message and message.isprintable()


def test_a_link_at_dest_is_written_through_to_its_target(server, tmp_path):
    server.files["/blob.bin"] = BLOB
    (tmp_path / "real").mkdir()
    target, link = tmp_path / "real" / "blob.bin", tmp_path / "blob.bin"
    target.write_bytes(b"old")
    target.chmod(0o640)
    link.symlink_to(target)
    server.drop_after["/blob.bin"] = 1000
    with pytest.raises(DownloadError, match="kept in .*real/blob.bin.part"):  # the .part beside the target
        download(server.url + "blob.bin", link, attempts=1, progress=False)
    assert download(server.url + "blob.bin", link, progress=False) == link
    assert link.is_symlink() and target.read_bytes() == BLOB
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # the replaced file's mode, not a new file's
    assert files_under(tmp_path) == ["blob.bin", "real", "real/blob.bin"]


def test_a_fifo_or_folder_at_dest_is_refused(server, tmp_path):
    server.files["/blob.bin"] = BLOB
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "folder").mkdir()
    for name in ("fifo", "folder"):
        with pytest.raises(DownloadError, match=f"{name}: not a regular file \\(a device, FIFO or folder\\)"):
            download(server.url + "blob.bin", tmp_path / name, progress=False)
    assert stat.S_ISFIFO((tmp_path / "fifo").lstat().st_mode) and server.requests == []


# --- SQuAD ------------------------------------------------------------------------------------

def squad_bytes(questions, version="v2.0"):
    qas = [{"id": f"q{i}", "question": "Where is Paris?", "is_impossible": False,
            "answers": [{"text": "France", "answer_start": 12}]} for i in range(questions)]
    data = [{"title": "Paris", "paragraphs": [{"context": "Paris is in France.", "qas": qas}]}]
    return json.dumps({"version": version, "data": data}).encode()


def test_ensure_squad_downloads_validates_and_reuses(server, tmp_path):
    server.files["/train-v2.0.json"] = squad_bytes(3)
    path = ensure_squad("train", tmp_path / "data", base_url=server.url, expected_questions=3, progress=False)
    assert path == tmp_path / "data" / "train-v2.0.json"
    assert path.read_bytes() == server.files["/train-v2.0.json"]
    assert ensure_squad("train", tmp_path / "data", base_url=server.url, expected_questions=3) == path
    assert len(server.requests) == 1  # the second call found the file


@pytest.mark.parametrize("body, message", [
    (squad_bytes(2), r"2 questions, the official file has 3"),
    (squad_bytes(3, version="1.1"), r"'version' is '1\.1', expected 'v2\.0'"),
    (b"<html>moved</html>", r"not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, r"not valid JSON"),  # nested past the recursion limit
    (json.dumps({"version": "v2.0", "data": [{"title": "x"}]}).encode(), r"not in SQuAD format"),
])
def test_ensure_squad_rejects_a_file_that_is_not_the_official_one(server, tmp_path, body, message):
    server.files["/dev-v2.0.json"] = body
    with pytest.raises(DownloadError, match=message):
        ensure_squad("dev", tmp_path, base_url=server.url, expected_questions=3, progress=False)
    assert files_under(tmp_path) == []  # nothing left that a later run could take for the real file


def test_ensure_squad_checks_a_file_already_there(tmp_path):
    (tmp_path / "dev-v2.0.json").write_bytes(squad_bytes(5))
    with pytest.raises(DownloadError, match=r"5 questions, the official file has 11,873; delete"):
        ensure_squad("dev", tmp_path)
    with pytest.raises(ValueError, match="unknown SQuAD split 'test'"):
        ensure_squad("test", tmp_path)


def test_ensure_squad_offline_says_what_to_fetch_and_where(dead_url, tmp_path, monkeypatch):
    monkeypatch.setenv("MINISPAN_SQUAD_URL", dead_url)  # the environment variable, this time
    with pytest.raises(DownloadError) as error:
        ensure_squad("train", tmp_path)
    message = str(error.value)
    assert "\n" not in message
    assert f"Offline? Download {dead_url}train-v2.0.json and save it as {tmp_path / 'train-v2.0.json'}" in message


# --- tarballs ---------------------------------------------------------------------------------

def make_tar(path, members):
    """members: (TarInfo, bytes or None)."""
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)


def regular(name, data=b"x"):
    return tarfile.TarInfo(name), data


def special(name, kind, target=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


@pytest.mark.parametrize("bad, reason", [
    (regular("../evil.txt"), "path leaves the extraction folder"),
    (regular("model/../../evil.txt"), "path leaves the extraction folder"),
    (regular("/tmp/evil.txt"), "absolute path"),
    (special("model/link", tarfile.SYMTYPE, "../../evil.txt"), "links, devices"),
    (special("model/hard", tarfile.LNKTYPE, "/etc/passwd"), "links, devices"),
    (special("model/dev", tarfile.CHRTYPE), "links, devices"),
    (special("model/fifo", tarfile.FIFOTYPE), "links, devices"),
])
def test_malicious_tarball_is_refused_before_anything_is_written(tmp_path, bad, reason):
    archive = tmp_path / "release.tar.gz"
    # A harmless member first: refusing must happen before it is written, too.
    make_tar(archive, [regular("model/config.json", b"{}"), bad])
    with pytest.raises(DownloadError, match=f"refusing member .*{reason}"):
        extract_tarball(archive, tmp_path / "out")
    assert files_under(tmp_path) == ["release.tar.gz"]


def test_safe_tarball_is_extracted(tmp_path):
    archive = tmp_path / "release.tar.gz"
    info = tarfile.TarInfo("model")
    info.type = tarfile.DIRTYPE
    make_tar(archive, [(info, None), regular("model/config.json", b"{}"), regular("model/w.bin", BLOB)])
    extract_tarball(archive, tmp_path / "out")
    assert (tmp_path / "out" / "model" / "w.bin").read_bytes() == BLOB
    (tmp_path / "broken.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(DownloadError, match="not a readable tar archive"):
        extract_tarball(tmp_path / "broken.tar.gz", tmp_path / "out2")

    # A corrupted download whose tar structure still parses: only gzip's checksum, at the stream's end,
    # tells. tarfile stops before it, so without reading on, the archive extracted "fine".
    corrupt = bytearray(archive.read_bytes())
    corrupt[-8] ^= 0xFF  # the CRC-32 of the uncompressed data
    (tmp_path / "corrupt.tar.gz").write_bytes(bytes(corrupt))
    with pytest.raises(DownloadError, match="not a readable tar archive .*CRC check failed"):
        extract_tarball(tmp_path / "corrupt.tar.gz", tmp_path / "out3")
    assert not (tmp_path / "out3").exists()  # nothing half-extracted left


def test_extraction_is_capped_at_what_the_archive_can_hold(tmp_path):
    archive = tmp_path / "release.tar.gz"
    # By default an archive may unpack to 4x its size, at least 1 MiB: 2 MiB of zeros compress to 2 KB.
    make_tar(archive, [regular("model/config.json", b"{}"), regular("model/pytorch_model.bin", bytes(2 << 20))])
    with pytest.raises(DownloadError, match=r"release\.tar\.gz: unpacks to more than the 1,048,576 bytes it may "
                                            r"\(a decompression bomb\?\); delete it"):
        extract_tarball(archive, tmp_path / "out")
    make_tar(archive, [regular(f"model/{i}", b"") for i in range(3000)])  # headers only: 1.5 MB from 10 KB
    with pytest.raises(DownloadError, match=r"unpacks to more than the 1,048,576 bytes"):
        extract_tarball(archive, tmp_path / "out")
    make_tar(archive, [regular("model/config.json", b"{}"), regular("model/w.bin", BLOB)])
    size = 2 * 512 + 2 + len(BLOB)  # two headers, two files
    with pytest.raises(DownloadError, match=f"unpacks to more than the {size - 1:,} bytes"):
        extract_tarball(archive, tmp_path / "out", max_bytes=size - 1)
    assert files_under(tmp_path) == ["release.tar.gz"]
    extract_tarball(archive, tmp_path / "out", max_bytes=size)  # just fits
    assert (tmp_path / "out" / "model" / "w.bin").read_bytes() == BLOB


def sparse_tar(path, real_size):
    """A GNU sparse member (tarfile cannot write one): 512 stored bytes that extract to `real_size` bytes."""
    info = tarfile.TarInfo("model/pytorch_model.bin")
    info.type, info.size = tarfile.GNUTYPE_SPARSE, 512
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    header[386:410] = b"%011o\0%011o\0" % (0, 512)  # the map: 512 bytes of data at offset 0, holes after
    header[483:495] = b"%011o\0" % real_size
    header[148:155] = b"%06o\0" % (256 + sum(header[:148]) + sum(header[156:]))  # the checksum, recomputed
    with gzip.open(path, "wb") as f:
        f.write(bytes(header) + b"\1" * 512 + bytes(1024))


def test_a_sparse_member_is_refused(tmp_path):
    archive = tmp_path / "release.tar.gz"
    sparse_tar(archive, 8 << 20)  # ~100 bytes; the 506 bytes declared 20 GiB
    with pytest.raises(DownloadError, match=r"refusing member 'model/pytorch_model\.bin': sparse files are not"):
        extract_tarball(archive, tmp_path / "out", max_bytes=1 << 30)
    assert files_under(tmp_path) == ["release.tar.gz"]


def test_extraction_needs_a_new_folder(tmp_path):
    """A link already in the folder would take a member's bytes elsewhere: only a new folder is extracted to."""
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    (tmp_path / "out" / "model").mkdir(parents=True)
    (tmp_path / "out" / "model" / "config.json").symlink_to(victim)
    archive = tmp_path / "release.tar.gz"
    make_tar(archive, [regular("model/config.json", b"{}")])
    with pytest.raises(DownloadError, match=r"out: already exists; delete it to extract .*release\.tar\.gz there"):
        extract_tarball(archive, tmp_path / "out")
    assert victim.read_bytes() == b"precious" and (tmp_path / "out" / "model" / "config.json").is_symlink()


# --- command line -----------------------------------------------------------------------------

def test_cli_offline_is_one_line_and_exit_2(dead_url, tmp_path):
    env = {**os.environ, "MINISPAN_SQUAD_URL": dead_url}
    result = subprocess.run([sys.executable, "-m", "minispan.download", "squad", "--dest", str(tmp_path)],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: cannot download ") and result.stderr.count("\n") == 1
    assert f"save it as {tmp_path / 'train-v2.0.json'}" in result.stderr
    assert files_under(tmp_path) == []

    a_file = tmp_path / "a_file"
    a_file.write_text("")
    result = subprocess.run([sys.executable, "-m", "minispan.download", "squad", "--dest", str(a_file)],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert str(a_file) in result.stderr and "Traceback" not in result.stderr

    nested = tmp_path / "new" / "data"  # folders it makes for a download that fails are removed again
    result = subprocess.run([sys.executable, "-m", "minispan.download", "squad", "--dest", str(nested)],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert result.returncode == 2 and not (tmp_path / "new").exists()


def test_cli_deadline_stops_the_release_tarball_download(server, tmp_path):
    """--deadline reaches hub.py's download of the release tarball (the Hub offline here), and its error is
    one line: run as __main__, the module once caught only its own copy's DownloadError."""
    server.files["/spanbert_hf_base.tar.gz"], server.trickle["/spanbert_hf_base.tar.gz"] = SLOW, 1
    env = {name: value for name, value in os.environ.items() if not name.startswith(("HF_", "HUGGING"))}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), MINISPAN_SPANBERT_URL=server.url)
    command = [sys.executable, "-m", "minispan.download", "spanbert-base-cased", "--dest", str(tmp_path / "models")]
    result = subprocess.run(command + ["--deadline", "0.5"], capture_output=True, text=True, env=env, cwd=REPO,
                            timeout=120)
    error = result.stderr[result.stderr.find("error: "):]  # after the progress bar
    assert result.returncode == 2 and error.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert "spanbert_hf_base.tar.gz interrupted (its 0.5 s deadline passed: python -m minispan.download --deadline" \
        in error
    assert (tmp_path / "models" / ".spanbert-base-cased.download" / "spanbert_hf_base.tar.gz.part").exists()
    result = subprocess.run(command + ["--deadline", "nan"], capture_output=True, text=True, env=env, cwd=REPO,
                            timeout=120)
    assert result.returncode == 2 and "--deadline: nan is not a positive number of seconds" in result.stderr
    result = subprocess.run(command[:3] + ["--help"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert "--deadline SECONDS" in result.stdout
