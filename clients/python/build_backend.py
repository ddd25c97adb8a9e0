"""The PEP 517 build backend of this package, in the standard library only.

Why not setuptools: setuptools before 70.1 cannot build a wheel without the separate `wheel`
package, and the setuptools a fresh `python -m venv` brings (65-66 on Python 3.11) is older.
With `requires = []` and this backend, `pip install ./clients/python` needs nothing it does
not already have: it works offline, in a fresh venv, with or without build isolation. The
package is a handful of pure-Python modules, so the whole job is writing a zip file.
"""
from __future__ import annotations

import base64
import hashlib
import io
import re
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PACKAGE = "vpnagent_algorithm"
SDIST_FILES = ("pyproject.toml", "build_backend.py")
FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest zip time: same sources, same wheel
_PROJECT_KEY = re.compile(r'^([A-Za-z][A-Za-z0-9_-]*)\s*=\s*"([^"\\]*)"\s*(#.*)?$')


def project(root: Path = ROOT) -> dict[str, str]:
    """The string keys of pyproject.toml's [project] table (name, version, description,
    requires-python): the only TOML this package's metadata uses, read without tomllib,
    which Python 3.9 and 3.10 lack."""
    table: dict[str, str] = {}
    inside = False
    for line in (root / "pyproject.toml").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("["):
            inside = line == "[project]"
        elif inside and (m := _PROJECT_KEY.match(line)):
            table[m.group(1)] = m.group(2)
    missing = [k for k in ("name", "version") if k not in table]
    if missing:
        raise ValueError(f"{root / 'pyproject.toml'}: [project] lacks {', '.join(missing)}")
    return table


def _dist_name(meta: dict[str, str]) -> str:
    """The name as wheel and sdist file names spell it (PEP 427 / PEP 625)."""
    return re.sub(r"[-_.]+", "_", meta["name"]).lower()


def metadata_text(meta: dict[str, str]) -> str:
    lines = ["Metadata-Version: 2.1", f"Name: {meta['name']}", f"Version: {meta['version']}"]
    if meta.get("description"):
        lines.append(f"Summary: {meta['description']}")
    if meta.get("requires-python"):
        lines.append(f"Requires-Python: {meta['requires-python']}")
    return "\n".join(lines) + "\n"


def package_files(root: Path = ROOT) -> dict[str, bytes]:
    """The package's modules, by their path inside the wheel."""
    return {path.relative_to(root).as_posix(): path.read_bytes()
            for path in sorted((root / PACKAGE).rglob("*.py")) if "__pycache__" not in path.parts}


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def _write_wheel(wheel_directory: str, files: dict[str, bytes]) -> str:
    meta = project()
    base = f"{_dist_name(meta)}-{meta['version']}"
    dist_info = f"{base}.dist-info"
    files = {**files,
             f"{dist_info}/METADATA": metadata_text(meta).encode(),
             f"{dist_info}/WHEEL": (b"Wheel-Version: 1.0\nGenerator: vpnagent build_backend\n"
                                    b"Root-Is-Purelib: true\nTag: py3-none-any\n")}
    record = [_record_line(name, data) for name, data in files.items()] + [f"{dist_info}/RECORD,,"]
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    filename = f"{base}-py3-none-any.whl"
    with zipfile.ZipFile(Path(wheel_directory) / filename, "w", zipfile.ZIP_DEFLATED) as whl:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, FIXED_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            whl.writestr(info, data)
    return filename


# ------------------------------------------------------------------ PEP 517 / PEP 660 hooks
def get_requires_for_build_wheel(config_settings=None) -> list[str]:
    return []


def get_requires_for_build_sdist(config_settings=None) -> list[str]:
    return []


def get_requires_for_build_editable(config_settings=None) -> list[str]:
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None) -> str:
    return _write_wheel(wheel_directory, package_files())


def build_editable(wheel_directory, config_settings=None, metadata_directory=None) -> str:
    """`pip install -e`: a wheel holding only a .pth file that puts this folder on sys.path."""
    return _write_wheel(wheel_directory, {f"{_dist_name(project())}.pth": f"{ROOT}\n".encode()})


def build_sdist(sdist_directory, config_settings=None) -> str:
    meta = project()
    base = f"{_dist_name(meta)}-{meta['version']}"
    files = {**{name: (ROOT / name).read_bytes() for name in SDIST_FILES}, **package_files(),
             "PKG-INFO": metadata_text(meta).encode()}
    filename = f"{base}.tar.gz"
    with tarfile.open(Path(sdist_directory) / filename, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(f"{base}/{name}")
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return filename
