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
import hashlib
import io
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple, Self

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common import serde
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from feddel.common.config import KEEP_CHOICES
from feddel.common.curation.methods import SELECTION_NAMES
from feddel.common.errors import ProtocolError
from feddel.common.privacy import secagg
from feddel.common.privacy.noise import noise_share
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
# Error.code of a center that declines a request below its privacy floor (center.toml); the
# reason reads "<center name>: <what it refused and its floor>".
CENTER_REFUSED = 3


@dataclass(frozen=True)
class ArraySpec:
    """What an array field must look like: 'f' float, 'i' integer or 'u' a masked vector of
    32- or 64-bit words (common/privacy/secagg.py), its rank, its sign."""

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
        if array.dtype not in (np.dtype(np.uint32), np.dtype(np.uint64)):
            raise ProtocolError(f"{message}: array '{key}' must be {_KIND['u']}, got {array.dtype}")
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


_KIND = {"f": "floating point", "i": "integer", "u": "uint32 or uint64"}
_COUNT_FIELDS = {
    "files", "samples", "unreadable", "duplicate_files", "disruptive", "dim",
    "candidates", "selected", "k_local", "min_count", "bins", "round", "attempt", "image_size",
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

    def check(self) -> None:
        name = "InventoryReply"
        check_center_name(name, self.center)
        # every file is a sample, unreadable or a copy; a multi-frame file (a volume, a cine)
        # is several samples, so samples may outnumber the files they come from
        if self.files > self.samples + self.unreadable + self.duplicate_files:
            raise ProtocolError(
                f"{name}: files={self.files} exceeds samples + unreadable + duplicate_files "
                f"({self.samples} + {self.unreadable} + {self.duplicate_files})"
            )
        if self.disruptive > self.samples:
            raise ProtocolError(f"{name}: disruptive={self.disruptive} exceeds samples")


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
    """Fields of every securely summed phase: who is in the sum, which attempt it is, and the
    Gaussian noise the sum must carry (common/privacy/noise.py): `noise_sigma` in each sum of
    embeddings (or pixels), `count_sigma` in each count (0: exact). Each of the m roster
    members adds 1/sqrt(m) of it. `samples` (the federation's samples at inventory) bounds
    every value of the sum; with the roster's size and the sigmas it fixes the ring the sum is
    taken in, on both sides (`sum_ring`)."""

    run: str
    attempt: int
    noise_sigma: float
    count_sigma: float
    samples: int
    roster: np.ndarray = array_field("i", 2, nonnegative=True)  # (m, 32) public keys, as bytes

    def check(self) -> None:
        name = type(self).__name__
        check_run(name, self.run)
        check_range(name, "noise_sigma", self.noise_sigma, 0.0, np.inf)
        check_range(name, "count_sigma", self.count_sigma, 0.0, np.inf)

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
    noise_sigma: float  # std of the noise in each local centroid's sum (the center's own)

    def check(self) -> None:
        check_run("SeedRequest", self.run)
        check_range("SeedRequest", "noise_sigma", self.noise_sigma, 0.0, np.inf)
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


# --- phase 2: Lloyd (securely summed: first the cell sizes, then the open cells' sums) -------


@dataclass(frozen=True, kw_only=True)
class CountsRequest(Masked):
    """How many members each center's cell holds: decides which cells are open (>= min-count)
    before any sum over them is shared."""

    ACTION: ClassVar[str] = "counts"
    method: str
    centers: np.ndarray = array_field("f", 2)  # (k, d)

    def check(self) -> None:
        super().check()
        _check_choice("CountsRequest", "method", self.method, SELECTION_NAMES)
        _check_centers("CountsRequest", self.centers)


@dataclass(frozen=True, kw_only=True)
class CountsReply(MaskedReply):
    """Masked count (k,): see `counts_layout`."""

    ACTION: ClassVar[str] = "counts"


def counts_layout(k: int) -> dict[str, tuple[int, ...]]:
    return {"count": (k,)}


@dataclass(frozen=True, kw_only=True)
class LloydRequest(Masked):
    """The open cells' statistics: every eligible sample assigned to its nearest open center,
    so each cell holds at least the members its count showed. The centers are those of the
    counts request just before (`cells`: their digest), so they are not sent twice; `open`
    flags the ones whose cell reached min-count."""

    ACTION: ClassVar[str] = "lloyd"
    method: str
    cells: str  # centers_digest of the counts request's centers
    open: np.ndarray = array_field("i", 1, nonnegative=True)  # (k,) 0 or 1

    def check(self) -> None:
        super().check()
        name = "LloydRequest"
        _check_choice(name, "method", self.method, SELECTION_NAMES)
        if not 1 <= len(self.open) <= MAX_CLUSTERS or self.open.max(initial=0) > 1:
            raise ProtocolError(f"{name}: open must be 1 to {MAX_CLUSTERS} flags of 0 or 1")
        if not self.open.any():
            raise ProtocolError(f"{name}: no cell is open")


def centers_digest(centers: np.ndarray) -> str:
    """A short name for a set of centers, so a request can refer to the ones sent before."""
    data = np.ascontiguousarray(centers, dtype=np.float64)
    return hashlib.sha256(repr(data.shape).encode() + data.tobytes()).hexdigest()[:32]


@dataclass(frozen=True, kw_only=True)
class LloydReply(MaskedReply):
    """Masked (count (k,), sum (k, d)): see `lloyd_layout`."""

    ACTION: ClassVar[str] = "lloyd"


def lloyd_layout(k: int, d: int) -> dict[str, tuple[int, ...]]:
    """Counts and sums only: the squared distances of unit rows follow from them
    (common/curation/kmeans.py, `unit_row_stats`)."""
    return {"count": (k,), "sum": (k, d)}


# --- phase 3: scoring (securely summed) -----------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ScoreRequest(Masked):
    ACTION: ClassVar[str] = "score"
    method: str
    tau: float
    eps: float
    eta: float
    keep: str
    series_share: float  # the share of a series a center may keep as candidates; 0 = no cap
    centers: np.ndarray = array_field("f", 2)  # (k, d)
    prior: np.ndarray = array_field("f", 1, nonnegative=True)  # (k,)

    def check(self) -> None:
        super().check()
        name = "ScoreRequest"
        check_range(name, "series_share", self.series_share, 0.0, 1.0)
        _check_choice(name, "method", self.method, SELECTION_NAMES)
        _check_choice(name, "keep", self.keep, KEEP_CHOICES)
        check_range(name, "tau", self.tau, np.finfo(np.float64).tiny, np.inf)
        check_range(name, "eps", self.eps, 0.0, 2.0)
        check_range(name, "eta", self.eta, -1.0, 1.0)
        _check_centers(name, self.centers)
        _same_rows(name, centers=self.centers, prior=self.prior)
        if not self.prior.all():
            raise ProtocolError(f"{name}: prior must be > 0 for every cluster")


@dataclass(frozen=True, kw_only=True)
class ScoreReply(MaskedReply):
    """Masked (candidates (k,), eta_survivors (len(ETA_GRID),), beyond_share (k,)): see
    `score_layout`."""

    ACTION: ClassVar[str] = "score"


def score_layout(k: int, etas: int) -> dict[str, tuple[int, ...]]:
    return {"candidates": (k,), "eta_survivors": (etas,), "beyond_share": (k,)}


@dataclass(frozen=True, kw_only=True)
class HistogramRequest(Masked):
    """The score histograms of the clusters whose candidates reach min-count (`open` = 1);
    a center sends zeros for the others."""

    ACTION: ClassVar[str] = "histograms"
    method: str
    bins: int
    open: np.ndarray = array_field("i", 1, nonnegative=True)  # (k,) 0 or 1

    def check(self) -> None:
        super().check()
        name = "HistogramRequest"
        _check_choice(name, "method", self.method, SELECTION_NAMES)
        check_range(name, "bins", self.bins, 1, MAX_BINS)
        if not 1 <= len(self.open) <= MAX_CLUSTERS or self.open.max(initial=0) > 1:
            raise ProtocolError(f"{name}: open must be 1 to {MAX_CLUSTERS} flags of 0 or 1")


@dataclass(frozen=True, kw_only=True)
class HistogramReply(MaskedReply):
    """Masked histograms (k, bins): see `histogram_layout`."""

    ACTION: ClassVar[str] = "histograms"


def histogram_layout(k: int, bins: int) -> dict[str, tuple[int, ...]]:
    return {"histograms": (k, bins)}


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
    # (k,) feddel: share kept, hardest first, in clusters planned without a histogram
    ranked_fractions: np.ndarray = array_field("f", 1, nonnegative=True)

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
            ranked_fractions=self.ranked_fractions,
        )
        if len(self.quotas) > MAX_CLUSTERS:
            raise ProtocolError(f"{name}: more than {MAX_CLUSTERS} clusters")
        for field_name in ("boundary_fractions", "ranked_fractions"):
            fractions = getattr(self, field_name)
            if fractions.size and fractions.max() > 1:
                raise ProtocolError(f"{name}: {field_name} must be in [0, 1]")
        if self.threshold_bins.size and self.threshold_bins.max() >= self.bins:
            raise ProtocolError(f"{name}: threshold_bins must be < bins={self.bins}")


