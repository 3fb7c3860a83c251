"""The fast exact path: FedSGD with a server Adam computed in one process, with no wire.

Under `--fedadam --local-steps 1 --local-lr 1` a federated round is: each drawn center takes one
SGD step at lr 1 from the global weights on a batch of its own images and sends back w - g_c; the
coordinator averages, global - average = sum_c a_c g_c, and makes that one AdamW step
(server/training/fedadam.py). That is one optimizer step along the gradient of
sum_c a_c loss_c, a batch mixed across the round's centers. This module computes that gradient
directly: the same centers (server/training/pretrain.py, `sample_centers`), each center's batch,
crop, flip and mask from the same seed by the same code (client/training.py `local_seed`,
common/models/mae.py `masked_batches`), one forward and backward over the concatenated batch,
and the same ServerAdam. Only the rounding differs (the wire carries w - g_c in float32), so
the weights agree with the federated run's within the tolerance that
tests/simulations/science/test_fastsgd.py states.

It reads every center's training images in one process, so it is for simulations only: the
federated path is the product, this one is how a comparison of many seeds fits on two cores.
It checkpoints every `commit_every` rounds in the federated run's format, so a killed run
resumes exactly (a round's randomness depends on seed, round and center only).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from feddel.client.handlers import CenterPaths
from feddel.client.training import local_seed, training_images
from feddel.common.errors import ConfigError, RunFailed
from feddel.common.models.embed import autocast, autocast_dtype, pick_device
from feddel.common.models.mae import MAE, MaskedBatch, masked_batches
from feddel.server.training.fedadam import ServerAdam
from feddel.server.training.pretrain import (
    PretrainConfig,
    PretrainResult,
    commit,
    resume_or_start,
    sample_centers,
    train_request,
)

COMMIT_EVERY = 100  # rounds between checkpoints (each writes ~40 MB: model and Adam state)


def check_fedsgd(config: PretrainConfig) -> None:
    """The fast path computes FedSGD with a server Adam and nothing else."""
    if not (config.fedadam and config.local_steps == 1 and config.local_lr == 1.0):
        raise ConfigError(
            "the fast path computes FedSGD with a server Adam only: use --fedadam "
            f"--local-steps 1 --local-lr 1 (got fedadam={config.fedadam}, local-steps="
            f"{config.local_steps}, local-lr={config.local_lr:g})"
        )


def run_fast_pretraining(
    centers: Sequence[CenterPaths],
    config: PretrainConfig,
    out_dir: str | Path,
    commit_every: int = COMMIT_EVERY,
) -> PretrainResult:
    """Run (or resume) `config`'s rounds; the MAE is in `out_dir/checkpoint.pt` afterwards.
    Nothing travels, so the result's byte counts are 0."""
    check_fedsgd(config)
    out = Path(out_dir)
    started = time.perf_counter()
    mae, progress = resume_or_start(config, out)
    resumed_from = progress["rounds_done"]
    server = ServerAdam(mae, config.lr, config.rounds)
    if resumed_from:
        server.load(out, resumed_from)
    images = _training_sets(centers, config) if resumed_from < config.rounds else {}
    device = pick_device(None)
    dtype = autocast_dtype(device)
    mae.to(device)
    for round_ in range(resumed_from, config.rounds):
        names = sample_centers(images, config, round_)
        loss = _round_gradient(mae, config, round_, {name: images[name] for name in names}, dtype)
        server.apply(round_)
        progress["rounds_done"] = round_ + 1
        progress["examples"] = {name: len(images[name]) for name in names}
        progress["losses"].append(loss)
        if progress["rounds_done"] % commit_every == 0 or round_ + 1 == config.rounds:
            mae.cpu()
            commit(out, mae, server, progress)
            mae.to(device)
    mae.cpu().eval()
    return PretrainResult.of_run(out, progress, resumed_from, started, bytes_down=0, bytes_up=0)


def _training_sets(centers: Sequence[CenterPaths], config: PretrainConfig) -> dict[str, np.ndarray]:
    """Center name -> its training images (the centers' own loader and cache), holders only."""
    request = train_request(config, 0, steps=0)
    sets = {paths.name: training_images(request, paths) for paths in centers}
    holders = {name: images for name, images in sets.items() if len(images)}
    if not holders:
        raise RunFailed(
            f"pre-training {config.run}: no center holds training images; run the curation "
            "round first (its manifests are the training sets)"
        )
    return holders


def _round_gradient(
    mae: MAE,
    config: PretrainConfig,
    round_: int,
    images: dict[str, np.ndarray],
    dtype: torch.dtype | None,
) -> float:
    """Leave sum_c a_c grad(loss_c) in the parameters' .grad; return the round's loss per
    training image, as the federated run reports it."""
    request = train_request(config, round_, steps=1)
    device = next(mae.parameters()).device
    draws: list[MaskedBatch] = [
        next(
            masked_batches(
                mae, images[name], config.batch_size, local_seed(request, name), device=device
            )
        )
        for name in images
    ]  # fmt: skip
    examples = torch.tensor([len(images[name]) for name in images], dtype=torch.float32)
    center_weight = (
        torch.full_like(examples, 1 / len(examples))
        if config.center_weighting == "equal"
        else examples / examples.sum()
    )
    mae.train()
    with autocast(device, dtype):
        output = mae(torch.cat([d.images for d in draws]), mask=torch.cat([d.mask for d in draws]))
    per_center = output.image_loss.float().view(len(draws), config.batch_size).mean(dim=1)
    mae.zero_grad(set_to_none=True)
    (per_center * center_weight.to(device)).sum().backward()
    losses = per_center.detach().cpu()
    return float((losses * examples).sum() / examples.sum())
