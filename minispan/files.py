"""Atomic file writes: a crash or Ctrl-C never leaves a half-written output behind.

We write to a temporary file in the destination's directory and rename it over the target;
os.replace is atomic on POSIX and Windows when both names are on the same file system.
"""
import contextlib
import json
import os
import tempfile


@contextlib.contextmanager
def atomic_write(path, mode="w", encoding="utf-8"):
    """Open a temporary file for writing; on success it replaces `path`, on error it is removed."""
    path = os.fspath(path)
    if os.path.isdir(path):  # else the final rename fails, with an error naming the temporary file
        raise IsADirectoryError(f"{path}: is a directory, expected a file name")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with open(fd, mode, **({} if "b" in mode else {"encoding": encoding})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file private (0600); give it the mode an ordinary open() would: the
        # replaced file's own, or for a new file 0666 less the umask (which can only be read by setting it).
        try:
            os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        except FileNotFoundError:
            umask = os.umask(0o022)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_json(path):
    """Read a JSON file. A file that cannot be read or is not JSON is a one-line ValueError naming it (the
    callers turn it into their own error type)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise ValueError(f"{path}: cannot read: {e.strerror or e}") from None
    except (ValueError, RecursionError) as e:  # bad JSON or UTF-8, an integer too long, nesting too deep
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def read_json_object(path):
    """Read a JSON file that must hold an object (a dict); a ValueError names the file otherwise."""
    value = read_json(path)
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def write_json(path, obj, indent=2):
    """Write `obj` as JSON, atomically."""
    with atomic_write(path) as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False)
        f.write("\n")
