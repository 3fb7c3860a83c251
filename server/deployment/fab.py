"""The Flower app (FAB) of a deployed round: what `curate` submits and what the SuperLink runs.

A deployed round's FAB is configuration only: a pyproject.toml whose components are FedDEL's
installed ServerApp (server/deployment/deployed.py) and ClientApp (client/app.py) and whose
config defaults are CurationConfig's. Each center therefore runs the FedDEL version its IT
staff installed, whatever the coordinator has checked out.

Flower would also run a FAB that carries Python code, at the coordinator and at every center.
FedDEL's SuperLink gate (server/deployment/gate.py) refuses such a FAB with `check_fab`, so an
operator token cannot be used to run code at the hospitals.
"""

from __future__ import annotations

import importlib.metadata
import io
import tomllib
import zipfile
from pathlib import Path
from typing import Any

from feddel.common.config import CurationConfig
from feddel.common.deployment.sites import toml_document
from feddel.common.io import atomic_write_text

COMPONENTS = {
    "serverapp": "feddel.server.deployment.deployed:app",
    "clientapp": "feddel.client.app:app",
}
# Run-config keys of a deployed round that are not curation settings: who submitted it (set by
# `curate`, checked by the gate against the operator's token, read by each center's policy).
OPERATOR_KEY = "operator"
_METADATA_PREFIX = ".info/"  # Flower's FAB manifest (and signatures), never executed


def app_config_defaults() -> dict[str, Any]:
    return {**CurationConfig().to_run_config(), OPERATOR_KEY: ""}


def write_app(folder: Path) -> Path:
    """The Flower app of a deployed round: pyproject.toml only."""
    version = importlib.metadata.version("feddel")
    lines = [
        "[project]",
        toml_document({
            "name": "feddel", "version": version, "license": "Apache-2.0",
            "description": "FedDEL federated curation round (configuration only)",
        }),
        "[tool.flwr.app]", toml_document({"publisher": "feddel"}),
        "[tool.flwr.app.components]", toml_document(COMPONENTS),
        "[tool.flwr.app.config]", toml_document(app_config_defaults()),
    ]  # fmt: skip
    atomic_write_text(folder / "pyproject.toml", "\n".join(lines))
    return folder


def curation_settings(run_config: dict[str, Any]) -> dict[str, Any]:
    """A deployed run's config without the keys that are not curation settings."""
    return {key: value for key, value in run_config.items() if key != OPERATOR_KEY}


def check_fab(content: bytes) -> str | None:
    """Why the SuperLink must refuse this FAB, or None if it is a FedDEL round."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(content))
        names = archive.namelist()
        code = sorted(
            n for n in names if n != "pyproject.toml" and not n.startswith(_METADATA_PREFIX)
        )
        if code:
            shown = ", ".join(code[:3]) + (f" and {len(code) - 3} more" if len(code) > 3 else "")
            return (
                f"the app carries files besides its configuration ({shown}); this SuperLink "
                "runs FedDEL's installed code only: submit rounds with `feddel-coordinator curate`"
            )
        project = tomllib.loads(archive.read("pyproject.toml").decode("utf-8"))
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return "the app is not a FedDEL round (no readable pyproject.toml in a FAB archive)"
    components = project.get("tool", {}).get("flwr", {}).get("app", {}).get("components")
    if components != COMPONENTS:
        return (
            f"the app's components {components} are not FedDEL's {COMPONENTS}: submit rounds "
            "with `feddel-coordinator curate`"
        )
    return None
