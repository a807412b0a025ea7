import contextlib
import errno
import json
import os
import stat
import subprocess
import sys
import threading

import pytest

from minispan.files import append_line, atomic_write, lock_file, read_json, write_json


def test_write_json_round_trip(tmp_path):
    path = tmp_path / "sub" / "out.json"
    write_json(path, {"a": 1, "é": [1, 2]})
    assert json.loads(path.read_text(encoding="utf-8")) == {"a": 1, "é": [1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["out.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600
    # Replacing a file keeps its mode, as writing it in place would.
    path.chmod(0o604)  # a mode no usual umask gives a new file
    write_json(path, {"b": 2})
    assert path.stat().st_mode & 0o777 == 0o604 and json.loads(path.read_text()) == {"b": 2}


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write("half")
            raise RuntimeError("crash mid-write")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_read_json_object_names_the_file(tmp_path):
    from minispan.config import BertConfig, ConfigError
    from minispan.files import read_json_object

    good, broken, listed = tmp_path / "good.json", tmp_path / "broken.json", tmp_path / "list.json"
    good.write_text('{"a": 1}')
    broken.write_text('{"a": ')
    listed.write_text("[1, 2]")
    assert read_json_object(good) == {"a": 1}
    with pytest.raises(ValueError, match=r"broken\.json: not valid JSON"):
        read_json_object(broken)
    with pytest.raises(ValueError, match=r"list\.json: expected a JSON object, got list"):
        read_json_object(listed)
    with pytest.raises(ValueError, match=r"absent\.json: cannot read: No such file or directory"):
        read_json_object(tmp_path / "absent.json")
    with pytest.raises(ConfigError, match=r"list\.json: expected a JSON object"):  # config.json errors stay ConfigErrors
        BertConfig.from_json(listed)
    # What json raises beyond JSONDecodeError: nesting past the recursion limit, an integer past Python's
    # 4,300-digit limit. Both are one line naming the file, not a traceback.
    deep, huge = tmp_path / "deep.json", tmp_path / "huge.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    huge.write_text('{"a": ' + "9" * 5000 + "}")
    for path in (deep, huge):
        with pytest.raises(ValueError, match=rf"{path.name}: not valid JSON"):
            read_json_object(path)


def test_only_regular_files_are_replaced(tmp_path):
    """A FIFO and a device are written in place (replacing /dev/null with a regular file breaks the
    machine); a symlink is written through to its target, which keeps its mode; no temporary file is left."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader, so that opening it to write does not block
    try:
        write_json(fifo, {"a": 1})
        assert stat.S_ISFIFO(fifo.lstat().st_mode) and json.loads(os.read(reader, 1000)) == {"a": 1}
    finally:
        os.close(reader)
    target, link, dangling = tmp_path / "target.json", tmp_path / "link.json", tmp_path / "dangling.json"
    target.write_text("old")
    target.chmod(0o604)
    link.symlink_to(target)
    dangling.symlink_to(tmp_path / "new.json")
    write_json(link, {"b": 2})
    write_json(dangling, {"c": 3})
    assert link.is_symlink() and json.loads(target.read_text()) == {"b": 2} and target.stat().st_mode & 0o777 == 0o604
    assert dangling.is_symlink() and json.loads((tmp_path / "new.json").read_text()) == {"c": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling.json", "fifo", "link.json", "new.json",
                                                         "target.json"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0, reason="making a device node needs root")
def test_a_device_stays_a_device(tmp_path):
    null = tmp_path / "null"
    os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # what /dev/null is, in a folder of our own
    try:
        open(null, "w").close()
    except PermissionError:
        pytest.skip("device nodes cannot be opened here (a nodev mount)")
    write_json(null, {"a": 1})
    assert stat.S_ISCHR(null.lstat().st_mode) and os.listdir(tmp_path) == ["null"]


def test_write_errors_name_the_path_not_the_temporary_file(tmp_path, monkeypatch):
    """Disk full at fsync, a rename refused, no temporary file allowed: the user's path in the error, the
    old contents intact, nothing left behind."""
    path = tmp_path / "out.json"
    path.write_text("old")
    failures = [("os.fsync", lambda fd: _raise(OSError(errno.ENOSPC, "No space left on device"))),
                ("os.replace", lambda a, b: _raise(PermissionError(errno.EACCES, "Permission denied", a, None, b))),
                ("tempfile.mkstemp", lambda **kw: _raise(PermissionError(errno.EACCES, "Permission denied",
                                                                          str(tmp_path / ".out.json.x.tmp"))))]
    for name, fail in failures:
        with monkeypatch.context() as m:
            m.setattr(name, fail)
            with pytest.raises(OSError) as raised:
                write_json(path, {"new": 1})
        assert str(raised.value).endswith(f": {str(path)!r}") and ".tmp" not in str(raised.value), name
        assert path.read_text() == "old" and os.listdir(tmp_path) == ["out.json"]


def _raise(error):
    raise error


def test_read_json_reads_a_bounded_amount(tmp_path):
    """/dev/zero or a FIFO that never ends would fill memory: past max_bytes, one line naming the file."""
    big, fifo = tmp_path / "big.json", tmp_path / "endless.json"
    big.write_text("[" + "0," * 600 + "0]")
    os.mkfifo(fifo)

    def endless():  # writes until the reader goes away (at most 100 MB, should it never stop reading)
        with contextlib.suppress(BrokenPipeError), open(fifo, "wb") as f:
            f.write(b"[")
            for _ in range(1600):
                f.write(b"0," * 32768)

    writer = threading.Thread(target=endless, daemon=True)
    writer.start()
    for path in (big, fifo):
        with pytest.raises(ValueError, match=rf"^{path}: larger than 1,000 bytes"):
            read_json(path, max_bytes=1000)
    writer.join(timeout=60)
    assert read_json(big, max_bytes=2000) == [0] * 601


def test_append_line_is_whole_or_not_at_all(tmp_path):
    """A log line cut by a full disk would break every later reader of log.jsonl: the write that fails is cut
    off again, and the error names the file. The full disk is real: a child process with RLIMIT_FSIZE."""
    log = tmp_path / "log.jsonl"
    append_line(log, '{"step": 1}')
    script = (
        "import resource, signal, sys\n"
        "from minispan.files import append_line\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit: EFBIG, not a killed process\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))\n"
        "try:\n"
        "    append_line(sys.argv[1], '{\"step\": 2, \"pad\": \"' + 'x' * 200 + '\"}')\n"
        "except OSError as e:\n"
        "    print(e)\n")
    out = subprocess.run([sys.executable, "-c", script, str(log)], capture_output=True, text=True, check=True)
    assert out.stdout.startswith(f"[Errno {errno.EFBIG}] {log}: cannot write: "), out.stdout + out.stderr
    assert log.read_text() == '{"step": 1}\n'


def test_the_run_lock_is_never_taken_through_a_link(tmp_path):
    """.lock gets this process's id written in it: a link placed there must not send that over another file."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / ".lock").symlink_to(victim)
    with pytest.raises(OSError):
        lock_file(tmp_path / ".lock")
    assert victim.read_text() == "precious"
    held, holder = lock_file(tmp_path / "real.lock")
    assert holder is None and (tmp_path / "real.lock").read_text() == f"{os.getpid()}\n"
    held.close()
