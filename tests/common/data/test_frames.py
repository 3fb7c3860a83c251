"""Multi-frame files and series (common/data/volume.py, decode.py, scan.py, manifest.py).

NIfTI volumes are written here with nibabel (so every voxel is known); multi-frame DICOM is
pydicom's own test file (emri_small.dcm: 10 frames of a head MR).
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from feddel.common.data.decode import UnreadableImage, decode_file, load_image
from feddel.common.data.manifest import manifest_rows, read_manifest, row_frame, write_manifest
from feddel.common.data.scan import scan_center

MULTIFRAME = Path(get_testdata_file("emri_small.dcm"))


def write_nifti(path: Path, volume: np.ndarray, zooms: tuple[float, ...]) -> Path:
    image = nib.Nifti1Image(volume, np.diag([*zooms[:3], 1.0]))
    image.header.set_zooms(zooms)
    nib.save(image, path)
    return path


def ramp_volume(shape: tuple[int, int, int] = (20, 16, 6), seed: int = 0) -> np.ndarray:
    """int16 (x, y, z): noise on a ramp, brighter slice by slice (so slices are told apart)."""
    rng = np.random.default_rng(seed)
    z = np.arange(shape[2])[None, None, :]
    return (100 * z + rng.integers(0, 300, shape)).astype(np.int16)


def grey(path: Path, frame: int | None) -> np.ndarray:
    return decode_file(path, frame=frame).pixels[..., 0]


# --- NIfTI --------------------------------------------------------------------------------------


def test_nifti_slices_along_the_thickest_axis_with_a_whole_volume_percentile_window(
    tmp_path: Path,
) -> None:
    volume = ramp_volume()
    path = write_nifti(tmp_path / "mr.nii.gz", volume, (1.0, 1.0, 3.0))
    low, high = np.percentile(volume.astype(np.float32), (0.5, 99.5))
    expected = np.clip(np.rint((volume - low) * (255.0 / (high - low))), 0, 255)
    decoded = decode_file(path)
    assert decoded.frames == 6 and decoded.modality == "NIFTI"
    for z in range(6):  # a slice is shown with the volume's first axis left to right
        np.testing.assert_array_equal(grey(path, z), np.rot90(expected[:, :, z]))
    means = [grey(path, z).mean() for z in range(6)]
    assert means == sorted(means)  # one window for the volume: slices keep their order
    np.testing.assert_array_equal(grey(path, None), grey(path, 3))  # default: the middle


def test_nifti_ct_gets_the_soft_tissue_window_and_a_stray_negative_voxel_does_not(
    tmp_path: Path,
) -> None:
    ct = np.full((20, 20, 4), 40, dtype=np.int16)  # soft tissue ...
    ct[:, :4] = -1000  # ... 20% air ...
    ct[10, 10] = 1000  # ... and bone
    path = write_nifti(tmp_path / "ct.nii", ct, (1.0, 1.0, 5.0))
    shown = np.rot90(grey(path, 0), -1)  # back to (x, y)
    assert shown[0, 0] == 0 and shown[10, 10] == 255
    assert shown[10, 5] == 128  # level 40 of [-160, 240]: the middle grey
    mr = ramp_volume()
    mr[0, 0, 0] = -610  # a single negative voxel (nibabel's anatomical.nii has one) is not air
    path = write_nifti(tmp_path / "mr.nii", mr, (1.0, 1.0, 3.0))
    assert np.percentile(grey(path, 3), 50) > 20  # not black as under a [-160, 240] window


def test_nifti_slice_dimension_in_the_header_wins(tmp_path: Path) -> None:
    image = nib.Nifti1Image(ramp_volume((5, 16, 12)), np.eye(4))
    image.header.set_dim_info(slice=0)  # acquired along x, though all voxels are equal
    nib.save(image, tmp_path / "sag.nii")
    decoded = decode_file(tmp_path / "sag.nii", frame=0)
    assert decoded.frames == 5 and decoded.pixels.shape == (12, 16, 3)


def test_nifti_4d_series_contributes_its_first_volume(tmp_path: Path) -> None:
    first = ramp_volume((16, 16, 4))
    series = np.stack([first, 4000 - first, first * 0, first + 7], axis=3)
    path = write_nifti(tmp_path / "fmri.nii.gz", series, (2.0, 2.0, 3.0, 2.0))
    three_d = write_nifti(tmp_path / "first.nii.gz", first, (2.0, 2.0, 3.0))
    assert decode_file(path).frames == 4
    for z in range(4):
        np.testing.assert_array_equal(grey(path, z), grey(three_d, z))


def test_float_image_reads_nan_as_black_even_below_zero(tmp_path):
    values = np.array([[-1.0, np.nan], [0.0, 1.0]], dtype=np.float32)
    Image.fromarray(values, mode="F").save(tmp_path / "float.tiff")
    pixels = decode_file(tmp_path / "float.tiff").pixels[..., 0]
    assert pixels.tolist() == [[0, 0], [128, 255]]  # the NaN had read as 0: mid-grey


def test_nifti_4d_series_reads_its_first_volume_only(tmp_path: Path) -> None:
    """The header's voxel limit counts one volume, so only that one may be read: a series cut
    off after its first volume still decodes (reading the whole series would fail here)."""
    first = ramp_volume((16, 16, 4))
    series = np.stack([first] * 50, axis=3)
    path = write_nifti(tmp_path / "long.nii", series, (2.0, 2.0, 3.0, 2.0))
    header = int(nib.load(path).dataobj.offset)
    with open(path, "r+b") as file:
        file.truncate(header + first.size * series.dtype.itemsize)
    three_d = write_nifti(tmp_path / "first.nii", first, (2.0, 2.0, 3.0))
    np.testing.assert_array_equal(grey(path, 2), grey(three_d, 2))


@pytest.mark.parametrize("damage", ["junk", "truncated"])
def test_nifti_damaged_file_is_unreadable_with_a_reason(tmp_path: Path, damage: str) -> None:
    good = write_nifti(tmp_path / "good.nii", ramp_volume(), (1.0, 1.0, 3.0)).read_bytes()
    data = b"not a volume at all" * 30 if damage == "junk" else gzip.compress(good)[:2000]
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(data)
    with pytest.raises(UnreadableImage, match="NIfTI") as info:
        decode_file(bad)
    assert info.value.path == str(bad)


# --- frames of any file -------------------------------------------------------------------------


def test_multiframe_dicom_decodes_every_frame_and_the_middle_by_default() -> None:
    frames = [grey(MULTIFRAME, k) for k in range(10)]
    assert decode_file(MULTIFRAME).frames == 10
    np.testing.assert_array_equal(grey(MULTIFRAME, None), frames[5])
    assert len({frame.tobytes() for frame in frames}) == 10  # ten different slices


def test_a_frame_that_does_not_exist_is_unreadable(tmp_path: Path) -> None:
    png = tmp_path / "one.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png)
    with pytest.raises(UnreadableImage, match=r"no frame 1 \(the file holds 1\)"):
        load_image(png, 8, frame=1)
    with pytest.raises(UnreadableImage, match=r"no frame 10 \(the file holds 10\)"):
        decode_file(MULTIFRAME, frame=10)


# --- the scan: one sample per frame, and series -------------------------------------------------


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    root = tmp_path / "center"
    (root / "mr").mkdir(parents=True)
    shutil.copy(MULTIFRAME, root / "mr" / "cine.dcm")
    (root / "exports").mkdir()
    shutil.copy(MULTIFRAME, root / "exports" / "cine-copy.dcm")
    (root / "vol").mkdir()
    write_nifti(root / "vol" / "brain.nii.gz", ramp_volume(), (1.0, 1.0, 3.0))
    (root / "slices").mkdir()
    for k in range(3):
        Image.fromarray(np.full((8, 8), 40 * k + 10, np.uint8)).save(root / f"slices/s_{k:03d}.png")
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(root / "slices" / "scout.png")
    return root


def test_scan_gives_one_sample_per_frame_with_stable_content_ids(mixed: Path) -> None:
    inventory = scan_center(mixed)
    frames = [s for s in inventory.samples if s.frame is not None]
    assert len(inventory.samples) == 10 + 6 + 3 + 1
    assert inventory.n_files == 7 and inventory.n_duplicate_files == 1  # the cine's copy
    assert {s.file for s in frames} == {"exports/cine-copy.dcm", "vol/brain.nii.gz"}
    digest = hashlib.sha256(MULTIFRAME.read_bytes()).hexdigest()
    cine = [s for s in frames if s.file == "exports/cine-copy.dcm"]  # first by name of two
    assert [s.frame for s in cine] == list(range(10))
    assert [s.sample_id for s in cine] == [
        hashlib.sha256(f"{digest}:{k}".encode()).hexdigest()[:16] for k in range(10)
    ]
    assert len({s.sample_id for s in inventory.samples}) == len(inventory.samples)
    before = {s.locator: s.sample_id for s in inventory.samples if s.file.startswith("vol/")}
    (mixed / "vol").rename(mixed / "volumes")
    after = {s.locator: s.sample_id for s in scan_center(mixed).samples}
    assert {
        key.replace("vol/", "volumes/"): v for key, v in before.items()
    }.items() <= after.items()


def test_scan_names_each_sample_s_series(mixed: Path) -> None:
    series = {s.locator: s.series for s in scan_center(mixed).samples}
    assert series["vol/brain.nii.gz#0"] == series["vol/brain.nii.gz#5"] == "file:vol/brain.nii.gz"
    cine = series["exports/cine-copy.dcm#0"]
    assert cine.startswith("dicom:1.") and series["exports/cine-copy.dcm#9"] == cine
    assert series["slices/s_000.png"] == series["slices/s_002.png"] == "folder:slices/s"
    assert series["slices/scout.png"] == "folder:slices/scout"


def test_manifest_keeps_the_frame_of_each_selected_sample(tmp_path: Path, mixed: Path) -> None:
    samples = scan_center(mixed).samples
    chosen = np.array([s.locator in ("vol/brain.nii.gz#4", "slices/scout.png") for s in samples])
    rows = manifest_rows(
        "c",
        [s.file for s in samples],
        [s.sample_id for s in samples],
        np.zeros(len(samples), dtype=int),
        np.zeros(len(samples)),
        chosen,
        [s.frame for s in samples],
    )
    read = read_manifest(write_manifest(tmp_path / "m.csv", rows))
    assert [(row["file"], row_frame(row)) for row in read] == [
        ("slices/scout.png", None),
        ("vol/brain.nii.gz", 4),
    ]
    assert row_frame({"file": "x.png"}) is None  # a manifest written before frames existed
