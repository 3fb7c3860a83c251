"""A Flower Grid that calls a ClientApp in this process: the protocol tested fast, without Ray.

Every message is handled on a worker thread, so a hung center really times out: replies that
are not back within `send_and_receive`'s timeout are simply missing, as on a real SuperLink.
An exception in a ClientApp becomes an error reply, as Flower's runtime does it. Messages are
round-tripped through their serialized form, so what the server reads is what would travel.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait

from flwr.app import DEFAULT_TTL, Context, Error, Message, Metadata, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import serde
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from feddel.common.wire.protocol import record_proto

log = logging.getLogger(__name__)

CLIENT_EXCEPTION = 2  # Error.code for an unexpected exception inside a ClientApp


class InProcessGrid(Grid):
    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        run_id: int = 1,
        workers: int = 1,
        observer: Callable[[int, Message], None] | None = None,
    ):
        """`observer(node_id, reply)` sees every reply as it leaves a center (privacy tests)."""
        self._client_app = client_app
        self._observer = observer
        self._run = Run.create_empty(run_id=run_id)
        self._contexts = {
            node_id: Context(
                run_id=run_id,
                node_id=node_id,
                node_config={"partition-id": partition, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config={},
            )
            for partition, node_id in enumerate(range(1001, 1001 + num_nodes))
        }
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="center")
        self._pending: dict[str, Future[Message]] = {}
        self._ids = itertools.count()

    # --- Grid interface ----------------------------------------------------------------------

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        metadata = Metadata(
            run_id=self._run.run_id,
            message_id=f"m{next(self._ids)}",
            src_node_id=0,
            dst_node_id=dst_node_id,
            reply_to_message_id="",
            group_id=group_id,
            created_at=time.time(),
            ttl=ttl or DEFAULT_TTL,
            message_type=message_type,
        )
        return Message(content, metadata=metadata)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            self._pending[message.metadata.message_id] = self._executor.submit(
                self._handle, message
            )
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = []
        for message_id in message_ids:
            future = self._pending.get(message_id)
            if future is not None and future.done():
                replies.append(self._pending.pop(message_id).result())
        return replies

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        ids = list(self.push_messages(messages))
        wait([self._pending[i] for i in ids], timeout=timeout)
        replies = list(self.pull_messages(ids))
        for message_id in ids:  # late replies are discarded, as after a TTL
            self._pending.pop(message_id, None)
        return replies

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # --- one center handling one message -----------------------------------------------------

    def _handle(self, message: Message) -> Message:
        node_id = message.metadata.dst_node_id
        wire = _over_the_wire(message.content)
        inbound = Message(wire, metadata=message.metadata)
        try:
            reply = self._client_app(inbound, self._contexts[node_id])
        except Exception as exc:  # a crashing center must not crash the round
            log.warning("center node %d raised", node_id, exc_info=True)
            reason = f"{type(exc).__name__}: {exc}"
            reply = Message(Error(code=CLIENT_EXCEPTION, reason=reason), reply_to=inbound)
        metadata = _from_node(reply.metadata, node_id)
        if reply.has_error():
            outbound = Message(reply.error, metadata=metadata)
        else:
            outbound = Message(_over_the_wire(reply.content), metadata=metadata)
        if self._observer is not None:
            self._observer(node_id, outbound)
        return outbound


def _from_node(metadata: Metadata, node_id: int) -> Metadata:
    """Reply metadata as the SuperLink would stamp it: from the center, to the server."""
    return Metadata(
        run_id=metadata.run_id,
        message_id=f"r-{metadata.reply_to_message_id}",
        src_node_id=node_id,
        dst_node_id=0,
        reply_to_message_id=metadata.reply_to_message_id,
        group_id=metadata.group_id,
        created_at=metadata.created_at,
        ttl=metadata.ttl,
        message_type=metadata.message_type,
    )


def _over_the_wire(content: RecordDict) -> RecordDict:
    """Serialize and parse a RecordDict, as a SuperLink would between processes."""
    proto = record_proto(content)
    return serde.recorddict_from_proto(type(proto).FromString(proto.SerializeToString()))
