"""Phase 6: score an encoder at every center with labeled data; mIoU per center and overall.

Each center trains the same light segmentation head (common/models/segmentation.py) on its labeled
split
and scores it on its own test split; only the scores travel. The federation's mIoU is the mean
of the centers' mIoU weighted by their test images (centers without a test split are left out).
"""

from __future__ import annotations

from dataclasses import dataclass

from feddel.common.errors import RunFailed
from feddel.common.models.embed import EncoderSpec, build_encoder
from feddel.common.models.segmentation import HeadConfig
from feddel.common.wire.fedavg import weights_record
from feddel.common.wire.trainproto import EvaluateReply, EvaluateRequest
from feddel.server.broadcast import Broadcaster


@dataclass
class DownstreamResult:
    miou: float  # test-image-weighted mean over the centers with a test split
    per_center: dict[str, EvaluateReply]

    @property
    def test_images(self) -> int:
        return sum(reply.test_images for reply in self.per_center.values())


def run_evaluation(
    broadcaster: Broadcaster,
    spec: EncoderSpec,
    run: str,
    head: HeadConfig | None = None,
) -> DownstreamResult:
    """Send the encoder of `spec` (weights file or seeded random init) to every live center."""
    head = head or HeadConfig()
    encoder = build_encoder(spec)
    request = EvaluateRequest(
        run=run,
        model=spec.model,
        image_size=spec.image_size,
        head_steps=head.steps,
        head_lr=head.lr,
        head_hidden=head.hidden,
        head_repeats=head.repeats,
        finetune=head.finetune,
        seed=head.seed,
    ).with_weights(weights_record(encoder.state_dict()))
    replies = broadcaster.ask(request, EvaluateReply)
    scored = {r.center: r for r in replies.values() if r.test_images > 0}
    if not scored:
        raise RunFailed(
            "no center has a labeled test split (a test/ folder with images and masks); "
            "downstream evaluation needs at least one"
        )
    total = sum(r.test_images for r in scored.values())
    miou = sum(r.miou * r.test_images for r in scored.values()) / total
    return DownstreamResult(miou, scored)
