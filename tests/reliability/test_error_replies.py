"""What a failing center tells the coordinator: one line, and none of its paths or file names.

A round over six centers where four fail, each its own way: an empty folder (a real DataError
naming the folder), a FedDELError whose text names files of the center by absolute path,
relative path and bare name, an exception of another kind (an I/O error on a patient's file),
and a center refusing by its own policy. Every error reply that leaves a center is taken from
the in-process grid's observer (what would travel) and searched for every absolute path and
every file name of the centers; the centers' own log keeps the detail.
"""

import errno
import logging
import re
import shutil
from pathlib import Path

import pytest

from feddel.client import app as client_app
from feddel.client.redact import public_reason, redact
from feddel.common.config import CurationConfig
from feddel.common.errors import DataError, Refused
from feddel.common.privacy.policy import PrivacyPolicy
from feddel.simulations.federated import run_federated
from feddel.simulations.synth import generate_federation

PATIENT_FILE = "images/smith_john_0042.png"  # a file name that says who is in it
DICOM_NAME = "IM0042"  # an extensionless DICOM-style name
REFUSAL = "min-count=1 is below this center's floor of 10 ([privacy] min-count in center.toml)"


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("error-replies")
    data = root / "data"
    generate_federation(data, centers=5, scale="small", seed=3, size=32)
    (data / "federation.json").unlink()  # every sub-folder is a center
    for center in ("center-01", "center-02"):
        frame = next((data / center / "images").glob("*.png"))
        shutil.copy(frame, data / center / PATIENT_FILE)
        shutil.copy(frame, data / center / DICOM_NAME)
    (data / "empty").mkdir()
    (data / "empty" / "notes_0042.txt").write_text("not an image")
    return root


def _fail(monkeypatch, phase, center, error):
    request_type, handler = client_app.PHASES[phase]

    def failing(request, paths):
        if paths.name == center:
            raise error(paths)
        return handler(request, paths)

    monkeypatch.setitem(client_app.PHASES, phase, (request_type, failing))


def _leaky_data_error(paths):
    return DataError(
        f"cannot read image {paths.data / PATIENT_FILE}: truncated; also {PATIENT_FILE}, "
        f"{Path(PATIENT_FILE).name} and {DICOM_NAME}; cache {paths.state / 'embeddings'}"
    )


def _io_error(paths):
    return OSError(errno.EIO, "Input/output error", str(paths.data / PATIENT_FILE))


def _names_under(folder: Path) -> set[str]:
    """Every file name below `folder`, with and without its extension, and relative path."""
    names = set()
    for path in folder.rglob("*"):
        if path.is_file():
            names |= {path.name, path.stem, path.relative_to(folder).as_posix()}
    return names


def test_error_replies_carry_no_path_or_file_name_of_the_center(federation, monkeypatch, caplog):
    _fail(monkeypatch, "seed", "center-01", _leaky_data_error)
    _fail(monkeypatch, "lloyd", "center-02", _io_error)
    _fail(monkeypatch, "score", "center-03", lambda paths: Refused(REFUSAL))
    replies = []
    config = CurationConfig(image_size=32, k=3, budget=0.2, min_fraction=0.3, min_roster=2)
    with caplog.at_level(logging.ERROR, logger="feddel.client.app"):
        summary = run_federated(
            federation / "data", federation / "run", config, engine="inprocess",
            state_root=federation / "state", policy=PrivacyPolicy(min_roster=2),
            observer=lambda _node, reply: replies.append(reply),
        )  # fmt: skip
    reasons = {r.error.reason.split(": ", 1)[0]: r.error.reason for r in replies if r.has_error()}
    assert sorted(reasons) == ["center-01", "center-02", "center-03", "empty"]
    assert summary.selected > 0 and sorted(summary.per_center) == ["center-00", "center-04"]

    secrets = _names_under(federation / "data")
    for reason in reasons.values():
        assert "\n" not in reason and str(federation) not in reason
        assert not re.search(r"(^|[\s'\"(])/", reason), reason  # no absolute path at all
        assert not [name for name in secrets if name in reason], reason
    assert reasons["empty"].startswith("empty: no images found under <data folder> (looked for")
    assert reasons["center-01"] == (
        "center-01: cannot read image <a file in the data folder>: truncated; also <file>, "
        "<file> and <file>; cache <a file in the state folder>"
    )
    assert reasons["center-02"] == "center-02: internal error in phase lloyd; see the center's log"
    assert reasons["center-03"] == f"center-03: {REFUSAL}"  # written to be sent: intact

    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert str(federation / "data" / "center-01" / PATIENT_FILE) in logged  # the detail stays
    (io_record,) = [r for r in caplog.records if "center-02" in r.getMessage()]
    assert io_record.exc_info is not None  # with its traceback, in the center's log only


def test_redact_keeps_words_that_name_folders_and_punctuation(tmp_path):
    data = tmp_path / "images-center"
    (data / "images").mkdir(parents=True)
    (data / "images" / "a_01.png").write_bytes(b"")
    folders = {"data folder": data}
    text = f"no images found under {data}. See {data}/images/a_01.png: zero bytes, k=4/2"
    assert redact(text, folders) == (
        "no images found under <data folder>. See <a file in the data folder>: zero bytes, k=4/2"
    )
    assert redact("weights /opt/models/vit.pth: bad", {}) == "weights <path>: bad"


def test_redact_takes_names_with_spaces_and_commas_whole(tmp_path):
    data = tmp_path / "data"
    (data / "John Smith").mkdir(parents=True)
    (data / "John Smith" / "IM0001").write_bytes(b"")
    (data / "Müller, Anna").mkdir()
    (data / "Müller, Anna" / "scan 01.png").write_bytes(b"")
    folders = {"data folder": data}
    assert redact(f"cannot read {data}/John Smith/IM0001: truncated", folders) == (
        "cannot read <a file in the data folder>: truncated"
    )
    assert redact(f"bad {data}/Müller, Anna/scan 01.png, skipped", folders) == (
        "bad <a file in the data folder>, skipped"
    )
    assert redact("also John Smith/IM0001 and Müller, Anna/scan 01.png; done", folders) == (
        "also <file> and <file>; done"
    )
    # a path that no longer exists goes up to the next colon: no half of it is left
    assert redact(f"lost {data}/Jane Doe/IM2: gone", folders) == (
        "lost <a file in the data folder>: gone"
    )
    assert redact(r"see C:\Users\Jane Doe\x.dcm: bad", {}) == "see <path>: bad"


def test_public_reason_is_one_bounded_line():
    long = DataError("line one\nline two " + "x" * 1000)
    reason = public_reason(long, "seed", {})
    assert reason.startswith("line one line two x") and len(reason) == 400
    assert public_reason(ValueError("/secret"), "keys", {}) == (
        "internal error in phase keys; see the center's log"
    )
