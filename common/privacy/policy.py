"""A center's own privacy floor: what it will share, whatever the coordinator asks.

The coordinator chooses the round's settings (min-count, k-local, image size, noise, roster);
a center checks each request against its policy before it computes anything, and refuses one
below its floor with a one-line reason (`Refused`). The defaults are the safe ones, so a
center without a `[privacy]` section in its center.toml, and every simulated center, is
protected the same way; a hospital may raise them, and only a center can lower its own.

    [privacy]
    min-members = 10          # no statistic it shares describes fewer samples
    max-k-local = 16          # local centroids it proposes for k-FED seeding, at most
    max-image-size = 512      # pixels per side it embeds at, at most
    min-roster = 3            # centers in any secure sum it joins, at least
    min-noise-sigma = 0.05    # Gaussian noise in each embedding sum, at least (unit embeddings)
    min-image-noise = 8192.0  # Gaussian noise per pixel of the federated image sum, at least
    share-mean-image = true   # add its images to the federated mean image (secure sum only)
    max-dp-epsilon = 0.0      # its own privacy budget over every round it joins (0: none)
    dp-delta = 1e-6           # the delta that budget's epsilon is stated at

With `max-dp-epsilon` set, the center counts the privacy loss of every release it makes
itself (client/budget.py), whatever plan the coordinator claims: it joins only rounds
whose every release carries noise (`dp-epsilon` rounds), and refuses a release that would
take its total past the budget. This bounds what even a coordinator that deviates from the
protocol, asking crafted questions run after run, can learn, as long as every roster member
adds its noise share (docs/design.md, section 3).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from feddel.common.errors import ConfigError, Refused

SECTION = "privacy"


@dataclass(frozen=True)
class PrivacyPolicy:
    """One center's floor; field names are center.toml keys with '-' -> '_'."""

    min_members: int = 10
    max_k_local: int = 16
    max_image_size: int = 512
    min_roster: int = 3
    min_noise_sigma: float = 0.05
    min_image_noise: float = 8192.0
    share_mean_image: bool = True
    max_dp_epsilon: float = 0.0
    dp_delta: float = 1e-6

    def __post_init__(self) -> None:
        for key in ("min_members", "max_k_local", "min_roster"):
            if getattr(self, key) < 1:
                raise ConfigError(f"[privacy] {_key(key)} = {getattr(self, key)} must be >= 1")
        if self.max_image_size < 16:
            raise ConfigError(f"[privacy] max-image-size = {self.max_image_size} must be >= 16")
        if not 0.0 < self.dp_delta < 1.0:
            raise ConfigError(f"[privacy] dp-delta = {self.dp_delta} must be in (0, 1)")
        for key in ("min_noise_sigma", "min_image_noise", "max_dp_epsilon"):
            if not getattr(self, key) >= 0.0:
                raise ConfigError(f"[privacy] {_key(key)} = {getattr(self, key)} must be >= 0")

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> PrivacyPolicy:
        """The policy of a center.toml [privacy] table (keys already type-checked)."""
        return cls(**{key.replace("-", "_"): value for key, value in section.items()})

    # --- what a center checks before it acts -----------------------------------------------

    def check_min_count(self, min_count: int) -> None:
        if min_count < self.min_members:
            _refuse(f"min-count={min_count} is below this center's min-members={self.min_members}")

    def check_k_local(self, k_local: int) -> None:
        if k_local > self.max_k_local:
            _refuse(f"k-local={k_local} is above this center's max-k-local={self.max_k_local}")

    def check_image_size(self, image_size: int) -> None:
        if image_size > self.max_image_size:
            _refuse(
                f"image-size={image_size} is above this center's max-image-size="
                f"{self.max_image_size}"
            )

    def check_roster(self, roster: int) -> None:
        if roster < self.min_roster:
            _refuse(
                f"a secure sum over {roster} center(s) is below this center's min-roster="
                f"{self.min_roster}: the sum would say too much about each member"
            )

    def check_noise(self, sigma: float) -> None:
        if sigma < self.min_noise_sigma:
            _refuse(
                f"noise-sigma={sigma:g} is below this center's min-noise-sigma="
                f"{self.min_noise_sigma:g}"
            )

    def check_image_noise(self, sigma: float) -> None:
        if sigma < self.min_image_noise:
            _refuse(
                f"image-noise={sigma:g} is below this center's min-image-noise="
                f"{self.min_image_noise:g}"
            )

    @property
    def has_budget(self) -> bool:
        return self.max_dp_epsilon > 0.0

    def check_dp_release(self, phase: str) -> None:
        """A release that no noise protects (exact counts, k-FED local centroids) has no finite
        privacy cost: a center with its own budget refuses it."""
        if self.has_budget:
            _refuse(
                f"phase '{phase}' would release exact counts, which no privacy budget covers, and "
                f"this center has max-dp-epsilon={self.max_dp_epsilon:g}; run the round with "
                "dp-epsilon set"
            )


def _key(name: str) -> str:
    return name.replace("_", "-")


def _refuse(reason: str) -> None:
    raise Refused(f"{reason} (center.toml [privacy])")


# center.toml [privacy] key -> type, for common/deployment/sites.py read_site_config
SCHEMA: dict[str, type] = {
    _key(f.name): {"int": int, "float": float, "bool": bool}[str(f.type)]
    for f in dataclasses.fields(PrivacyPolicy)
}
