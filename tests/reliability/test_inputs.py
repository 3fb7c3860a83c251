"""Bad input files at a center: each is skipped with a reason or converted, and the run goes on.

One folder holds what hospital exports contain: corrupt, truncated and zero-byte files, a
text file and a PNG under image names of another format, 16-bit, grayscale, RGBA, CMYK,
bi-level and float images, decompression bombs of every format (20,000 px headers over a
few bytes), DICOM without pixel data or cut short, a file name that is not UTF-8, a pipe and a
dangling link. tests/common/data/test_scan.py checks each decoder rule on its own; here the whole
folder goes through the scan, `feddel-center check`, a curation round, and a memory bound.
"""

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from feddel.client.cli import main as center_cli
from feddel.common.config import CurationConfig
from feddel.common.data.decode import decode_file
from feddel.common.data.scan import load_image, scan_center
from feddel.common.io import read_csv
from feddel.common.privacy.policy import PrivacyPolicy
from feddel.simulations.federated import run_federated

REPO = Path(__file__).resolve().parents[2]
NOT_UTF8 = b"caf\xe9.png".decode("utf-8", "surrogateescape")  # how Python holds a Latin-1 name
BOMB = "too large (20000x20000 > 100000000 pixels; downscale it)"
UNREADABLE = {
    "bomb.bmp": BOMB,
    "bomb.dcm": BOMB,
    "bomb.jpg": BOMB,
    "bomb.png": BOMB,
    "bomb.tif": BOMB,
    "big.png": "too large (12000x12000 > 100000000 pixels; downscale it)",
    "corrupt.png": "not a recognized image format",
    "notes.png": "not a recognized image format",
    "cut.dcm": "truncated or corrupt DICOM data",
    "plan.dcm": "DICOM without pixel data",
    "truncated.jpg": "truncated or corrupt image data",
    "zero.png": "zero-byte file",
}
CONVERTED = {  # file: (modality, width, height)
    "IM0001": ("DICOM:CT", 128, 128),
    "alpha.png": ("PNG", 40, 48),
    "bilevel.png": ("PNG", 40, 48),
    "cmyk.jpg": ("JPEG", 40, 48),
    "depth16.png": ("PNG", 30, 30),
    "depth16.tif": ("TIFF", 30, 30),
    "float_nan.tif": ("TIFF", 20, 20),
    "gray.png": ("PNG", 40, 48),
    NOT_UTF8: ("PNG", 40, 48),
    "ok.png": ("PNG", 40, 48),
    "photo.jpg": ("JPEG", 40, 48),
}


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height RGB over no pixel data: a decompression bomb."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IEND", b"")