@dataclass(frozen=True, kw_only=True)
class SelectReply(MaskedReply):
    """The center's selected total (a center-level count) and masked per-cluster counts."""

    ACTION: ClassVar[str] = "select"
    selected: int


def select_layout(k: int) -> dict[str, tuple[int, ...]]:
    return {"per_cluster": (k,)}


# --- the federated mean image (optidel) and, with DP, the moments k-means starts from ------


@dataclass(frozen=True, kw_only=True)
class MeanImageRequest(Masked):
    """The sum of the images of every center holding at least min_count of them (and willing
    to share), with their count: the federated mean image, the null predictor of MAE PVI."""

    ACTION: ClassVar[str] = "mean_image"
    image_size: int
    min_count: int

    def check(self) -> None:
        super().check()
        check_range("MeanImageRequest", "image_size", self.image_size, 16, MAX_IMAGE_SIZE)
        check_range("MeanImageRequest", "min_count", self.min_count, 1, MAX_COUNT)


@dataclass(frozen=True, kw_only=True)
class MeanImageReply(MaskedReply):
    """Masked (count (1,), image_sum (s, s, 3)): see `mean_image_layout`."""

    ACTION: ClassVar[str] = "mean_image"


def mean_image_layout(size: int) -> dict[str, tuple[int, ...]]:
    return {"count": (1,), "image_sum": (size, size, 3)}


