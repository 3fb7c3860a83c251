"""The container path: deploy/Dockerfile, deploy/compose.yaml and .dockerignore.

The static checks always run. The smoke test runs where a container engine answers (`docker
info` and `docker compose version` succeed, as on CI runners with docker): it builds the image,
starts a coordinator and two centers with compose on one host, runs one round inside the
coordinator's container, and checks both status commands and the health checks. Where no
engine answers it is skipped, and the reason is printed.
"""

import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml

from feddel.common.deployment import certs
from feddel.server.deployment.operators import read_token
from feddel.simulations.synth import generate_federation

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose.yaml"
SERVICES = ("superlink", "center", "center-b")
BUILD_TIMEOUT = 3600.0
HEALTHY_TIMEOUT = 600.0


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_runs_each_service_as_the_images_user_with_a_health_check_and_no_loop():
    compose = _compose()
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "ARG FEDDEL_UID=10001" in dockerfile and "USER feddel" in dockerfile
    assert "useradd --system --uid" in dockerfile  # the uid compose runs as exists in the image
    for name in SERVICES:
        service = compose["services"][name]
        assert service["user"] == "${FEDDEL_UID:-10001}:${FEDDEL_GID:-10001}"
        assert service["restart"] == "unless-stopped"
        assert "--hold-on-error" in service["command"]  # exit 2 holds instead of looping
        check = service["healthcheck"]["test"]
        assert check[0] == "CMD" and check[-1] == "--check"
        assert service["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert compose["services"]["superlink"]["profiles"] == ["coordinator"]
    assert compose["services"]["center"]["profiles"] == ["center"]


def test_every_command_compose_runs_exists_with_its_flags():
    from feddel.client.cli import build_parser as center_parser
    from feddel.server.cli import build_parser as coordinator_parser

    parsers = {"feddel-coordinator": coordinator_parser(), "feddel-center": center_parser()}
    for service in _compose()["services"].values():
        for argv in (service["command"], service["healthcheck"]["test"][1:]):
            parsers[argv[0]].parse_args(argv[1:])  # raises on an unknown command or flag


def test_the_build_context_holds_the_package_sources_only():
    ignore = [line for line in (ROOT / ".dockerignore").read_text().splitlines()
              if line and not line.startswith("#")]  # fmt: skip
    assert ignore[0] == "*"  # everything out, .venv/ and runs/ included, then the sources in
    included = {line[1:] for line in ignore if line.startswith("!")}
    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert included == {"pyproject.toml", "README.md", *package_dirs["package-dir"].values()}
    copied = [line.split()[1] for line in (ROOT / "deploy" / "Dockerfile").read_text().splitlines()
              if line.startswith("COPY")]  # fmt: skip
    assert set(copied) == {"pyproject.toml", *package_dirs["package-dir"].values()}


# --- the smoke test, where a container engine answers ---------------------------------------


def _engine_problem() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return "no `docker` command on PATH"
    for argv, what in (([docker, "info", "--format", "{{.ServerVersion}}"], "docker info"),
                       ([docker, "compose", "version"], "docker compose version")):  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
            return f"`{what}` failed: {lines[-1]}"
    return None


@pytest.fixture(scope="module")
def engine():
    problem = _engine_problem()
    if problem is not None:
        reason = f"container smoke test skipped: no container engine here ({problem})"
        print(reason, file=sys.stderr)
        pytest.skip(reason=reason)
    return shutil.which("docker")


def _site(root: Path, uid: int) -> dict[str, str]:
    """Certificates naming `superlink` (the compose service), two centers' own keys and
    configuration, data: every host path compose mounts, as environment variables."""
    generate_federation(root / "data", centers=2, scale="small", seed=1, size=32)
    etc = root / "coordinator-etc"
    certs.init_authority(etc / "certs", certs.parse_hosts("superlink"))
    (etc / "coordinator.toml").write_text(
        '[coordinator]\ncerts = "certs"\nstate = "/var/lib/feddel/coordinator"\n'
        'host = "0.0.0.0"\nport = 9093\n[round]\nk = 4\nimage-size = 32\nmin-centers = 2\n'
        "budget = 0.1\n"
    )
    env = {"FEDDEL_UID": str(uid), "FEDDEL_GID": str(os.getgid()), "FEDDEL_PORT": "19093",
           "FEDDEL_COORDINATOR_CONFIG": str(etc),
           "FEDDEL_COORDINATOR_STATE": str(root / "coordinator-state")}  # fmt: skip
    for suffix, name in (("", "center-00"), ("_B", "center-01")):
        center_etc = root / f"{name}-etc"
        certs.make_center_key(center_etc, name)
        certs.add_center(etc / "certs", name, center_etc / "center.pub")
        shutil.copy(etc / "certs" / "ca.crt", center_etc / "ca.crt")
        (center_etc / "center.toml").write_text(
            f'[center]\nname = "{name}"\ndata = "/srv/feddel/images"\n'
            'state = "/var/lib/feddel-center"\n[superlink]\naddress = "superlink:9093"\n'
            'ca = "ca.crt"\nkey = "center.key"\n'
        )
        env |= {f"FEDDEL_CENTER{suffix}_CONFIG": str(center_etc),
                f"FEDDEL_CENTER{suffix}_IMAGES": str(root / "data" / name),
                f"FEDDEL_CENTER{suffix}_STATE": str(root / f"{name}-state")}  # fmt: skip
    for path in (root / "coordinator-state", root / "center-00-state", root / "center-01-state"):
        path.mkdir(mode=0o700)
    return env


@pytest.mark.integration
def test_compose_runs_a_round_with_a_coordinator_and_two_centers(engine, tmp_path):
    env = {**os.environ, **_site(tmp_path, os.getuid())}
    project = f"feddel-smoke-{os.getpid()}"
    compose = [engine, "compose", "-f", str(COMPOSE), "-p", project, "--profile", "coordinator",
               "--profile", "center", "--profile", "center-b"]  # fmt: skip

    def run(*args: str, timeout: float = 600.0) -> subprocess.CompletedProcess:
        return subprocess.run([*compose, *args], env=env, capture_output=True, text=True,
                              timeout=timeout, check=False)  # fmt: skip

    built = run("build", timeout=BUILD_TIMEOUT)
    assert built.returncode == 0, built.stderr[-3000:]
    try:
        started = run("up", "-d")
        assert started.returncode == 0, started.stderr[-3000:]
        deadline = time.monotonic() + HEALTHY_TIMEOUT
        while time.monotonic() < deadline:
            listing = run("ps", "--format", "json").stdout
            rows = [json.loads(line) for line in listing.splitlines() if line.strip()]
            health = {row["Service"]: row.get("Health") for row in rows}
            if all(health.get(name) == "healthy" for name in SERVICES):
                break
            time.sleep(5)
        else:
            pytest.fail(f"not healthy within {HEALTHY_TIMEOUT:g} s: {health}\n"
                        f"{run('logs', '--tail', '40').stdout[-4000:]}")  # fmt: skip
        curate = run("exec", "-T", "superlink", "feddel-coordinator", "curate", "--config",
                     "/etc/feddel/coordinator.toml", "--run-name", "smoke",
                     timeout=1800.0)  # fmt: skip
        assert curate.returncode == 0, (curate.stdout + curate.stderr)[-4000:]
        summary = json.loads((tmp_path / "coordinator-state/runs/smoke/summary.json").read_text())
        assert summary["centers"] == 2 and summary["selected"] > 0
        assert read_token(tmp_path / "coordinator-state" / "operator.token")
        status = run("exec", "-T", "center-b", "feddel-center", "status", "--config",
                     "/etc/feddel/center/center.toml", "--check")  # fmt: skip
        assert status.returncode == 0, status.stdout[-2000:]
        assert "smoke" in status.stdout
    finally:
        run("down", "--volumes", "--timeout", "60")
