"""A center's privacy floor: safe defaults, refusals with one-line reasons, center.toml."""

import pytest

from feddel.client.site import load_privacy_policy
from feddel.common.errors import ConfigError, Refused
from feddel.common.privacy.policy import PrivacyPolicy


def test_safe_defaults():
    policy = PrivacyPolicy()
    assert (policy.min_members, policy.min_roster, policy.max_k_local) == (10, 3, 16)
    assert policy.min_noise_sigma > 0 and policy.min_image_noise > 0
    assert policy.max_image_size == 512 and policy.share_mean_image


@pytest.mark.parametrize(
    ("check", "value", "reason"),
    [
        ("check_min_count", 1, "min-count=1 is below this center's min-members=10"),
        ("check_k_local", 256, "k-local=256 is above this center's max-k-local=16"),
        ("check_image_size", 4096, "image-size=4096 is above this center's max-image-size=512"),
        ("check_roster", 1, "a secure sum over 1 center(s) is below this center's min-roster=3"),
        ("check_noise", 0.0, "noise-sigma=0 is below this center's min-noise-sigma=0.05"),
        ("check_image_noise", 1.0, "image-noise=1 is below this center's min-image-noise"),
    ],
)
def test_a_request_below_the_floor_is_refused_in_one_line(check, value, reason):
    with pytest.raises(Refused, match=r"\(center\.toml \[privacy\]\)") as caught:
        getattr(PrivacyPolicy(), check)(value)
    assert str(caught.value).startswith(reason) and "\n" not in str(caught.value)


def test_requests_at_or_inside_the_floor_pass():
    policy = PrivacyPolicy()
    policy.check_min_count(10)
    policy.check_k_local(16)
    policy.check_image_size(512)
    policy.check_roster(3)
    policy.check_noise(0.05)
    policy.check_image_noise(policy.min_image_noise)


def test_center_toml_privacy_section_raises_or_lowers_the_floor(tmp_path):
    toml = tmp_path / "center.toml"
    toml.write_text("[privacy]\nmin-members = 25\nmin-roster = 2\nshare-mean-image = false\n")
    policy = load_privacy_policy(toml)
    assert (policy.min_members, policy.min_roster, policy.share_mean_image) == (25, 2, False)
    assert policy.max_k_local == PrivacyPolicy().max_k_local  # unset keys keep the defaults
    toml.write_text("[privacy]\nmin-members = 0\n")
    with pytest.raises(ConfigError, match="min-members = 0 must be >= 1"):
        load_privacy_policy(toml)
    toml.write_text('[privacy]\nmin-roster = "3"\n')
    with pytest.raises(ConfigError, match="min-roster"):
        load_privacy_policy(toml)
    toml.write_text("[privacy]\nmin-rooster = 3\n")
    with pytest.raises(ConfigError, match="unknown key"):
        load_privacy_policy(toml)