@dataclass(frozen=True, kw_only=True)
class MomentsRequest(Masked):
    """With DP, the first and second moments of the eligible embeddings (count, sum, sum of
    outer products): k-means starts from them instead of the k-FED local centroids, whose
    local clustering has no bounded sensitivity."""

    ACTION: ClassVar[str] = "moments"
    method: str

    def check(self) -> None:
        super().check()
        _check_choice("MomentsRequest", "method", self.method, SELECTION_NAMES)


@dataclass(frozen=True, kw_only=True)
class MomentsReply(MaskedReply):
    """Masked (count (1,), sum (d,), outer (d, d)): see `moments_layout`."""

    ACTION: ClassVar[str] = "moments"


def moments_layout(d: int) -> dict[str, tuple[int, ...]]:
    return {"count": (1,), "sum": (d,), "outer": (d, d)}


class Part(NamedTuple):
    """How one named part of a securely summed vector is noised and bounded: it carries the
    request's `sigma` ("count": count_sigma, "noise": noise_sigma) x `times`, and one sample
    adds at most `per_sample` to the absolute value of each of its values."""

    sigma: str
    times: float
    per_sample: float

    @property
    def integral(self) -> bool:
        """Integer counts: exact at any fixed-point step of at most 1."""
        return self.sigma == "count"


# Counts get count_sigma, sums noise_sigma. One sample adds 1 to a count; for unit embeddings,
# at most 1 to each coordinate of a sum and of a sum of outer products, 255 to a pixel of an
# image sum.
PARTS: dict[str, Part] = {
    "count": Part("count", 1.0, 1.0), "candidates": Part("count", 1.0, 1.0),
    "eta_survivors": Part("count", 1.0, 1.0), "beyond_share": Part("count", 1.0, 1.0),
    "histograms": Part("count", 1.0, 1.0), "per_cluster": Part("count", 1.0, 1.0),
    "sum": Part("noise", 1.0, 1.0), "outer": Part("noise", 1.0, 1.0),
    "image_sum": Part("noise", 1.0, 255.0),
}  # fmt: skip
NOISE_BOUND = 10.0  # standard deviations: a Gaussian draw beyond it has probability 1.5e-23
FLOAT_SLACK = 2.0**-10  # relative: float32 unit rows may exceed norm 1 by a few ulps
QUANTIZATION = 4.0  # a noisy sum's worst-case rounding error is at most 1/4 of its noise std


