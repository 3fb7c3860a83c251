"""A federation of real medical images that installed packages ship (`feddel-sim data --source
packages`): DICOM, NIfTI, ultrasound cine, radiographs, photographs, with ground truth."""

from feddel.simulations.packaged.federation import CENTERS, TRUTH_COLUMNS, build_packaged_federation

__all__ = ["CENTERS", "TRUTH_COLUMNS", "build_packaged_federation"]
