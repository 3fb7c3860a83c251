"""Synthetic endoscopy-like federations with ground truth (`feddel-sim data`).

No real endoscopy data can be downloaded here, so tests and the demo use a generated federation
that has what the curation must cope with: heavy-tailed center sizes, per-center device styles
and mode mixes, video-like near-duplicate frames, a rare mode, disruptive frames, exact
duplicate files, corrupt files, polyp masks and a held-out labeled test split per center.
"""

from feddel.simulations.synth.disrupt import DISRUPTIONS
from feddel.simulations.synth.federation import GENERATOR_VERSION, generate_federation
from feddel.simulations.synth.modes import MODES

__all__ = ["DISRUPTIONS", "GENERATOR_VERSION", "MODES", "generate_federation"]