def _per_value(layout: dict[str, tuple[int, ...]], of: Callable[[Part], float]) -> np.ndarray:
    return np.concatenate(
        [np.full(int(np.prod(shape)), float(of(PARTS[name]))) for name, shape in layout.items()]
    )


def noise_scales(layout: dict[str, tuple[int, ...]], request: Masked) -> np.ndarray:
    """Per-value standard deviation of the noise the whole roster's sum must carry."""
    sigma = {"count": request.count_sigma, "noise": request.noise_sigma}
    return _per_value(layout, lambda part: sigma[part.sigma] * part.times)


def value_bounds(
    layout: dict[str, tuple[int, ...]], request: Masked, samples: int, members: int
) -> np.ndarray:
    """The largest |value| a sum over `members` roster members holding `samples` samples
    between them can reach: per_sample x samples (with FLOAT_SLACK), plus NOISE_BOUND standard
    deviations of each member's share of the noise. Over the whole roster (`request.samples`,
    every member) it bounds the sum; for one center, that center's share of it."""
    per_sample = _per_value(layout, lambda part: part.per_sample)
    share = noise_share(1.0, len(request.roster)) * noise_scales(layout, request)
    return per_sample * samples * (1.0 + FLOAT_SLACK) + NOISE_BOUND * members * share


def sum_ring(layout: dict[str, tuple[int, ...]], request: Masked) -> secagg.Ring:
    """The ring of this request's secure sum, as both sides derive it: 32-bit words whenever
    the roster's bound leaves every value the fractional bits it needs (`_min_shifts`), else
    64-bit; the same request always gives the same ring."""
    members = len(request.roster)
    bounds = value_bounds(layout, request, request.samples, members)
    return secagg.fit_ring(bounds, _min_shifts(layout, request, members), members)


def _min_shifts(layout: dict[str, tuple[int, ...]], request: Masked, members: int) -> np.ndarray:
    """Fractional bits each value needs. An exact count: none. A noisy value: enough that the
    members' roundings (half a step each, at worst all alike) stay below 1/QUANTIZATION of its
    noise's std. An exact float sum (no noise asked): the 64-bit ring's 2^-24."""
    sigma = {"count": request.count_sigma, "noise": request.noise_sigma}

    def bits(part: Part) -> int:
        std = sigma[part.sigma] * part.times
        if std > 0:
            needed = math.ceil(math.log2(members * QUANTIZATION / (2.0 * std)))
            return min(max(needed, 0), secagg.MAX_SHIFT)
        return 0 if part.integral else secagg.MAX_SHIFT

    return _per_value(layout, bits).astype(np.int64)


def check_share(
    layout: dict[str, tuple[int, ...]], request: Masked, values: np.ndarray, samples: int
) -> None:
    """A center's packed values (noise included) must lie within its share of the sum's bound:
    the shares of all members add up to the bound the ring was fitted to, so the sum cannot
    wrap. Raises ProtocolError naming the first value out of bounds, never sends it."""
    if samples > request.samples:
        raise ProtocolError(
            f"this center holds {samples} samples; the secure sum is bounded for "
            f"{request.samples} in the whole federation"
        )
    bounds = unpack(layout, value_bounds(layout, request, samples, 1))
    for name, part in unpack(layout, values).items():
        over = np.flatnonzero(np.abs(part.ravel()) > bounds[name].ravel())
        if over.size:
            value, bound = part.ravel()[over[0]], bounds[name].ravel()[over[0]]
            raise ProtocolError(
                f"'{name}' value {value:.6g} exceeds {bound:.6g}, this center's bound "
                f"({PARTS[name].per_sample:g} per sample x {samples} samples, plus noise); "
                "its secure sum could wrap"
            )


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
