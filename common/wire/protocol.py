"""The wire format: one typed request and one typed reply per phase, to and from Flower records.

Each message is a frozen dataclass. Scalars travel in a ConfigRecord named "fields", arrays in an
ArrayRecord named "arrays". Decoding validates everything a hostile or buggy peer could get
wrong (missing field, wrong type, wrong rank, NaN/inf, negative counts, oversized arrays,
inconsistent shapes) and raises ProtocolError naming the message and the field, so a bad reply
becomes a named failed center, never a crash of the round.

This is the only module of `common` that imports Flower.
"""

from __future__ import annotations

import dataclasses
import io
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common import serde
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from feddel.common.config import KEEP_CHOICES
from feddel.common.curation.methods import SELECTION_NAMES
from feddel.common.errors import ProtocolError
from feddel.common.privacy.secagg import KEY_BYTES

MAX_ARRAY_ELEMENTS = 1 << 26  # 64 Mi elements: far above any legitimate (k, d) or histogram
MAX_COUNT = 1 << 53  # counts and other integers on the wire: exact in float64, no int64 overflow
MAX_NAME = 200  # characters of a run or center name
MAX_IMAGE_SIZE = 4096  # pixels per side a center is asked to embed at (memory: s x s x 3 floats)
MAX_CLUSTERS = 1 << 16  # k and k-local
MAX_BINS = 1 << 16  # histogram bins
FIELDS, ARRAYS = "fields", "arrays"
# Error.code of a center's error reply whose reason reads "<center name>: <what to fix>"
# (client/app.py); the coordinator learns the name of a center that fails before it replied once.
CENTER_ERROR = 1


@dataclass(frozen=True)
class ArraySpec:
    """What an array field must look like: 'f' float, 'i' integer or 'u' a masked uint64
    vector (common/privacy/secagg.py), its rank, its sign."""

    kind: str
    ndim: int
    nonnegative: bool = False


def array_field(kind: str, ndim: int, nonnegative: bool = False) -> Any:
    return field(metadata={"array": ArraySpec(kind, ndim, nonnegative)})


class Payload:
    """Encode/decode/validate for the dataclasses below; subclasses add `check` for shapes."""

    ACTION: ClassVar[str]  # the ClientApp action, e.g. "lloyd" -> message type "query.lloyd"

    def to_record(self) -> RecordDict:
        scalars: dict[str, Any] = {}
        arrays: dict[str, Array] = {}
        for spec in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, spec.name)
            if "array" in spec.metadata:
                arrays[spec.name] = Array(np.ascontiguousarray(value))
            else:
                scalars[spec.name] = value
        return RecordDict({FIELDS: ConfigRecord(scalars), ARRAYS: ArrayRecord(arrays)})

    @classmethod
    def from_record(cls, record: RecordDict) -> Self:
        name = cls.__name__
        scalars = record.config_records.get(FIELDS)
        arrays = record.array_records.get(ARRAYS)
        if scalars is None or arrays is None:
            raise ProtocolError(f"{name}: not a FedDEL message (records 'fields'/'arrays' missing)")
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for spec in dataclasses.fields(cls):  # type: ignore[arg-type]
            if "array" in spec.metadata:
                if spec.name not in arrays:
                    raise ProtocolError(f"{name}: missing array '{spec.name}'")
                values[spec.name] = _decode_array(
                    name, spec.name, arrays[spec.name], spec.metadata["array"]
                )
            else:
                if spec.name not in scalars:
                    raise ProtocolError(f"{name}: missing field '{spec.name}'")
                values[spec.name] = _decode_scalar(
                    name, spec.name, scalars[spec.name], hints[spec.name]
                )
        message = cls(**values)
        message.check()
        return message

    def check(self) -> None:
        """Cross-field consistency; raise ProtocolError. Default: nothing to relate."""


def record_bytes(record: RecordDict) -> int:
    """Serialized size of a RecordDict as it travels (protobuf), for the bytes accounting."""
    return record_proto(record).ByteSize()


