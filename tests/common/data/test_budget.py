"""The decoding budget: bombs under the pixel limit stay within a stated memory bound.

Three files of under 1 MB claim 10000 x 9999 pixels each (a 1-bit PNG, a 16-bit PNG, a float
TIFF); decoded naively they took 1.1, 1.5 and 1.9 GB above the interpreter, and a scan's threads
decoded them at once (3.3 GB). Peaks are measured in fresh processes (VmHWM; ru_maxrss would
carry over the forking test process) against generous bounds from common/data/budget.py; the
figures themselves come from simulations/benchmarks/decodememory.py. A reduced decode must mean
what a full one means: each mode is compared with the full decode, resized the old way.
"""

import multiprocessing
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from feddel.common.data.budget import (
    MAX_DECODE_BYTES,
    REDUCED_ABOVE,
    DecodeBudget,
    reduce_array,
    reduction,
)
from feddel.common.data.decode import UnreadableImage, decode_file, load_image, resize_square
from feddel.common.data.scan import scan_center

REPO = Path(__file__).resolve().parents[3]
SIDE = (10000, 9999)
MIB = 2**20
# (file, stored bytes a pixel in PIL): the bound of a reduced decode is its stored pixels
# plus one strip being converted (<= 32 MiB) and slack for the allocator: 128 MiB in all
BOMBS = {"bilevel.png": 1, "depth16.png": 2, "float.tif": 4}
SLACK = 128 * MIB


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bombs")
    Image.new("1", SIDE, 1).save(folder / "bilevel.png")
    Image.new("I;16", SIDE, 1234).save(folder / "depth16.png")
    Image.new("F", SIDE, 0.5).save(folder / "float.tif", compression="tiff_deflate")
    assert sum(path.stat().st_size for path in folder.iterdir()) < 1 * MIB
    return folder