def _patched(image: np.ndarray, fmt: str, offsets_and_format: list[tuple[int, str]]) -> bytes:
    """A tiny real file of `fmt` whose header size fields are rewritten to 20,000 px."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, fmt)
    data = bytearray(buffer.getvalue())
    for offset, layout in offsets_and_format:
        struct.pack_into(layout, data, offset, *([20000] * (len(layout) - 1)))
    return bytes(data)


def _tiff_size_fields(data: bytes) -> list[tuple[int, str]]:
    """Offsets of the ImageWidth/ImageLength values in a little-endian baseline TIFF."""
    (ifd,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, ifd)
    fields = []
    for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
        tag, kind = struct.unpack_from("<HH", data, entry)
        if tag in (256, 257):
            fields.append((entry + 8, "<H" if kind == 3 else "<I"))
    return fields


def write_bad_center(root: Path) -> Path:
    """Every bad or odd file of the module docstring, in `root` (created)."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "ok.png")
    shutil.copy(root / "ok.png", root / "png_named.jpg")  # decoded by content: a copy of ok.png
    Image.fromarray(rgb).save(root / "photo.jpg", quality=90)
    jpeg = (root / "photo.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "zero.png").write_bytes(b"")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(300))
    (root / "notes.png").write_text("this is not an image")
    Image.fromarray(rgb[..., 0]).save(root / "gray.png")
    depth = rng.integers(1000, 60000, (30, 30)).astype(np.uint16)
    Image.fromarray(depth).save(root / "depth16.png")
    Image.fromarray(depth).save(root / "depth16.tif")
    alpha = np.full(rgb.shape[:2], 128, np.uint8)
    Image.fromarray(np.dstack([rgb, alpha])).save(root / "alpha.png")
    Image.fromarray(rgb).convert("CMYK").save(root / "cmyk.jpg")
    Image.fromarray(rgb[..., 0] > 128).save(root / "bilevel.png")
    floats = np.full((20, 20), np.nan, np.float32)
    floats[:10] = 1.0
    Image.fromarray(floats).save(root / "float_nan.tif")
    (root / NOT_UTF8).write_bytes(_png_bytes(rgb[::-1]))
    # bombs: real headers of each format claiming 20,000 x 20,000 (1.2 GB as RGB)
    (root / "bomb.png").write_bytes(_png_header(20000, 20000))
    (root / "big.png").write_bytes(_png_header(12000, 12000))  # above ours, below PIL's limit
    sof = jpeg.find(b"\xff\xc0")
    (root / "bomb.jpg").write_bytes(_patched(rgb, "JPEG", [(sof + 5, ">HH")]))
    (root / "bomb.bmp").write_bytes(_patched(rgb[:2, :2], "BMP", [(18, "<ii")]))
    tiff = _patched(rgb[:2, :2], "TIFF", [])
    (root / "bomb.tif").write_bytes(_patched(rgb[:2, :2], "TIFF", _tiff_size_fields(tiff)))
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ct.Rows = ct.Columns = 20000
    ct.save_as(root / "bomb.dcm")
    shutil.copy(get_testdata_file("CT_small.dcm"), root / "IM0001")  # DICOM, no extension
    shutil.copy(get_testdata_file("rtplan.dcm"), root / "plan.dcm")  # no pixel data
    dicom = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    (root / "cut.dcm").write_bytes(dicom[: len(dicom) // 2])
    os.mkfifo(root / "pipe.png")  # opening it would block the scan forever
    (root / "gone.png").symlink_to(root / "deleted.png")
    return root


def _png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def bad_center(tmp_path_factory) -> Path:
    return write_bad_center(tmp_path_factory.mktemp("bad") / "data" / "bad-center")


def test_scan_center_skips_or_converts_every_bad_file_with_its_reason(bad_center):
    inventory = scan_center(bad_center, workers=2)
    assert {u.file: u.reason for u in inventory.unreadable} == UNREADABLE
    converted = {s.file: (s.modality, s.width, s.height) for s in inventory.samples}
    assert converted == CONVERTED
    assert list(inventory.duplicates.values()) == [["ok.png", "png_named.jpg"]]
    assert inventory.ignored == 2  # the pipe and the dangling link, never opened
    for file in CONVERTED:
        image = load_image(bad_center / file, 32)
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8


def test_odd_pixel_formats_convert_to_what_their_pixels_mean(bad_center):
    def pixels(name):
        return decode_file(bad_center / name).pixels

    nan_rows = pixels("float_nan.tif")
    assert (nan_rows[:10] == 255).all() and (nan_rows[10:] == 0).all()  # NaN reads as dark
    assert set(np.unique(pixels("bilevel.png"))) == {0, 255}
    depth = pixels("depth16.png")
    assert (depth.min(), depth.max()) == (0, 255)  # stretched by its own range
    np.testing.assert_array_equal(depth, pixels("depth16.tif"))
    cmyk, rgb = pixels("cmyk.jpg").astype(int), pixels("ok.png").astype(int)
    assert np.abs(cmyk - rgb).mean() < 8  # JPEG loss only
    alpha = pixels("alpha.png").astype(int)
    assert np.abs(alpha - rgb * 128 // 255).max() <= 1  # composited on black


def test_bombs_are_refused_from_their_headers_without_allocating_the_pixels(bad_center):
    """A 20,000 px RGB image is 1.2 GB; refusing it must cost nothing like that. The peak is
    the fresh process's VmHWM (ru_maxrss would carry over the forking test process)."""
    script = (
        "import re, sys\n"
        "from feddel.common.data.decode import UnreadableImage, decode_file\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        decode_file(path)\n"
        "    except UnreadableImage as exc:\n"
        "        print(exc.reason)\n"
        "status = open('/proc/self/status').read()\n"
        "print(re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1))\n"
    )
    bombs = sorted(name for name in UNREADABLE if name.startswith(("bomb", "big")))
    proc = subprocess.run(
        [sys.executable, "-c", script, *(str(bad_center / name) for name in bombs)],
        cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    *reasons, peak_kib = proc.stdout.split("\n")[:-1]
    assert reasons == [UNREADABLE[name] for name in bombs]
    assert int(peak_kib) < 200 * 1024  # ~55 MiB: the interpreter, numpy, PIL and pydicom
    assert "Warning" not in proc.stderr


def test_center_check_lists_every_unreadable_file_and_exits_0(bad_center, tmp_path, capsys):
    out = tmp_path / "check.json"
    assert center_cli(["check", "--data", str(bad_center), "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    listed = {row["file"]: row["reason"] for row in summary["unreadable_files"]}
    assert listed == UNREADABLE
    assert summary["unreadable_reasons"][BOMB] == 5
    assert (summary["files"], summary["samples"], summary["ignored"]) == (24, 11, 2)
    printed = capsys.readouterr()
    assert "plan.dcm" in printed.out and "Warning" not in printed.err


def test_round_over_a_center_of_bad_files_selects_and_names_files_as_on_disk(bad_center):
    """The round goes on; a manifest names the non-UTF-8 file by its real bytes."""
    out = bad_center.parent.parent / "run"
    config = CurationConfig(image_size=32, k=2, k_local=2, min_count=2, method="full", min_roster=1)
    alone = PrivacyPolicy(min_members=2, min_roster=1)  # one center: its sums are its own
    summary = run_federated(bad_center.parent, out, config, engine="inprocess", policy=alone)
    row = summary.per_center["bad-center"]
    assert (row.files, row.unreadable, row.duplicate_files) == (24, 12, 1)
    assert row.samples == row.selected == 11
    selected = {r["file"] for r in read_csv(out / "selection.csv")}
    assert selected == set(CONVERTED)
    assert all((bad_center / file).is_file() for file in selected)
    assert (bad_center / NOT_UTF8).is_file() and NOT_UTF8 in selected
