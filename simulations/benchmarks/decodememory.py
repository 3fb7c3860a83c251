"""Peak memory of decoding decompression bombs that stay under the 100-megapixel limit.

    python simulations/benchmarks/decodememory.py [--out DIR] [--json FILE]

Writes, in under 1 MB, three files that each claim 10000 x 9999 pixels (a blank 1-bit PNG, a
constant 16-bit PNG, a deflated float TIFF) beside six ordinary images, then measures each step
in a fresh interpreter: the peak resident memory (VmHWM) above what the process held before the
step, in MiB. Steps: one bomb resized for the encoder (`load_image` at 64 px), one bomb decoded
at full size (`decode_file`), the scan of the folder (4 threads), and the embedding of it
(`embed_center`, after a warm-up embedding of the ordinary images, so torch's own memory is not
counted); the embedding is measured in-process and with 2 DataLoader workers (largest worker).
It uses only functions the code had before the pixel budget, so the same file measures any
version: run it with another checkout's interpreter to compare (the figures before and after
the pixel budget of common/data/budget.py: docs/design.md section 9). A benchmark: it
prints and writes figures, it asserts nothing.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from feddel.common.io import write_json

BOMBS = ("bilevel.png", "depth16.png", "float.tif")
SIDE = (10000, 9999)  # under MAX_PIXELS (100,000,000), so no limit refuses them

_PEAK = """
import re, resource, sys
def status(key):
    return int(re.search(key + r':\\s+(\\d+) kB', open('/proc/self/status').read()).group(1))
"""
_STEPS = {
    "load_image": "from feddel.common.data.decode import load_image\n"
    "before = status('VmRSS')\nload_image(sys.argv[1], 64)\n",
    "decode_file": "from feddel.common.data.decode import decode_file\n"
    "before = status('VmRSS')\ndecode_file(sys.argv[1])\n",
    "scan": "from feddel.common.data.scan import scan_center\n"
    "before = status('VmRSS')\nscan_center(sys.argv[1], workers=4)\n",
    "embed": "import hashlib\nfrom pathlib import Path\n"
    "from feddel.common.data.scan import Sample, scan_center\n"
    "from feddel.common.models.embed import EncoderSpec\n"
    "from feddel.common.models.embedcache import embed_center\n"
    "spec, state, workers = EncoderSpec(image_size=64), Path(sys.argv[2]), int(sys.argv[3])\n"
    "ordinary = Path(sys.argv[1]) / 'ordinary'\n"
    "embed_center(scan_center(ordinary, workers=1).samples, ordinary, spec, state / 'warm',"
    " batch_size=2, num_workers=workers)\n"
    "before = status('VmHWM')\n"
    "warm_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "bombs = [Sample(hashlib.sha256(b.encode()).hexdigest()[:16], b, None, 10000, 9999, '')"
    " for b in sys.argv[4:]]\n"
    "embed_center(bombs, Path(sys.argv[1]), spec, state / 'bombs', batch_size=1,"
    " num_workers=workers)\n",
}
_REPORT = (  # the step's own peak; the growth of its largest child's peak (DataLoader workers)
    "children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "grown = children - globals().get('warm_children', 0)\n"
    "print((status('VmHWM') - before) // 1024, max(0, grown) // 1024)\n"
)


def write_bombs(folder: Path) -> Path:
    """The three bombs in `folder` and six ordinary 64 px images in `folder`/ordinary."""
    (folder / "ordinary").mkdir(parents=True, exist_ok=True)
    Image.new("1", SIDE, 1).save(folder / "bilevel.png")
    Image.new("I;16", SIDE, 1234).save(folder / "depth16.png")
    Image.new("F", SIDE, 0.5).save(folder / "float.tif", compression="tiff_deflate")
    rng = np.random.default_rng(0)
    for index in range(6):
        pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "ordinary" / f"{index}.png")
    return folder


def peak_mib(step: str, *args: str) -> tuple[int, int]:
    """(peak MiB above the start of the step, largest child's peak MiB above it; 0 if none)."""
    script = _PEAK + _STEPS[step] + _REPORT
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", script, *args],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    own, child = done.stdout.split()
    return int(own), int(child)


def measure(folder: Path, work: Path) -> dict[str, int]:
    """Every step's peak, by name (MiB above the step's start)."""
    peaks = {}
    for bomb in BOMBS:
        for step in ("load_image", "decode_file"):
            peaks[f"{step} {bomb}"] = peak_mib(step, str(folder / bomb))[0]
    peaks["scan, 4 threads"] = peak_mib("scan", str(folder))[0]
    peaks["embed, in-process"] = peak_mib("embed", str(folder), str(work / "e0"), "0", *BOMBS)[0]
    own, worker = peak_mib("embed", str(folder), str(work / "e2"), "2", *BOMBS)
    peaks["embed, 2 workers: main"], peaks["embed, 2 workers: largest worker"] = own, worker
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="folder for the files (default: a temp folder)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="feddel-decodememory-") as tmp:
        folder = write_bombs((args.out or Path(tmp)) / "center")
        files = [path for path in folder.rglob("*") if path.is_file()]
        size = sum(path.stat().st_size for path in files) / 2**20
        print(f"{len(files)} files, {size:.2f} MiB on disk, in {folder}")
        peaks = measure(folder, Path(tmp))
    for name, mib in peaks.items():
        print(f"{name:<36} {mib:>6} MiB")
    if args.json:
        write_json(args.json, peaks)


if __name__ == "__main__":
    main()