def _peak_above_start(code: str, *args: str) -> int:
    """Bytes of VmHWM above VmRSS before `code` ran, in a fresh interpreter."""
    script = (
        "import re, sys\n"
        "def status(key):\n"
        "    text = open('/proc/self/status').read()\n"
        "    return int(re.search(key + r':\\s+(\\d+) kB', text).group(1)) * 1024\n"
        "from feddel.common.data.decode import load_image\n"
        "from feddel.common.data.scan import scan_center\n"
        f"before = status('VmRSS')\n{code}\n"
        "print(status('VmHWM') - before)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, *args], cwd=REPO, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    return int(done.stdout.split()[-1])


@pytest.mark.parametrize("bomb", BOMBS)
def test_a_bomb_under_the_pixel_limit_decodes_reduced_within_its_stored_bytes(bombs, bomb):
    peak = _peak_above_start("assert load_image(sys.argv[1], 64).shape == (64, 64, 3)",
                             str(bombs / bomb))  # fmt: skip
    bound = SIDE[0] * SIDE[1] * BOMBS[bomb] + SLACK
    print(f"{bomb}: {peak / MIB:.0f} MiB above the interpreter (bound {bound / MIB:.0f})")
    assert peak < bound


def test_a_scans_threads_share_one_budget(bombs):
    """Four threads over three bombs: never more than one bomb's stored pixels at once."""
    peak = _peak_above_start("scan_center(sys.argv[1], workers=4)", str(bombs))
    bound = MAX_DECODE_BYTES + SLACK  # the budget; the three together would hold 700 MB
    print(f"scan, 4 threads: {peak / MIB:.0f} MiB above the interpreter (bound {bound / MIB:.0f})")
    assert peak < bound


def test_a_reduced_decode_still_reports_the_stored_size(bombs):
    decoded = decode_file(bombs / "depth16.png", reduce_to=64)
    assert (decoded.width, decoded.height) == SIDE
    assert decoded.pixels.shape == (128, 128, 3)  # reduced by 9999 // (2 * 64) = 78
    inventory = scan_center(bombs, workers=1)
    assert {(s.width, s.height) for s in inventory.samples} == {SIDE}


def test_a_dicom_of_8_byte_pixels_is_refused_from_its_header(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.PixelData
    ds.Rows, ds.Columns, ds.BitsAllocated = 7000, 8000, 64  # 56 Mpx: under the pixel limit
    ds.DoubleFloatPixelData = b"\0" * 8
    ds.save_as(tmp_path / "double.dcm", enforce_file_format=True)
    with pytest.raises(UnreadableImage) as info:
        decode_file(tmp_path / "double.dcm")
    assert info.value.reason == (
        "too large to decode (8000x7000 at 8 bytes a pixel > 400 MB; downscale it)"
    )


# --- a reduced decode means what the full one means ------------------------------------------

WIDE = (2400, 1800)  # 4.3 Mpx: just over REDUCED_ABOVE


def _gradient(dtype: type, high: float) -> np.ndarray:
    ramp = np.linspace(0, high, WIDE[0], dtype=np.float64)
    return (ramp[None, :] * np.linspace(0.2, 1.0, WIDE[1])[:, None]).astype(dtype)


def _old_way(path: Path, size: int) -> np.ndarray:
    """What load_image returned before: the full decode, resized with antialiasing."""
    return resize_square(decode_file(path).pixels, size, Image.Resampling.BILINEAR)


def _images(folder: Path) -> dict[str, Path]:
    gradient = _gradient(np.uint8, 255)
    rgb = np.dstack([gradient, gradient[::-1], 255 - gradient])
    files = {
        "rgb.png": Image.fromarray(rgb),
        "gray16.png": Image.fromarray(_gradient(np.uint16, 60000)),
        "float.tif": Image.fromarray(_gradient(np.float32, 3.5)),
        "bilevel.png": Image.fromarray(gradient > 128),
        "palette.png": Image.fromarray(rgb).quantize(16),
        "photo.jpg": Image.fromarray(rgb),
    }
    for name, image in files.items():
        image.save(folder / name)
    write_ct(folder / "ct.dcm", _gradient(np.uint16, 4000))
    return {name: folder / name for name in [*files, "ct.dcm"]}


def write_ct(path: Path, pixels: np.ndarray) -> None:
    """A CT slice of pydicom's test data with other pixels: rescale to HU, soft-tissue window."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.set_pixel_data(pixels, photometric_interpretation="MONOCHROME2", bits_stored=16)
    ds.RescaleSlope, ds.RescaleIntercept, ds.WindowCenter, ds.WindowWidth = 1, -1024, 40, 400
    ds.save_as(path)


def test_every_mode_reduced_matches_the_full_decode_resized(tmp_path):
    assert reduction(*WIDE, 64) > 1 and WIDE[0] * WIDE[1] > REDUCED_ABOVE
    for name, path in _images(tmp_path).items():
        reduced, reference = load_image(path, 64).astype(int), _old_way(path, 64).astype(int)
        assert decode_file(path, reduce_to=64).pixels.shape[0] < WIDE[1] / 4, name
        # a box filter then the antialiased resize, against the resize alone: a few levels
        # apart where the image changes fast (the bi-level edge), close everywhere else
        assert np.abs(reduced - reference).mean() < 2.0, name
        assert np.percentile(np.abs(reduced - reference), 95) <= 6, name


def test_small_images_decode_exactly_as_before(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    assert np.array_equal(load_image(tmp_path / "a.png", 64), _old_way(tmp_path / "a.png", 64))


def test_reduce_array_averages_values_and_picks_labels():
    values = np.arange(36, dtype=np.uint16).reshape(6, 6)
    assert reduce_array(values, 3).tolist() == [[7, 10], [25, 28]]  # rounded box means
    assert reduce_array(values, 3, average=False).tolist() == [[0, 3], [18, 21]]
    assert reduce_array(values[:5, :5], 2).shape == (2, 2)  # the partial edge box is dropped


# --- the shared budget ------------------------------------------------------------------------


def test_budget_admits_what_fits_and_one_of_anything_alone():
    budget = DecodeBudget(limit=100)
    with budget.hold(1000):  # over the limit, but nothing else is in flight
        assert budget.in_use == 1000
    with budget.hold(60), budget.hold(40):
        assert (budget.in_use, budget.waiting) == (100, 0)
    assert budget.in_use == 0


def test_budget_makes_a_decode_that_does_not_fit_wait_for_the_others():
    budget, got = DecodeBudget(limit=100), []

    def second() -> None:
        with budget.hold(50):
            got.append(budget.in_use)

    with budget.hold(60):
        thread = threading.Thread(target=second)
        thread.start()
        while budget.waiting == 0 and thread.is_alive():  # until it found no room
            time.sleep(0.01)
        assert got == [] and budget.waiting == 1  # 60 + 50 > 100: it waits
    thread.join(60)
    assert got == [50] and budget.waiting == 0


def _hold_in_child(budget: DecodeBudget, held, release) -> None:
    with budget.hold(70):
        held.set()
        release.wait(60)


def test_budget_is_shared_with_a_forked_worker():
    """A DataLoader worker forked after the budget exists draws from the same counter."""
    context = multiprocessing.get_context("fork")
    budget = DecodeBudget(limit=100)
    held, release = context.Event(), context.Event()
    child = context.Process(target=_hold_in_child, args=(budget, held, release))
    child.start()
    try:
        assert held.wait(60)
        assert budget.in_use == 70  # the parent sees the child's hold
    finally:
        release.set()
        child.join(60)
    assert child.exitcode == 0 and budget.in_use == 0
