"""Extracting a downloaded tarball (SpanBERT's original release) without trusting it: regular files and
folders only, inside a new folder, no more bytes than the archive can honestly hold."""
import os
import shutil
import tarfile
from pathlib import Path, PurePosixPath

from minispan.download import DownloadError

CHUNK = 1 << 20
RATIO = 4  # an archive may unpack to 4x its size (at least 1 MiB): weights barely compress, a bomb does


def extract_tarball(archive, directory, *, max_bytes=None):
    """Extract `archive` into `directory`, which must not exist (a link placed in it could send a member elsewhere).
    The archive is refused whole, before anything is written, if a member is refused or if its members and their
    512-byte headers (millions of empty files are a bomb too) take more than `max_bytes` (default: RATIO x its size)."""
    if os.path.lexists(directory):
        raise DownloadError(f"{directory}: already exists; delete it to extract {archive} there")
    directory, made, total = Path(directory).resolve(), False, 0
    try:
        cap = max(RATIO * os.path.getsize(archive), 1 << 20) if max_bytes is None else max_bytes
        with tarfile.open(archive) as tar:
            for member in tar:  # header by header: a bomb is stopped at the first header past the cap
                _check_member(member, directory, archive)
                if (total := total + 512 + member.size) > cap:
                    raise DownloadError(f"{archive}: unpacks to more than the {cap:,} bytes it may "
                                        "(a decompression bomb?); delete it and download it again")
            directory.mkdir(parents=True)
            made = True
            for member in tar.getmembers():
                _extract_member(tar, member, directory / member.name)
            # tarfile stops reading at the archive's end marker, before gzip's checksum: read to the end of
            # the compressed stream, so that a corrupted download fails here instead of loading garbage.
            while tar.fileobj.read(CHUNK):
                pass
    except BaseException as e:
        if made:
            shutil.rmtree(directory, ignore_errors=True)
        if isinstance(e, (tarfile.TarError, EOFError, OSError)):  # OSError: gzip's BadGzipFile, CRC, names
            raise DownloadError(f"{archive}: not a readable tar archive ({e})") from None
        raise


def _extract_member(tar, member, path):
    (path if member.isdir() else path.parent).mkdir(parents=True, exist_ok=True)
    if member.isfile():
        with tar.extractfile(member) as src, open(path, "xb") as dst:  # "x": never through what is already there
            left = member.size
            while left and (piece := src.read(min(CHUNK, left))):  # no more than the member declares
                left -= dst.write(piece)


def _check_member(member, directory, archive):
    name, inside = member.name, (directory / member.name).resolve()
    for refused, why in (
            (member.issparse() or member.type == tarfile.GNUTYPE_SPARSE,  # 500 bytes can declare 20 GiB of holes
             "sparse files are not extracted"),
            (not (member.isfile() or member.isdir()), "links, devices and other special files are not extracted"),
            (name.startswith(("/", "\\")) or os.path.isabs(name), "absolute path"),
            (".." in PurePosixPath(name).parts or (inside != directory and directory not in inside.parents),
             "path leaves the extraction folder")):
        if refused:
            raise DownloadError(f"{archive}: refusing member {name!r}: {why}")
