"""Send one phase's request to every live center and collect typed, validated replies.

A center that answers with an error, answers garbage, or does not answer within the timeout is
dropped from the round and recorded with the phase and the reason; the round goes on while at
least `min_fraction` of the centers that started it are alive. Bytes are counted per phase in
both directions as they travel (serialized records).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from flwr.serverapp import Grid

from feddel.common.errors import ProtocolError, RunFailed
from feddel.common.privacy import secagg
from feddel.common.wire.protocol import (
    CENTER_ERROR,
    CENTER_REFUSED,
    Masked,
    MaskedReply,
    Payload,
    record_bytes,
    sum_ring,
)

log = logging.getLogger(__name__)

ReplyT = TypeVar("ReplyT", bound=Payload)
MaskedT = TypeVar("MaskedT", bound=MaskedReply)
Check = Callable[[int, Any], None]  # (node, decoded reply) -> None, or raise ProtocolError


class RoundFailed(RunFailed):
    """Too few centers are left to continue the round."""


REFUSED = "refused: "  # how a refusal's reason starts (client/app.py sends CENTER_REFUSED)


@dataclass(frozen=True)
class CenterFailure:
    center: str
    phase: str
    reason: str

    def describe(self) -> str:
        """One line: "CENTER refused: why (phase)" or "CENTER (phase: why)"."""
        if self.reason.startswith(REFUSED):
            return f"{self.center} {self.reason} ({self.phase})"
        return f"{self.center} ({self.phase}: {self.reason})"


@dataclass
class Traffic:
    """Bytes per phase: down = server -> centers, up = centers -> server."""

    down: dict[str, int] = field(default_factory=dict)
    up: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, phase: str, down: int, up: int, seconds: float) -> None:
        self.down[phase] = self.down.get(phase, 0) + down
        self.up[phase] = self.up.get(phase, 0) + up
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds


class Broadcaster:
    """The server's view of the federation during one round."""

    def __init__(
        self,
        grid: Grid,
        *,
        min_fraction: float,
        timeout: float | None,
        group: str,
        min_centers: int = 1,
        connect_timeout: float = 0.0,
        min_roster: int = 3,
    ):
        self.grid = grid
        self.min_roster = min_roster
        self.min_fraction = min_fraction
        self.timeout = timeout
        self.group = group
        self.names: dict[int, str] = {}
        self.public_keys: dict[int, bytes] = {}  # secure-aggregation keys, from the keys phase
        self.alive: list[int] = _wait_for_nodes(grid, min_centers, connect_timeout)
        self.started = len(self.alive)
        self.failures: list[CenterFailure] = []
        self.traffic = Traffic()
        self._mask_uses = 0  # secure sums asked so far in this run: each gets fresh masks

    def name(self, node_id: int) -> str:
        return self.names.get(node_id, f"node-{node_id}")

    def drop(self, node_id: int, phase: str, reason: str) -> None:
        """Remove a center from the round, remember why, and stop if too few remain."""
        self._remove(node_id, phase, reason)
        self._require_quorum(phase)

    def _remove(self, node_id: int, phase: str, reason: str) -> None:
        """Remove a center and remember why; the caller checks the quorum once every reply of
        the phase is in, so that the message counts every center that failed in it."""
        if node_id in self.alive:
            self.alive.remove(node_id)
        failure = CenterFailure(self.name(node_id), phase, reason)
        self.failures.append(failure)
        log.warning("center dropped: %s", failure.describe())

    def ask(
        self,
        request: Payload | Callable[[int], Payload],
        reply_type: type[ReplyT],
        nodes: Iterable[int] | None = None,
        check: Check | None = None,
    ) -> dict[int, ReplyT]:
        """One request per live center (or a per-center request); validated replies by node,
        ordered by center name. `check(node, reply)` adds what only the round knows (shapes
        agreed in earlier phases); a ProtocolError from it drops the center like a bad record."""
        phase = reply_type.ACTION
        targets = list(self.alive if nodes is None else nodes)
        messages, down = [], 0
        shared_bytes = None if callable(request) else record_bytes(request.to_record())
        for node_id in targets:
            payload = request(node_id) if callable(request) else request
            content = payload.to_record()
            down += record_bytes(content) if shared_bytes is None else shared_bytes
            messages.append(
                self.grid.create_message(content, f"query.{phase}", node_id, self.group)
            )
        started = time.perf_counter()
        replies = list(self.grid.send_and_receive(messages, timeout=self.timeout))
        results: dict[int, ReplyT] = {}
        up = 0
        for reply in replies:
            node_id = reply.metadata.src_node_id
            if node_id not in targets:
                continue
            if reply.has_error():
                reason = reply.error.reason or f"error code {reply.error.code}"
                if reply.error.code in (CENTER_ERROR, CENTER_REFUSED):
                    name, _, why = reason.partition(": ")
                    self.names.setdefault(node_id, name)
                    if reply.error.code == CENTER_REFUSED:
                        reason = REFUSED + why
                self._remove(node_id, phase, reason)
                continue
            up += record_bytes(reply.content)
            try:
                decoded = reply_type.from_record(reply.content)
                if check is not None:
                    check(node_id, decoded)
                results[node_id] = decoded
            except ProtocolError as exc:
                self._remove(node_id, phase, f"malformed reply: {exc}")
        for node_id in targets:
            if node_id not in results and node_id in self.alive:
                self._remove(
                    node_id,
                    phase,
                    f"no reply within {self.timeout:g} s" if self.timeout else "no reply",
                )
        self._require_quorum(phase)
        self.traffic.add(phase, down, up, time.perf_counter() - started)
        # Replies arrive in any order (and node ids are random under Ray): order them by
        # center name so every merge, and so the selection, is the same whatever the engine.
        return dict(sorted(results.items(), key=lambda item: (self.name(item[0]), item[0])))

    def secure_sum(
        self,
        make_request: Callable[[list[bytes], int], Masked],
        reply_type: type[MaskedT],
        layout: dict[str, tuple[int, ...]],
        max_attempts: int = 3,
        check: Check | None = None,
    ) -> tuple[np.ndarray, dict[int, MaskedT]]:
        """Ask every live center for its masked vector of `layout` and return the unmasked sum.

        The masks cancel only over the whole roster, so when a member fails mid-phase the
        phase is asked again of the survivors, with a new roster. Every request of the run
        carries a new sequence number (the wire's `attempt`), which the centers fold into their
        masks: masks reused on different values (two Lloyd rounds) would reveal their difference.
        The ring (word size and steps) follows from each attempt's request, roster included.
        """
        phase = reply_type.ACTION
        for _ in range(max_attempts):
            roster = list(self.alive)
            if len(roster) < self.min_roster:
                raise RoundFailed(
                    f"phase '{phase}': a secure sum needs at least min-roster={self.min_roster} "
                    f"centers and only {len(roster)} remain (with fewer, the sum tells too much "
                    "about each member)"
                )
            keys = [self.public_keys[node] for node in roster]
            use, self._mask_uses = self._mask_uses, self._mask_uses + 1
            request = make_request(keys, use)
            ring = sum_ring(layout, request)
            replies = self.ask(request, reply_type, roster, check)
            for node, reply in list(replies.items()):
                reason = _ring_mismatch(reply.masked, ring)
                if reason:
                    replies.pop(node)
                    self._remove(node, phase, reason)
            self._require_quorum(phase)
            if set(replies) == set(roster):
                vectors = [replies[node].masked for node in roster]
                return secagg.unmasked_sum(vectors, ring), replies
            log.warning(
                "phase %s: %d center(s) dropped; re-asking the survivors",
                phase,
                len(roster) - len(replies),
            )
        raise RoundFailed(f"phase '{phase}' lost centers in {max_attempts} attempts in a row")

    def _require_quorum(self, phase: str) -> None:
        if len(self.alive) >= max(1, self.min_fraction * self.started):
            return
        if not self.alive and len({(f.phase, _unnamed(f)) for f in self.failures}) == 1:
            # One reason everywhere: a cause the centers share (the software, the request, a
            # setting), not a fault of each hospital; say it once instead of N times.
            first = self.failures[0]
            raise RoundFailed(
                f"all {self.started} centers failed in phase '{first.phase}' with the same "
                f"error, so its cause is common to them (not one center's fault): "
                f"{_unnamed(first)}"
            )
        failed = ", ".join(failure.describe() for failure in self.failures)
        raise RoundFailed(
            f"only {len(self.alive)} of {self.started} centers remain after phase '{phase}' "
            f"(min-fraction {self.min_fraction:g}); failed: {failed}"
        )


def _ring_mismatch(masked: np.ndarray, ring: secagg.Ring) -> str:
    """Why a masked vector cannot enter the sum ("" when it can): wrong length or word size."""
    if masked.shape != (ring.size,):
        return f"masked vector has {masked.size} values, not {ring.size}"
    if masked.dtype != ring.dtype:
        return f"masked vector is {masked.dtype}, the request asked for {ring.dtype} words"
    return ""


def _unnamed(failure: CenterFailure) -> str:
    """A failure's reason without the "<center>: " prefix that a center puts on its errors."""
    prefix = f"{failure.center}: "
    return failure.reason[len(prefix) :] if failure.reason.startswith(prefix) else failure.reason


def _wait_for_nodes(grid: Grid, wanted: int, timeout: float) -> list[int]:
    """The connected centers, once at least `wanted` are there (SuperNodes connect at their
    own pace, and a simulation registers its virtual nodes after the ServerApp starts)."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= wanted or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    if not nodes:
        raise RoundFailed(
            f"no centers connected within {timeout:g} s; start the SuperNodes (feddel-center join)"
        )
    if len(nodes) < wanted:
        log.warning("only %d of %d centers connected within %g s", len(nodes), wanted, timeout)
    return nodes
