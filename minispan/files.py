"""Writing outputs atomically (a crash or Ctrl-C never leaves half a file behind), log lines, the run lock, and
reading JSON with bounds."""
import contextlib
import fcntl
import json
import os
import stat
import tempfile

MAX_JSON_BYTES = 2**30  # above any real SQuAD file (train-v2.0.json: 42 MB); bounds /dev/zero, an endless FIFO


@contextlib.contextmanager
def atomic_write(path, mode="w", encoding="utf-8"):
    """Open `path` for writing: a regular file (or a new one) as a temporary file renamed over it (os.replace is atomic
    within one file system), keeping its mode; anything else in place, as replacing /dev/null, /dev/stdout or a FIFO
    would break whatever reads it. A symlink is written through to its target. OSErrors name `path`."""
    path, kwargs = os.fspath(path), {} if "b" in mode else {"encoding": encoding}
    try:
        st = os.stat(path)  # through symlinks: what a write would reach
    except (FileNotFoundError, NotADirectoryError):
        st = None
    if st and stat.S_ISDIR(st.st_mode):  # else the final rename fails, with an error naming the temporary file
        raise IsADirectoryError(f"{path}: is a directory, expected a file name")
    target = os.path.realpath(path)
    directory, tmp = os.path.dirname(target), None
    hidden = os.path.join(directory, f".{os.path.basename(target)}.")  # the temporary files' names start so
    try:
        if st and not stat.S_ISREG(st.st_mode):
            with open(path, mode, **kwargs) as f:
                yield f
            return
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(hidden), suffix=".tmp")
        with open(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file private (0600); give it the mode an ordinary open() would: the
        # replaced file's own, or for a new file 0666 less the umask (which can only be read by setting it).
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(tmp, st.st_mode & 0o7777 if st else 0o666 & ~umask)
        os.replace(tmp, target)
    except BaseException as e:
        if tmp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(e, OSError) and e.errno and (e.filename is None or str(e.filename).startswith(hidden)):
            raise OSError(e.errno, e.strerror, path) from None  # the errno picks the subclass, as in open()
        raise


def read_json(path, max_bytes=MAX_JSON_BYTES):
    """A JSON file of at most max_bytes; one that cannot be read, is larger or is not JSON is a ValueError naming it."""
    try:
        with open(path, "rb") as f:
            data = bytearray()
            while len(data) <= max_bytes and (piece := f.read(1 << 24)):  # read(n) would allocate n at once
                data += piece
    except OSError as e:
        raise ValueError(f"{path}: cannot read: {e.strerror or e}") from None
    if len(data) > max_bytes:
        raise ValueError(f"{path}: larger than {max_bytes:,} bytes, more than any JSON file this reads")
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # bad JSON or UTF-8, an integer too long, nesting too deep
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def read_json_object(path):
    value = read_json(path)
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def write_json(path, obj, indent=2):
    with atomic_write(path) as f:
        f.write(json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def lock_file(path):
    """(the open file `path`, None) holding an exclusive lock on it, with this process's id written in it; or (None, the
    id its holder wrote). The kernel drops the lock (flock) with its process, even on kill -9: none is left stuck."""
    f = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666), "r+", encoding="utf-8")  # no link
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        with f:
            return None, f.read().strip() or "?"
    f.truncate(0)
    print(os.getpid(), file=f, flush=True)
    return f, None


def append_line(path, line):
    """Append `line` and a newline to a text file (a log), whole or not at all: a write that fails (a full disk)
    is cut off again, leaving no half line, and is an OSError naming `path`."""
    data = (line + "\n").encode("utf-8")
    with open(path, "ab", buffering=0) as f:  # unbuffered: each write reaches the file, or fails, here
        size = f.seek(0, os.SEEK_END)
        try:
            while data:
                data = data[f.write(data):]  # a write can take only part of it
        except OSError as e:
            f.truncate(size)
            raise OSError(e.errno, f"{path}: cannot write: {e.strerror}") from None
