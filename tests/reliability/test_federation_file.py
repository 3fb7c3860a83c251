"""A federation.json that `feddel-sim data` did not write: one line naming the file and the fix.

Plain center folders often share their parent with files of other tools; a federation.json of
another shape crashed `curate` with a TypeError traceback. Each shape below must give one line
on stderr, exit 2, name the file and say how to fix it, before anything runs.
"""

import json
from pathlib import Path

import pytest

from feddel.common.errors import DataError
from feddel.simulations.cli import main as sim_cli
from feddel.simulations.layout import center_dirs

SHAPES = {  # content -> what the message says is wrong
    "list": ("[1, 2]", "does not list centers as"),
    "centers-object": ('{"centers": {"a": 1}}', "does not list centers as"),
    "no-names": ('{"centers": [{"id": 1}]}', "does not list centers as"),
    "number-names": ('{"centers": [{"name": 7}]}', "does not list centers as"),
    "other-tool": ('{"version": 2, "sites": ["a", "b"]}', "does not list centers as"),
    "escaping-name": ('{"centers": [{"name": "../elsewhere"}]}', "names center '../elsewhere'"),
    "nested-name": ('{"centers": [{"name": "a/b"}]}', "names center 'a/b', not a folder name"),
    "twice": ('{"centers": [{"name": "a"}, {"name": "a"}]}', "lists center 'a' twice"),
    "empty": ('{"centers": []}', "lists no centers"),
    "not-json": ("centers: a, b", "is not valid JSON (Expecting value: line 1 column 1"),
    "deep": ("[" * 100_000, "is not valid JSON"),
}


@pytest.fixture
def data(tmp_path: Path) -> Path:
    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
    return tmp_path / "data"


@pytest.mark.parametrize("shape", SHAPES)
def test_a_federation_file_of_another_shape_is_one_line_and_exit_2(shape, data, capsys):
    content, problem = SHAPES[shape]
    manifest = data / "federation.json"
    manifest.write_text(content)
    out = data.parent / "run"
    assert sim_cli(["curate", "--data", str(data), "--out", str(out), "--engine", "inprocess"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith(f"error: {manifest} ") and problem in err
    assert err.endswith(f"fix {manifest} or move it away (without it every sub-folder of {data} "
                        "is a center)")  # fmt: skip
    assert not out.exists()


def test_not_utf8_is_a_json_error_too(data):
    (data / "federation.json").write_bytes(b'{"centers": "\xff"}')
    with pytest.raises(DataError, match=r"federation\.json is not valid JSON"):
        center_dirs(data)


def test_a_federation_file_of_the_right_shape_orders_the_centers(data):
    (data / "federation.json").write_text(json.dumps({"centers": [{"name": "b"}, {"name": "a"}]}))
    assert [folder.name for folder in center_dirs(data)] == ["b", "a"]


def test_a_listed_center_folder_that_is_missing_is_named(data, capsys):
    (data / "federation.json").write_text(json.dumps({"centers": [{"name": "a"}, {"name": "z"}]}))
    out = data.parent / "run"
    assert sim_cli(["curate", "--data", str(data), "--out", str(out), "--engine", "inprocess"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err == f"error: center folder(s) listed in {data / 'federation.json'} are missing: " + (
        f"{data / 'z'}"
    )