def record_proto(record: RecordDict) -> ProtoRecordDict:
    """The protobuf message Flower sends for `record`, byte for byte (tested).

    Flower's `serde.recorddict_to_proto` builds each nested message and then copies it into its
    parent, which costs about 55 ms per 12 MB of weights; filling the message in place costs a
    few ms, and FedSGD sends 12 MB each way per center every round.
    """
    proto = ProtoRecordDict()
    for key, value in record.items():
        item = proto.items.add(key=key)
        if isinstance(value, ArrayRecord):
            item.array_record.SetInParent()  # an empty record must still say which kind it is
            for name, array in value.items():
                entry = item.array_record.items.add(key=name).value
                entry.dtype, entry.stype, entry.data = array.dtype, array.stype, array.data
                entry.shape.extend(array.shape)
        elif isinstance(value, ConfigRecord):
            item.config_record.CopyFrom(serde.config_record_to_proto(value))
        elif isinstance(value, MetricRecord):
            item.metric_record.CopyFrom(serde.metric_record_to_proto(value))
        else:
            raise TypeError(f"a RecordDict cannot hold {type(value).__name__}")
    return proto


def _decode_scalar(message: str, key: str, value: Any, kind: type) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not kind:
        raise ProtocolError(
            f"{message}: field '{key}' must be {kind.__name__}, got {type(value).__name__}"
        )
    if kind is float and not np.isfinite(value):
        raise ProtocolError(f"{message}: field '{key}' must be finite, got {value}")
    if kind is int and key in _COUNT_FIELDS and value < 0:
        raise ProtocolError(f"{message}: field '{key}' is a count and must be >= 0, got {value}")
    if kind is int and key in _COUNT_FIELDS and value > MAX_COUNT:
        raise ProtocolError(f"{message}: field '{key}' is a count and must be <= 2^53")
    return value


def _decode_array(message: str, key: str, value: Array, spec: ArraySpec) -> np.ndarray:
    if not isinstance(value, Array):
        raise ProtocolError(f"{message}: array '{key}' has type {type(value).__name__}")
    shape = tuple(value.shape)
    if len(shape) != spec.ndim:
        raise ProtocolError(
            f"{message}: array '{key}' must have {spec.ndim} dims, got shape {shape}"
        )
    if int(np.prod(shape, dtype=np.int64)) > MAX_ARRAY_ELEMENTS:
        raise ProtocolError(
            f"{message}: array '{key}' of shape {shape} exceeds {MAX_ARRAY_ELEMENTS} elements"
        )
    _check_npy_header(message, key, value, shape)
    try:
        array = value.numpy()
    except Exception as exc:  # any decode failure of peer bytes is a protocol error
        raise ProtocolError(f"{message}: array '{key}' does not decode ({exc})") from None
    if spec.kind == "u":
        if array.dtype != np.uint64:
            raise ProtocolError(f"{message}: array '{key}' must be uint64, got {array.dtype}")
        return array
    if array.dtype.kind not in ("f", "i", "u") or (spec.kind == "i" and array.dtype.kind == "f"):
        raise ProtocolError(
            f"{message}: array '{key}' must be {_KIND[spec.kind]}, got {array.dtype}"
        )
    if spec.kind == "f" and not np.isfinite(array).all():
        raise ProtocolError(f"{message}: array '{key}' contains NaN or inf")
    if spec.nonnegative and array.size and array.min() < 0:
        raise ProtocolError(f"{message}: array '{key}' holds counts and must be >= 0")
    if spec.kind == "i" and array.size and np.abs(array).max() > MAX_COUNT:
        # uint64 above 2^63 would wrap negative in the int64 cast below
        raise ProtocolError(f"{message}: array '{key}' holds integers beyond 2^53")
    return array.astype(np.float64 if spec.kind == "f" else np.int64, copy=False)


def _check_npy_header(message: str, key: str, value: Array, shape: tuple[int, ...]) -> None:
    """The bytes carry their own .npy header, independent of the record's `shape`: read it
    (without the data) and refuse a disagreement before anything is allocated."""
    buffer = io.BytesIO(value.data)
    try:
        version = np.lib.format.read_magic(buffer)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"unsupported .npy version {version}")
        stored, _, dtype = read_header(buffer)
    except Exception as exc:
        raise ProtocolError(f"{message}: array '{key}' does not decode ({exc})") from None
    if tuple(stored) != shape:
        raise ProtocolError(
            f"{message}: array '{key}' declares shape {shape} but its data holds {tuple(stored)}"
        )
    if dtype.hasobject:
        raise ProtocolError(f"{message}: array '{key}' holds Python objects")


