"""What the deployment tests share: writing a center.toml."""

from pathlib import Path

import pytest

from feddel.common.deployment.sites import toml_document


def write_center_toml(path: Path, policy: str | None = None, **values: str | int) -> Path:
    """A center.toml; values: name, data, state, address, ca, key, port; `policy` is the body
    of a [policy] section."""
    text = (
        f"[center]\n{toml_document({k: values[k] for k in ('name', 'data', 'state')})}"
        f"[superlink]\n{toml_document({k: values[k] for k in ('address', 'ca', 'key')})}"
        f"[supernode]\n{toml_document({'runtime-port': values['port']})}"
    )
    path.write_text(text + (f"[policy]\n{policy}\n" if policy else ""))
    return path


@pytest.fixture(scope="session")
def center_toml():
    return write_center_toml
