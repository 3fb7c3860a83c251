"""Phase 4b, optidel only: each center synthesizes OptiDEL mosaics from its own selection.

The coordinator sends the curation MAE (encoder and decoder: patch PVI needs reconstructions)
and the federated mean image, the context-free predictor of PVI; each center that selected
samples keeps its hardest lesion-like patches and stitches them four to a mosaic
(client/training.py (synthesize)). Mosaics never leave the center; the replies are counts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from feddel.common.config import CurationConfig
from feddel.common.errors import ConfigError, DataError, RunFailed
from feddel.common.models.mae import MAE, load_mae_checkpoint
from feddel.common.wire.fedavg import weights_record
from feddel.common.wire.trainproto import SynthesizeReply, SynthesizeRequest
from feddel.server.broadcast import Broadcaster


def synthesis_mae(config: CurationConfig) -> MAE:
    """The MAE of the round's encoder; optidel needs a FedDEL MAE checkpoint as `weights`."""
    hint = (
        "method optidel scores patches with an MAE: set weights= to a FedDEL MAE checkpoint "
        "(`feddel-sim compare` passes its warm-up's)"
    )
    if not config.weights:
        raise ConfigError(f"{hint}; weights is empty (random init)")
    try:
        mae = load_mae_checkpoint(config.weights)
    except DataError as exc:
        raise ConfigError(f"{hint}; {exc}") from None
    if (mae.spec.model, mae.spec.image_size) != (config.model, config.image_size):
        raise ConfigError(
            f"{hint}; {Path(config.weights).name} holds {mae.spec.model} at "
            f"{mae.spec.image_size} px, the round embeds with {config.model} at "
            f"{config.image_size} px"
        )
    return mae


def run_synthesis(
    cast: Broadcaster,
    config: CurationConfig,
    mae: MAE,
    mean_image: np.ndarray | None,
    selecting: list[int],
) -> dict[int, SynthesizeReply]:
    """Ask the nodes in `selecting` (those that selected samples) to make their mosaics."""
    if mean_image is None:
        raise RunFailed(
            "optidel needs the federated mean image, but no center reported one (every center "
            "is below min-count); lower min-count or add data"
        )
    request = SynthesizeRequest(
        run=config.run_name,
        model=config.model,
        image_size=config.image_size,
        seed=config.seed,
        mean_image=mean_image.astype(np.float32),
    ).with_weights(weights_record(mae.state_dict()))
    return cast.ask(request, SynthesizeReply, selecting)
