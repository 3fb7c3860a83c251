"""Scanning a center's folder and decoding its images (common/data/scan.py, common/data/decode.py).

Real files only: DICOM from pydicom's test data (pydicom-data), photographs and a fundus image
from scikit-image, written to tmp_path in the formats a hospital export produces.
"""

from __future__ import annotations

import hashlib
import pickle
import shutil
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import get_decoder
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from skimage import data as skdata

from feddel.common.data.decode import decode_file
from feddel.common.data.scan import (
    Inventory,
    UnreadableImage,
    load_image,
    load_mask,
    scan_center,
)
from feddel.common.errors import DataError

SIZE = 32


def astronaut() -> np.ndarray:
    return skdata.astronaut()  # (512, 512, 3) uint8


def dicom(name: str) -> Path:
    return Path(get_testdata_file(name))


def write_dicom(path: Path, pixels: np.ndarray, photometric: str, **tags: object) -> Path:
    """A minimal secondary-capture DICOM file with `pixels` (rows, cols) and extra tags."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(path)])
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.set_pixel_data(pixels, photometric_interpretation=photometric, bits_stored=16)
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height (no real pixel data): a decompression bomb."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )
    return path


def tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --- decoding: PIL formats --------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".png", ".tif", ".bmp"])
def test_decode_file_lossless_formats_round_trip_exactly(tmp_path: Path, ext: str) -> None:
    rgb = astronaut()
    Image.fromarray(rgb).save(tmp_path / f"a{ext}")
    decoded = decode_file(tmp_path / f"a{ext}")
    assert np.array_equal(decoded.pixels, rgb)
    assert (decoded.width, decoded.height) == (512, 512)
    assert decoded.modality == {".png": "PNG", ".tif": "TIFF", ".bmp": "BMP"}[ext]


@pytest.mark.parametrize(
    "image",
    [skdata.retina, skdata.astronaut, skdata.immunohistochemistry],
    ids=lambda f: f.__name__,
)
def test_load_image_real_photographs_give_square_rgb_uint8(tmp_path: Path, image) -> None:
    rgb = image()
    Image.fromarray(rgb).save(tmp_path / "x.jpg", quality=90)
    out = load_image(tmp_path / "x.jpg", SIZE)
    assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8
    assert out.std() > 10
    # the resize averages: its mean stays close to the original's
    assert abs(out.mean() - rgb.mean()) < 5


def test_load_image_wrong_extension_decodes_by_content(tmp_path: Path) -> None:
    rgb = astronaut()
    Image.fromarray(rgb).save(tmp_path / "really_a_png.jpg", format="PNG")
    decoded = decode_file(tmp_path / "really_a_png.jpg")
    assert decoded.modality == "PNG"
    assert np.array_equal(decoded.pixels, rgb)


def test_decode_file_grayscale_is_replicated_to_three_channels(tmp_path: Path) -> None:
    gray = skdata.camera()
    Image.fromarray(gray).save(tmp_path / "g.png")
    pixels = decode_file(tmp_path / "g.png").pixels
    assert pixels.shape == (*gray.shape, 3)
    for channel in range(3):
        assert np.array_equal(pixels[..., channel], gray)


def test_decode_file_16bit_is_minmax_scaled_by_its_own_range(tmp_path: Path) -> None:
    values = np.array([[1000, 2000], [3000, 5000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    pixels = decode_file(tmp_path / "g16.png").pixels
    # (v - 1000) * 255 / 4000 = 0, 63.75, 127.5, 255 -> rounded
    assert pixels[..., 0].tolist() == [[0, 64], [128, 255]]


def test_decode_file_rgba_is_composited_on_black(tmp_path: Path) -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (200, 100, 50, 128)  # half transparent
    rgba[0, 1] = (200, 100, 50, 255)  # opaque
    rgba[1, 0] = (200, 100, 50, 0)  # fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    pixels = decode_file(tmp_path / "a.png").pixels
    assert pixels[0, 0].tolist() == [200 * 128 // 255, 100 * 128 // 255, 50 * 128 // 255]
    assert pixels[0, 1].tolist() == [200, 100, 50]
    assert pixels[1, 0].tolist() == [0, 0, 0]


def test_decode_file_palette_with_transparency_is_composited_on_black(tmp_path: Path) -> None:
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    image.putdata([0, 1])
    image.save(tmp_path / "p.png", transparency=1)
    assert decode_file(tmp_path / "p.png").pixels[0].tolist() == [[255, 0, 0], [0, 0, 0]]


# --- decoding: DICOM --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "modality", "shape"),
    [
        ("CT_small.dcm", "DICOM:CT", (128, 128)),
        ("MR_small.dcm", "DICOM:MR", (64, 64)),
        ("US1_UNCR.dcm", "DICOM:US", (480, 640)),
        ("RG3_UNCR.dcm", "DICOM:CR", (1760, 1760)),
        ("OBXXXX1A.dcm", "DICOM:US", (600, 800)),  # palette colour
        ("examples_ybr_color.dcm", "DICOM:US", (240, 320)),  # JPEG, YBR, 30 frames
    ],
)
def test_decode_file_real_dicom(name: str, modality: str, shape: tuple[int, int]) -> None:
    decoded = decode_file(dicom(name))
    assert decoded.modality == modality
    assert decoded.pixels.shape == (*shape, 3) and decoded.pixels.dtype == np.uint8
    assert decoded.pixels.min() == 0 or modality == "DICOM:US"
    assert decoded.pixels.std() > 5
    assert load_image(dicom(name), SIZE).shape == (SIZE, SIZE, 3)


def test_decode_file_dicom_rgb_keeps_pixels_exactly() -> None:
    path = dicom("US1_UNCR.dcm")
    assert np.array_equal(decode_file(path).pixels, pydicom.dcmread(path).pixel_array)


def test_decode_file_dicom_palette_gives_colour() -> None:
    pixels = decode_file(dicom("OBXXXX1A.dcm")).pixels.astype(int)
    assert np.abs(pixels[..., 0] - pixels[..., 2]).max() > 50


def test_decode_file_dicom_ybr_matches_the_same_image_stored_as_rgb() -> None:
    ybr_path = dicom("SC_ybr_full_uncompressed.dcm")
    ybr = decode_file(ybr_path).pixels.astype(int)
    rgb = decode_file(dicom("SC_rgb.dcm")).pixels.astype(int)
    raw = pydicom.pixels.pixel_array(ybr_path, raw=True).astype(int)  # unconverted YCbCr
    assert np.abs(ybr - rgb).mean() < 1 and np.abs(ybr - rgb).max() <= 8  # rounding only
    assert np.abs(raw - rgb).mean() > 50


def test_decode_file_dicom_multiframe_takes_the_middle_frame() -> None:
    path = dicom("emri_small.dcm")
    ds = pydicom.dcmread(path)
    frames = ds.pixel_array.astype(np.float64)  # (10, 64, 64), no rescale or window tags
    assert frames.shape == (10, 64, 64) and "WindowCenter" not in ds
    middle = frames[5]
    expected = np.rint((middle - middle.min()) * 255 / (middle.max() - middle.min()))
    decoded = decode_file(path).pixels
    assert np.array_equal(decoded[..., 0], expected.astype(np.uint8))
    assert not np.array_equal(frames[0], middle)


def test_decode_file_monochrome1_is_inverted_so_high_values_are_dark(tmp_path: Path) -> None:
    ramp = np.array([[0, 100], [200, 400]], dtype=np.uint16)
    mono1 = decode_file(write_dicom(tmp_path / "m1.dcm", ramp, "MONOCHROME1")).pixels[..., 0]
    mono2 = decode_file(write_dicom(tmp_path / "m2.dcm", ramp, "MONOCHROME2")).pixels[..., 0]
    assert mono2.tolist() == [[0, 64], [128, 255]]  # 255 * v / 400, rounded
    assert mono1.tolist() == [[255, 191], [127, 0]]  # the highest value is black


def test_decode_file_dicom_applies_rescale_then_window(tmp_path: Path) -> None:
    raw = np.array([[0, 100], [200, 300]], dtype=np.uint16)
    path = write_dicom(
        tmp_path / "w.dcm",
        raw,
        "MONOCHROME2",
        RescaleSlope=1,
        RescaleIntercept=-100,
        WindowCenter=50,
        WindowWidth=101,
    )
    gray = decode_file(path).pixels[..., 0]
    # rescaled: -100, 0, 100, 200; the window [-0.5, 99.5] saturates 100 and 200 alike
    assert gray[0, 0] == 0 and gray[1, 0] == gray[1, 1] == 255
    assert gray[0, 1] <= 2


def test_decode_file_dicom_without_pixel_data_is_unreadable(tmp_path: Path) -> None:
    ds = pydicom.dcmread(dicom("CT_small.dcm"))
    del ds.PixelData
    ds.save_as(tmp_path / "nopixels.dcm")
    for path in (tmp_path / "nopixels.dcm", dicom("rtplan.dcm")):
        with pytest.raises(UnreadableImage) as info:
            decode_file(path)
        assert info.value.reason == "DICOM without pixel data"


def test_decode_file_truncated_dicom_is_unreadable() -> None:
    with pytest.raises(UnreadableImage) as info:
        decode_file(dicom("MR_truncated.dcm"))
    assert info.value.reason == "truncated or corrupt DICOM data"


def test_decode_file_raw_dicom_without_preamble_decodes_by_force(tmp_path: Path) -> None:
    ds = pydicom.dcmread(dicom("CT_small.dcm"))
    reference = decode_file(dicom("CT_small.dcm")).pixels
    ds.preamble = None
    del ds.file_meta
    ds.save_as(tmp_path / "raw.dcm", implicit_vr=True, little_endian=True)
    assert (tmp_path / "raw.dcm").read_bytes()[128:132] != b"DICM"
    decoded = decode_file(tmp_path / "raw.dcm")
    assert decoded.modality == "DICOM:CT"
    assert np.array_equal(decoded.pixels, reference)


def test_decode_file_dicom_compression_without_plugin_says_what_to_install() -> None:
    path = dicom("JPGLosslessP14SV1_1s_1f_8b.dcm")
    if get_decoder(pydicom.dcmread(path).file_meta.TransferSyntaxUID).is_available:
        pytest.skip(reason="a JPEG Lossless plugin is installed here; the file decodes")
    with pytest.raises(UnreadableImage, match="install pylibjpeg") as info:
        decode_file(path)
    assert info.value.reason.startswith("unsupported DICOM compression (JPEG Lossless")


def test_decode_file_every_pydicom_test_file_decodes_or_gives_a_reason() -> None:
    """Robustness: 280 real and deliberately broken files; none may raise anything else."""
    folders = {Path(pydicom.data.__file__).parent, dicom("SC_rgb.dcm").parent}
    files = sorted(p for folder in folders for p in folder.rglob("*") if p.is_file())
    decoded, reasons = 0, set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns on the deliberately invalid files
        for path in files:
            try:
                pixels = decode_file(path).pixels
                assert pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.dtype == np.uint8
                decoded += 1
            except UnreadableImage as exc:
                reasons.add(exc.reason)
    assert len(files) > 200 and decoded > 100
    assert {"DICOM without pixel data", "truncated or corrupt DICOM data"} <= reasons


# --- decoding: failures -----------------------------------------------------------------------


def test_decode_file_zero_bytes_and_truncated_png_give_reasons(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    Image.fromarray(astronaut()).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.png").write_text("not an image")
    reasons = {}
    for name in ("empty.png", "cut.png", "text.png"):
        with pytest.raises(UnreadableImage) as info:
            decode_file(tmp_path / name)
        reasons[name] = info.value.reason
        assert name in str(info.value)
    assert reasons == {
        "empty.png": "zero-byte file",
        "cut.png": "truncated or corrupt image data",
        "text.png": "not a recognized image format",
    }


def test_decode_file_huge_header_is_refused_before_decoding(tmp_path: Path) -> None:
    path = png_header_only(tmp_path / "bomb.png", 20000, 20000)
    with pytest.raises(UnreadableImage) as info:
        decode_file(path)
    assert info.value.reason == "too large (20000x20000 > 100000000 pixels; downscale it)"


def test_decode_file_pixel_limit_applies_to_pil_and_dicom(tmp_path: Path) -> None:
    Image.fromarray(astronaut()).save(tmp_path / "a.png")
    with pytest.raises(UnreadableImage, match=r"too large \(512x512 > 1000 pixels"):
        decode_file(tmp_path / "a.png", max_pixels=1000)
    with pytest.raises(UnreadableImage, match=r"too large \(640x480 > 1000 pixels"):
        decode_file(dicom("US1_UNCR.dcm"), max_pixels=1000)


def test_unreadable_image_survives_pickling_for_loader_workers() -> None:
    error = pickle.loads(pickle.dumps(UnreadableImage("a/b.png", "zero-byte file")))
    assert (error.path, error.reason, str(error)) == (
        "a/b.png",
        "zero-byte file",
        "cannot read image a/b.png: zero-byte file",
    )
    assert isinstance(error, DataError)


def test_load_image_rejects_bad_size(tmp_path: Path) -> None:
    Image.fromarray(astronaut()).save(tmp_path / "a.png")
    with pytest.raises(DataError, match="image size 0 must be a positive integer"):
        load_image(tmp_path / "a.png", 0)


# --- masks ------------------------------------------------------------------------------------


@pytest.mark.parametrize("high", [1, 255])
def test_load_mask_thresholds_at_half_max_and_resizes_nearest(tmp_path: Path, high: int) -> None:
    mask = np.zeros((4, 4), dtype=np.uint8)
    mask[:, :2] = high
    Image.fromarray(mask).save(tmp_path / "m.png")
    out = load_mask(tmp_path / "m.png", 8)
    assert out.dtype == np.bool_ and out.shape == (8, 8)
    assert out[:, :4].all() and not out[:, 4:].any()


def test_load_mask_noisy_jpeg_and_empty_mask(tmp_path: Path) -> None:
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[16:48, 16:48] = 255
    Image.fromarray(mask).save(tmp_path / "m.jpg", quality=75)
    out = load_mask(tmp_path / "m.jpg", 64)
    assert np.mean(out == (mask > 0)) > 0.99
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "empty.png")
    assert not load_mask(tmp_path / "empty.png", 4).any()


# --- scanning ---------------------------------------------------------------------------------


@pytest.fixture
def center(tmp_path: Path) -> Path:
    """A small center folder with every case the scanner must handle."""
    root = tmp_path / "center"
    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    Image.fromarray(skdata.retina()[::4, ::4]).save(images / "retina.png")
    shutil.copy(images / "retina.png", images / "retina_copy.png")
    shutil.copy(images / "retina.png", images / "zz_again.png")
    Image.fromarray(astronaut()).save(images / "astro.jpg")
    Image.fromarray(skdata.camera()).save(images / "camera.tif")
    shutil.copy(dicom("CT_small.dcm"), images / "IM0001")  # DICOM without extension
    shutil.copy(dicom("rtplan.dcm"), images / "plan.dcm")
    (images / "empty.png").write_bytes(b"")
    data = (images / "retina.png").read_bytes()
    (images / "cut.png").write_bytes(data[: len(data) // 3])
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(masks / "retina.png")
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(masks / "astro.bmp")
    (root / "labels.csv").write_text("file,label\n")
    (root / "README").write_text("no extension, not DICOM")
    (root / ".hidden.png").write_bytes(data)
    (root / ".cache").mkdir()
    Image.fromarray(astronaut()[:64, :64]).save(root / ".cache" / "x.png")
    for reserved in ("test/images", "Test2/TEST", "extra/MASKS"):
        (root / reserved).mkdir(parents=True)
        Image.fromarray(astronaut()[:32, :32]).save(root / reserved / "held_out.png")
    return root


def test_scan_center_counts_every_case(center: Path) -> None:
    inventory = scan_center(center, workers=1)
    assert [s.file for s in inventory.samples] == [
        "images/IM0001",
        "images/astro.jpg",
        "images/camera.tif",
        "images/retina.png",
    ]
    assert {u.file: u.reason for u in inventory.unreadable} == {
        "images/cut.png": "truncated or corrupt image data",
        "images/empty.png": "zero-byte file",
        "images/plan.dcm": "DICOM without pixel data",
    }
    retina = next(s for s in inventory.samples if s.file == "images/retina.png")
    assert inventory.duplicates == {
        retina.sample_id: ["images/retina.png", "images/retina_copy.png", "images/zz_again.png"]
    }
    assert (inventory.n_files, inventory.n_readable, inventory.n_duplicate_files) == (9, 6, 2)
    assert inventory.ignored == 2  # labels.csv, README
    assert {s.file: s.mask for s in inventory.samples} == {
        "images/IM0001": None,
        "images/astro.jpg": "masks/astro.bmp",
        "images/camera.tif": None,
        "images/retina.png": "masks/retina.png",
    }
    assert inventory.n_masks == 2
    assert inventory.modalities() == {"DICOM:CT": 1, "JPEG": 1, "TIFF": 1, "PNG": 1}
    assert (retina.width, retina.height) == (353, 353)
    assert inventory.size_stats() == {
        "min_width": 128,
        "median_width": 353,
        "max_width": 512,
        "min_height": 128,
        "median_height": 353,
        "max_height": 512,
    }


def test_scan_center_excludes_test_masks_and_hidden_folders(center: Path) -> None:
    files = {s.file for s in scan_center(center, workers=1).samples}
    assert not any(
        part.lower() in {"test", "masks"} or part.startswith(".")
        for file in files
        for part in Path(file).parts
    )
    # Test2/ is not reserved, but the TEST folder inside it is
    assert not any(file.startswith("Test2/") for file in files)


def test_scan_center_sample_id_is_content_hash_stable_under_rename(center: Path) -> None:
    before = {s.sample_id: s.file for s in scan_center(center, workers=1).samples}
    expected = hashlib.sha256((center / "images/astro.jpg").read_bytes()).hexdigest()[:16]
    assert before[expected] == "images/astro.jpg"
    (center / "images/astro.jpg").rename(center / "images/b_astro.jpg")
    after = {s.sample_id: s.file for s in scan_center(center, workers=1).samples}
    assert after[expected] == "images/b_astro.jpg"
    assert set(after) == set(before)


def test_scan_center_leaves_the_data_folder_unchanged(center: Path) -> None:
    before = tree_digest(center)
    mtimes = {p: p.stat().st_mtime_ns for p in center.rglob("*")}
    scan_center(center)
    assert tree_digest(center) == before
    assert {p: p.stat().st_mtime_ns for p in center.rglob("*")} == mtimes


def test_scan_center_threads_do_not_change_the_result(center: Path) -> None:
    def key(inventory: Inventory) -> tuple:
        return (inventory.samples, inventory.duplicates, inventory.unreadable, inventory.ignored)

    assert key(scan_center(center, workers=1)) == key(scan_center(center, workers=3))


def test_scan_center_reports_progress_per_file(center: Path) -> None:
    calls: list[tuple[int, int]] = []
    scan_center(center, progress=lambda done, total: calls.append((done, total)), workers=2)
    assert calls == [(i, 9) for i in range(1, 10)]


def test_scan_center_pixel_limit_reports_too_large(center: Path) -> None:
    inventory = scan_center(center, workers=1, max_pixels=20000)
    reasons = inventory.unreadable_reasons()
    assert reasons["too large (512x512 > 20000 pixels; downscale it)"] == 2  # astro, camera
    # retina, its two copies, and cut.png (its header is intact; size is checked first)
    assert reasons["too large (353x353 > 20000 pixels; downscale it)"] == 4
    assert [s.file for s in inventory.samples] == ["images/IM0001"]  # 128x128 fits


def test_scan_center_masks_are_matched_beside_the_image_folder_at_any_depth(
    tmp_path: Path,
) -> None:
    for i, (image, mask) in enumerate(
        [
            ("top.png", "masks/top.png"),  # at the root: root/masks
            ("site_a/images/x.png", "site_a/masks/x.jpg"),  # nested: beside images/
            ("site_b/images/x.png", "site_a/masks/unused.png"),  # another site's masks do not count
        ]
    ):
        pixels = astronaut()[100 + 16 * i : 116 + 16 * i, 200:216]  # distinct content
        for rel in (image, mask):
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(tmp_path / image)
        Image.fromarray(pixels[..., 0]).save(tmp_path / mask)
    got = {s.file: s.mask for s in scan_center(tmp_path, workers=1).samples}
    assert got == {
        "site_a/images/x.png": "site_a/masks/x.jpg",
        "site_b/images/x.png": None,
        "top.png": "masks/top.png",
    }


@pytest.mark.parametrize("workers", [0, -1, 1.5])
def test_scan_center_rejects_bad_workers(center: Path, workers: object) -> None:
    with pytest.raises(DataError, match=f"workers={workers} must be a positive integer"):
        scan_center(center, workers=workers)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing", "does not exist; pass the folder that holds"),
        (lambda p: (p / "f.png").write_bytes(b"x") and p / "f.png", "is a file, not a folder"),
        (lambda p: p, r"no images found under .* \(looked for bmp, dcm, jpeg, jpg, png"),
    ],
    ids=["missing", "file", "empty"],
)
def test_scan_center_bad_root_raises_one_clear_data_error(tmp_path, make, message) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "notes.txt").write_text("not an image")
    (root / "test").mkdir()
    Image.fromarray(astronaut()[:8, :8]).save(root / "test" / "held_out.png")
    with pytest.raises(DataError, match=message) as info:
        scan_center(make(root))
    assert "\n" not in str(info.value)
