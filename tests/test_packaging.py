"""The distribution installs one import namespace, feddel.*, over the top-level folders."""

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("common", "client", "server", "simulations")
IGNORED = shutil.ignore_patterns("__pycache__")


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_packages_list_every_folder_with_an_init():
    found = {
        "feddel." + ".".join(init.parent.relative_to(ROOT).parts)
        for folder in FOLDERS
        for init in (ROOT / folder).rglob("__init__.py")
    }
    assert set(_setuptools()["packages"]) == found


def test_package_dir_maps_each_folder_under_feddel():
    assert _setuptools()["package-dir"] == {f"feddel.{name}": name for name in FOLDERS}


def test_no_folder_holds_more_than_twelve_modules():
    for folder in FOLDERS:
        for directory in [ROOT / folder, *(p.parent for p in (ROOT / folder).rglob("__init__.py"))]:
            modules = [p for p in directory.glob("*.py") if p.name != "__init__.py"]
            assert len(modules) <= 12, f"{directory.relative_to(ROOT)}: {len(modules)} modules"


def test_wheel_puts_only_feddel_in_site_packages(tmp_path):
    """Built from a copy: setuptools writes build/ beside the sources it builds."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", *FOLDERS):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, source / name, **({"ignore": IGNORED} if name in FOLDERS else {}))
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(source)],
        check=True,
    )
    (wheel,) = wheels.glob("feddel-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"feddel"}
