"""The Flower ClientApp of a center: decode the request, run the phase handler, encode the reply.

A deployed center (SuperNode) names its folders in the node config:
`--node-config 'data-path="/data/endoscopy" state-path="/var/lib/feddel"'` (optionally
`center-name`, and `center-config`, its center.toml, whose [privacy] section sets its floor).
In simulation, `build_client_app` takes a resolver that maps the virtual node's `partition-id`
to a center folder. Every failure becomes an error reply whose one-line reason names the
center and the problem without the center's paths or file names (client/redact.py; the
center's log and events.jsonl keep the detail); a request below the center's privacy floor is
answered as a refusal (CENTER_REFUSED). The server drops that center and goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp

from feddel.client import handlers, training
from feddel.client.handlers import CenterPaths
from feddel.client.policy import CENTER_CONFIG_KEY, admit
from feddel.client.redact import public_reason
from feddel.client.site import load_privacy_policy
from feddel.client.state import CenterState
from feddel.common.deployment.sites import log_to_stdout
from feddel.common.errors import ConfigError, FedDELError, Refused
from feddel.common.privacy.policy import PrivacyPolicy
from feddel.common.wire.protocol import (
    CENTER_ERROR,
    CENTER_REFUSED,
    CountsRequest,
    HistogramRequest,
    InventoryRequest,
    KeysRequest,
    LloydRequest,
    MeanImageRequest,
    MomentsRequest,
    Payload,
    ScoreRequest,
    SeedRequest,
    SelectRequest,
)
from feddel.common.wire.trainproto import EvaluateRequest, SynthesizeRequest, TrainRequest

log = logging.getLogger(__name__)

Resolver = Callable[[Context], CenterPaths]

PHASES: dict[str, tuple[type[Payload], Callable[[Payload, CenterPaths], Payload]]] = {
    "inventory": (InventoryRequest, handlers.inventory),
    "keys": (KeysRequest, handlers.keys),
    "seed": (SeedRequest, handlers.seed),
    "moments": (MomentsRequest, handlers.moments),
    "counts": (CountsRequest, handlers.counts),
    "lloyd": (LloydRequest, handlers.lloyd),
    "score": (ScoreRequest, handlers.score),
    "histograms": (HistogramRequest, handlers.histograms),
    "select": (SelectRequest, handlers.select),
    "mean_image": (MeanImageRequest, handlers.mean_image),
    "mae": (TrainRequest, training.train),
    "segment": (EvaluateRequest, training.evaluate),
    "synthesize": (SynthesizeRequest, training.synthesize),
}  # type: ignore[dict-item]


def paths_from_node_config(context: Context) -> CenterPaths:
    """A deployed SuperNode: folders from `--node-config data-path=... state-path=...`."""
    config = context.node_config
    missing = [key for key in ("data-path", "state-path") if not str(config.get(key, "")).strip()]
    if missing:
        raise ConfigError(
            f"node config lacks {', '.join(missing)}; start the SuperNode with "
            '--node-config \'data-path="/path/to/images" state-path="/path/to/state"\''
        )
    data = Path(str(config["data-path"]))
    site_file = str(config.get(CENTER_CONFIG_KEY, "")).strip()
    policy = load_privacy_policy(site_file) if site_file else PrivacyPolicy()
    log_to_stdout("feddel.client")  # each phase, named by center and run, in the journal
    return CenterPaths(
        str(config.get("center-name", data.name)), data, Path(str(config["state-path"])), policy
    )


def build_client_app(resolve: Resolver) -> ClientApp:
    """A ClientApp with one query handler per phase; `resolve` finds the center's folders."""
    app = ClientApp()
    for action, (request_type, handler) in PHASES.items():
        app.query(action)(_wrap(request_type, handler, resolve))
    return app


def _wrap(
    request_type: type[Payload],
    handler: Callable[[Payload, CenterPaths], Payload],
    resolve: Resolver,
) -> Callable[[Message, Context], Message]:
    def handle(message: Message, context: Context) -> Message:
        paths = None
        phase = request_type.ACTION
        started = time.monotonic()
        try:
            paths = resolve(context)
            admit(context, paths.state, phase)  # the center's [policy], audited
            request = request_type.from_record(message.content)
            content = handler(request, paths).to_record()
        except Exception as exc:  # any failure: a reply the round can go on without this center
            name = paths.name if paths else f"node {context.node_id}"
            reason = _report_error(exc, phase, name, paths)
            code = CENTER_REFUSED if isinstance(exc, Refused) else CENTER_ERROR
            return Message(Error(code=code, reason=f"{name}: {reason}"), reply_to=message)
        seconds = time.monotonic() - started
        log.info("center %s: phase %s of run %s done in %.1f s", paths.name, phase, request.run,
                 seconds)  # fmt: skip
        try:  # the phase's work is done: a state folder that refuses the event must not undo it
            CenterState(paths.state).record(
                "phase", run=request.run, phase=phase, seconds=round(seconds, 2)
            )
        except OSError as failure:
            log.error("%s could not record phase %s in %s: %s", paths.name, phase, paths.state,
                      failure)  # fmt: skip
        return Message(content, reply_to=message)

    handle.__name__ = f"{request_type.ACTION}_handler"
    return handle


def _report_error(exc: Exception, phase: str, name: str, paths: CenterPaths | None) -> str:
    """Log the failure in full at the center (a traceback for anything but a FedDELError, whose
    one line says it all), record it in events.jsonl, and return what may be sent."""
    log.error("%s phase %s failed: %s", name, phase, exc, exc_info=not isinstance(exc, FedDELError))
    if paths is None:
        return public_reason(exc, phase, {})
    try:
        CenterState(paths.state).record("error", phase=phase, reason=f"{exc}")
    except OSError as failure:  # an unwritable state folder must not hide the first error
        log.error("%s could not record the error in %s: %s", name, paths.state, failure)
    return public_reason(exc, phase, {"data folder": paths.data, "state folder": paths.state})


app = build_client_app(paths_from_node_config)