def check_center_name(message: str, center: str) -> None:
    if not center or len(center) > MAX_NAME or not center.isprintable():
        raise ProtocolError(f"{message}: center name must be 1-{MAX_NAME} printable characters")


def check_run(message: str, run: str) -> None:
    """`run` names folders at the center (state/runs/<run>): one plain path component."""
    bad = (
        not run
        or len(run) > MAX_NAME
        or run.startswith(".")
        or any(c in run for c in "/\\")
        or not run.isprintable()
    )
    if bad:
        raise ProtocolError(
            f"{message}: run name {run[:MAX_NAME]!r} must be 1-{MAX_NAME} printable characters, "
            "without '/', '\\' or a leading '.'"
        )


def _check_choice(message: str, key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ProtocolError(f"{message}: field '{key}' must be one of {', '.join(choices)}")


def check_range(message: str, key: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ProtocolError(f"{message}: field '{key}'={value!r} must be in [{low:g}, {high:g}]")


_KIND = {"f": "floating point", "i": "integer", "u": "uint64"}
_COUNT_FIELDS = {
    "files", "samples", "unreadable", "duplicate_files", "disruptive", "dim", "image_count",
    "candidates", "selected", "k_local", "min_count", "bins", "round", "attempt",
}  # fmt: skip


def _check_centers(message: str, centers: np.ndarray) -> None:
    k, d = centers.shape
    if not 1 <= k <= MAX_CLUSTERS or d < 1:
        raise ProtocolError(
            f"{message}: centers must be (k, d) with 1 <= k <= {MAX_CLUSTERS}, d >= 1; "
            f"got {centers.shape}"
        )


def _same_rows(message: str, **arrays: np.ndarray) -> None:
    rows = {name: array.shape[0] for name, array in arrays.items()}
    if len(set(rows.values())) > 1:
        raise ProtocolError(f"{message}: row counts differ: {rows}")


# --- phase 0: inventory -------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class InventoryRequest(Payload):
    ACTION: ClassVar[str] = "inventory"
    run: str
    round: int
    model: str
    image_size: int
    weights: str
    seed: int
    min_count: int

    def check(self) -> None:
        check_run("InventoryRequest", self.run)
        check_range("InventoryRequest", "image_size", self.image_size, 16, MAX_IMAGE_SIZE)
        check_range("InventoryRequest", "min_count", self.min_count, 1, MAX_COUNT)


@dataclass(frozen=True, kw_only=True)
class InventoryReply(Payload):
    ACTION: ClassVar[str] = "inventory"
    center: str
    files: int
    samples: int
    unreadable: int
    duplicate_files: int
    disruptive: int
    dim: int
    fingerprint: str
    image_count: int  # 0 when the center holds fewer than min_count samples
    # (s, s, 3) sum of the center's images, for the global mean image
    image_sum: np.ndarray = array_field("f", 3, nonnegative=True)

    def check(self) -> None:
        name = "InventoryReply"
        check_center_name(name, self.center)
        if self.files != self.samples + self.unreadable + self.duplicate_files:
            raise ProtocolError(
                f"{name}: files={self.files} must equal samples + unreadable + duplicate_files "
                f"({self.samples} + {self.unreadable} + {self.duplicate_files})"
            )
        if self.disruptive > self.samples:
            raise ProtocolError(f"{name}: disruptive={self.disruptive} exceeds samples")
        if self.image_count > self.samples:
            raise ProtocolError(f"{name}: image_count exceeds samples")
        if self.image_sum.shape[2:] != (3,) or self.image_sum.shape[0] != self.image_sum.shape[1]:
            raise ProtocolError(f"{name}: image_sum must be (s, s, 3), got {self.image_sum.shape}")
        if self.image_sum.size and self.image_sum.max() > 255.0 * self.image_count:
            raise ProtocolError(f"{name}: image_sum exceeds 255 x image_count (8-bit images)")


# --- keys: one X25519 public key per center and run (common/privacy/secagg.py) ---


@dataclass(frozen=True, kw_only=True)
class KeysRequest(Payload):
    ACTION: ClassVar[str] = "keys"
    run: str

    def check(self) -> None:
        check_run("KeysRequest", self.run)


@dataclass(frozen=True, kw_only=True)
class KeysReply(Payload):
    ACTION: ClassVar[str] = "keys"
    public_key: bytes

    def check(self) -> None:
        if len(self.public_key) != KEY_BYTES:
            raise ProtocolError(f"KeysReply: public_key must be {KEY_BYTES} bytes")


@dataclass(frozen=True, kw_only=True)
class Masked(Payload):
    """Fields of every securely summed phase: who is in the sum, and which attempt it is."""

    run: str
    attempt: int
    roster: np.ndarray = array_field("i", 2, nonnegative=True)  # (m, 32) public keys, as bytes

    def check(self) -> None:
        check_run(type(self).__name__, self.run)

    def roster_keys(self) -> list[bytes]:
        if (
            self.roster.ndim != 2
            or self.roster.shape[1] != KEY_BYTES
            or self.roster.max(initial=0) > 255
        ):
            raise ProtocolError(f"{type(self).__name__}: roster must be (m, {KEY_BYTES}) bytes")
        return [bytes(row.astype(np.uint8)) for row in self.roster]


def roster_array(keys: list[bytes]) -> np.ndarray:
    return np.array([list(key) for key in keys], dtype=np.int64).reshape(len(keys), KEY_BYTES)


@dataclass(frozen=True, kw_only=True)
class MaskedReply(Payload):
    """A center's contribution to a secure sum: uniformly random on its own."""

    masked: np.ndarray = array_field("u", 1)


# --- phase 1: seeding (k-FED) --------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SeedRequest(Payload):
    ACTION: ClassVar[str] = "seed"
    run: str
    method: str
    k_local: int
    min_count: int
    seed: int

    def check(self) -> None:
        check_run("SeedRequest", self.run)
        _check_choice("SeedRequest", "method", self.method, SELECTION_NAMES)
        check_range("SeedRequest", "k_local", self.k_local, 1, MAX_CLUSTERS)
        check_range("SeedRequest", "min_count", self.min_count, 1, MAX_COUNT)


@dataclass(frozen=True, kw_only=True)
class SeedReply(Payload):
    ACTION: ClassVar[str] = "seed"
    centroids: np.ndarray = array_field("f", 2)  # (m, d) local centroids with >= min_count members
    counts: np.ndarray = array_field("i", 1, nonnegative=True)  # (m,)

    def check(self) -> None:
        _same_rows("SeedReply", centroids=self.centroids, counts=self.counts)


# --- phase 2: Lloyd (securely summed) -------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LloydRequest(Masked):
    ACTION: ClassVar[str] = "lloyd"
    method: str
    noise_sigma: float  # std of the Gaussian noise each center adds to its per-cluster sums
    centers: np.ndarray = array_field("f", 2)  # (k, d)

    def check(self) -> None:
        super().check()
        _check_choice("LloydRequest", "method", self.method, SELECTION_NAMES)
        check_range("LloydRequest", "noise_sigma", self.noise_sigma, 0.0, np.inf)
        _check_centers("LloydRequest", self.centers)


@dataclass(frozen=True, kw_only=True)
class LloydReply(MaskedReply):
    """Masked (count (k,), sum (k, d), sqdist (k,)): see `lloyd_layout`."""

    ACTION: ClassVar[str] = "lloyd"


def lloyd_layout(k: int, d: int) -> dict[str, tuple[int, ...]]:
    return {"count": (k,), "sum": (k, d), "sqdist": (k,)}


# --- phase 3: scoring (securely summed) -----------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ScoreRequest(Masked):
    ACTION: ClassVar[str] = "score"
    method: str
    tau: float
    eps: float
    eta: float
    keep: str
    bins: int
    centers: np.ndarray = array_field("f", 2)  # (k, d)
    prior: np.ndarray = array_field("f", 1, nonnegative=True)  # (k,)

    def check(self) -> None:
        super().check()
        name = "ScoreRequest"
        _check_choice(name, "method", self.method, SELECTION_NAMES)
        _check_choice(name, "keep", self.keep, KEEP_CHOICES)
        check_range(name, "tau", self.tau, np.finfo(np.float64).tiny, np.inf)
        check_range(name, "eps", self.eps, 0.0, 2.0)
        check_range(name, "eta", self.eta, -1.0, 1.0)
        check_range(name, "bins", self.bins, 1, MAX_BINS)
        _check_centers(name, self.centers)
        _same_rows(name, centers=self.centers, prior=self.prior)
        if not self.prior.all():
            raise ProtocolError(f"{name}: prior must be > 0 for every cluster")


@dataclass(frozen=True, kw_only=True)
class ScoreReply(MaskedReply):
    """Masked (histograms (k, bins), eta_survivors (len(ETA_GRID),)): see `score_layout`."""

    ACTION: ClassVar[str] = "score"


def score_layout(k: int, bins: int, etas: int) -> dict[str, tuple[int, ...]]:
    return {"histograms": (k, bins), "eta_survivors": (etas,)}


# --- phase 4: selection (securely summed per-cluster counts) ------------------------------


@dataclass(frozen=True, kw_only=True)
class SelectRequest(Masked):
    ACTION: ClassVar[str] = "select"
    round: int
    method: str
    seed: int
    retention: float  # random: the per-sample hash keeps those below it
    eta: float  # meddel: the eta picked from the survivor counts
    keep: str  # meddel: which of a near-duplicate pair survives
    bins: int  # feddel: histogram bins the thresholds refer to
    threshold_bins: np.ndarray = array_field("i", 1, nonnegative=True)  # (k,) feddel
    boundary_fractions: np.ndarray = array_field("f", 1, nonnegative=True)  # (k,) feddel
    quotas: np.ndarray = array_field("i", 1, nonnegative=True)  # (k,) feddel

    def check(self) -> None:
        super().check()
        name = "SelectRequest"
        _check_choice(name, "method", self.method, SELECTION_NAMES)
        _check_choice(name, "keep", self.keep, KEEP_CHOICES)
        check_range(name, "retention", self.retention, 0.0, 1.0)
        check_range(name, "eta", self.eta, -1.0, 1.0)
        check_range(name, "bins", self.bins, 1, MAX_BINS)
        _same_rows(
            name,
            threshold_bins=self.threshold_bins,
            boundary_fractions=self.boundary_fractions,
            quotas=self.quotas,
        )
        if len(self.quotas) > MAX_CLUSTERS:
            raise ProtocolError(f"{name}: more than {MAX_CLUSTERS} clusters")
        if self.boundary_fractions.size and self.boundary_fractions.max() > 1:
            raise ProtocolError(f"{name}: boundary_fractions must be in [0, 1]")
        if self.threshold_bins.size and self.threshold_bins.max() >= self.bins:
            raise ProtocolError(f"{name}: threshold_bins must be < bins={self.bins}")


@dataclass(frozen=True, kw_only=True)
class SelectReply(MaskedReply):
    """The center's selected total (a center-level count) and masked per-cluster counts."""

    ACTION: ClassVar[str] = "select"
    selected: int


def select_layout(k: int) -> dict[str, tuple[int, ...]]:
    return {"per_cluster": (k,)}


# --- packing a layout into one vector and back ----------------------------------------------


def pack(layout: dict[str, tuple[int, ...]], **parts: np.ndarray) -> np.ndarray:
    """Concatenate named parts (shapes checked against the layout) into one float vector."""
    if set(parts) != set(layout):
        raise ProtocolError(f"pack: parts {sorted(parts)} do not match layout {sorted(layout)}")
    chunks = []
    for name, shape in layout.items():
        part = np.asarray(parts[name], dtype=np.float64)
        if part.shape != shape:
            raise ProtocolError(f"pack: '{name}' has shape {part.shape}, layout says {shape}")
        chunks.append(part.ravel())
    return np.concatenate(chunks) if chunks else np.zeros(0)


def unpack(layout: dict[str, tuple[int, ...]], vector: np.ndarray) -> dict[str, np.ndarray]:
    """Split a summed vector back into its named parts (ProtocolError on a length mismatch)."""
    sizes = [int(np.prod(shape)) for shape in layout.values()]
    if vector.shape != (sum(sizes),):
        raise ProtocolError(f"secure sum has {vector.size} values; the layout needs {sum(sizes)}")
    parts, offset = {}, 0
    for (name, shape), size in zip(layout.items(), sizes, strict=True):
        parts[name] = vector[offset : offset + size].reshape(shape)
        offset += size
    return parts
