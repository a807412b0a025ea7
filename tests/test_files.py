import json
import os

import pytest

from minispan.files import atomic_write, write_json


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
