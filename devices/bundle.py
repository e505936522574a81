"""Deploy bundles: one reproducible ``tar.gz`` per agent, installable on a board by ``install.py``.

The same :class:`BundleSpec` always gives the same bytes: entries are sorted, every entry has
mtime :data:`FIXED_MTIME`, owner root:root (uid/gid 0) and a normalised mode, the gzip header
carries mtime 0 and no file name. ``MANIFEST`` lists ``<sha256>  <path>`` for every file but itself
and ``bundle.json``; ``bundle.json`` (the metadata: agent, role, version, target platform, ...)
records the sha256 of ``MANIFEST``, so an edited MANIFEST is caught on the board.
"""

from __future__ import annotations

import enum
import gzip
import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from devices.board import install as board_install
from exporters.manifest import sha256_file

FORMAT = board_install.FORMAT
# 1980-01-01T00:00:00Z: the earliest time a zip (wheel) entry can carry; tar and wheel agree.
FIXED_MTIME = 315532800
UNIT_FILE = "parse-edge-agent@.service"
BOARD_TOOLS = ("__init__.py", "install.py", "release.py", "supervisor.py", "launch.py")
SAFE_PART = re.compile(r"[A-Za-z0-9_.@+-]{1,128}")


class Role(str, enum.Enum):
    """What a board does with the bundle."""

    TRAIN = "train"  # `parse-edge agent`: torch, training, gossip over MQTT
    INFER = "infer"  # `devices.serve`: onnxruntime inference only, no torch


# Python modules each role must import on the board (checked after the venv is built), and the
# distributions an offline (wheelhouse) infer install asks pip for. Train installs the project
# wheel with its own dependencies from pyproject.toml.
ROLE_IMPORTS = {
    Role.TRAIN: ("torch", "onnx", "onnxruntime", "numpy", "yaml", "paho.mqtt", "psutil"),
    Role.INFER: ("numpy", "onnxruntime", "yaml", "paho.mqtt", "msgspec"),
}
# The `board` extra of pyproject.toml plus paho-mqtt for the inference service.
INFER_REQUIREMENTS = ("numpy>=1.24", "onnxruntime>=1.18", "pyyaml>=6", "paho-mqtt>=2,<3",
                      "msgspec>=0.18")
# Room a venv needs beyond the bundle: pip and setuptools (~20 MB) plus unpacked wheels, which
# take about 3x their compressed size (torch 2.x: 180 MB wheel, 790 MB installed).
VENV_BASE_BYTES = 30_000_000
UNPACK_FACTOR = 3


class BundleError(ValueError):
    """A bundle input is unusable; the message is one line naming it and what was expected."""


@dataclass(frozen=True)
class TargetPlatform:
    """The board a bundle is built for: machine architecture (``uname -m``) and Python X.Y."""

    arch: str
    python: str

    def __post_init__(self) -> None:
        """Check the names."""
        if not re.fullmatch(r"[A-Za-z0-9_]{1,32}", self.arch):
            raise BundleError(f"target arch: expected a machine name like aarch64, got {self.arch!r}")
        if not re.fullmatch(r"3\.\d{1,2}", self.python):
            raise BundleError(f"target python: expected a version like 3.11, got {self.python!r}")


@dataclass(frozen=True)
class BundleFile:
    """One file to carry: its path inside the bundle, its bytes (or a file to read) and mode."""

    path: str
    source: bytes | Path
    mode: int = 0o644


@dataclass(frozen=True)
class BundleSpec:
    """Everything a bundle holds; the same spec always writes the same bytes.

    Secrets (broker password, HMAC key, TLS key) go to ``secrets/<name>`` with mode 0600 and are
    never part of ``config_text``.
    """

    agent: str
    role: Role
    version: str
    fleet: str
    config_text: str
    wheel: Path
    target: TargetPlatform
    secrets: Mapping[str, bytes] = field(default_factory=dict)
    files: Sequence[BundleFile] = ()
    export_dir: Path | None = None
    wheelhouse: Path | None = None
    data_path: str | None = None  # where the board reads its data, when not in the bundle
    extra_imports: tuple[str, ...] = ()
    device_profile: str | None = None  # devices.profiles name: limits execution providers
    provider: str | None = None  # onnxruntime execution provider override (infer role)


@dataclass(frozen=True)
class BundleInfo:
    """What was written."""

    path: Path
    sha256: str
    size_bytes: int
    release: str  # `<version>-<sha256[:12]>`: the release directory name on the board
    n_files: int


def release_name(version: str, sha256: str) -> str:
    """Return the release directory name of a bundle with this version and file sha256."""
    return f"{version}-{sha256[:12]}"


def _check_part(kind: str, value: str) -> str:
    for part in value.split("/"):
        if not SAFE_PART.fullmatch(part) or part in (".", ".."):
            raise BundleError(f"{kind} {value!r}: expected a relative path of plain names")
    return value


def _tree(root: Path, prefix: str, what: str) -> list[BundleFile]:
    if not root.is_dir():
        raise BundleError(f"{root}: expected a {what} folder")
    files = [p for p in sorted(root.rglob("*")) if p.is_file() and "__pycache__" not in p.parts]
    return [BundleFile(f"{prefix}/{p.relative_to(root).as_posix()}", p,
                       0o755 if p.stat().st_mode & 0o111 else 0o644) for p in files]


def collect_board_tools() -> list[BundleFile]:
    """List the board tools (installer, release manager, supervisor, launcher) and install shim."""
    here = Path(board_install.__file__).parent
    files = [BundleFile("tools/devices/__init__.py", b'"""Board tools of a parse-edge bundle."""\n')]
    files += [BundleFile(f"tools/devices/board/{name}", (here / name).read_bytes())
              for name in BOARD_TOOLS]
    shim = ('#!/usr/bin/env python3\n"""Install this bundle: python3 install.py install --bundle '
            'BUNDLE.tar.gz --prefix DIR."""\nimport sys\nfrom pathlib import Path\n\n'
            'sys.path.insert(0, str(Path(__file__).resolve().parent / "tools"))\n'
            'from devices.board.install import main  # noqa: E402\n\nsys.exit(main())\n')
    return [*files, BundleFile("install.py", shim.encode(), 0o755)]


def systemd_unit(agent: str) -> str:
    """Return the template unit ``parse-edge-<agent>@<release>.service``.

    ``@PREFIX@`` is filled in on the board. Restart policy as the supervisor's: on failure, after
    2 s, without a start limit.
    """
    return (
        "[Unit]\n"
        f"Description=parse-edge agent {agent} (release %i)\n"
        "After=network-online.target\nWants=network-online.target\nStartLimitIntervalSec=0\n\n"
        "[Service]\nType=simple\n"
        "ExecStart=@PREFIX@/releases/%i/venv/bin/python "
        "@PREFIX@/releases/%i/tools/devices/board/launch.py --prefix @PREFIX@\n"
        "Restart=on-failure\nRestartSec=2\n"
        "StandardOutput=append:@PREFIX@/log/agent.log\nStandardError=append:@PREFIX@/log/agent.log\n\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )


def collect_files(spec: BundleSpec) -> list[BundleFile]:
    """Every file of the bundle except MANIFEST and bundle.json, sorted by path.

    Raises
    ------
    BundleError
        On a missing wheel, export or wheelhouse, an unsafe path or a path used twice.
    """
    if not spec.wheel.is_file() or spec.wheel.suffix != ".whl":
        raise BundleError(f"{spec.wheel}: expected the project wheel (.whl)")
    files = [*collect_board_tools(), BundleFile(UNIT_FILE, systemd_unit(spec.agent).encode()),
             BundleFile("config/fleet.yaml", spec.config_text.encode()),
             BundleFile(f"wheels/{spec.wheel.name}", spec.wheel)]
    files += [BundleFile(f"secrets/{_check_part('secret', name)}", value, 0o600)
              for name, value in spec.secrets.items()]
    files += [BundleFile(_check_part("file", f.path), f.source, f.mode) for f in spec.files]
    if spec.export_dir is not None:
        files += _tree(spec.export_dir, "model", "exported model (parse-edge export)")
    if spec.wheelhouse is not None:
        wheels = _tree(spec.wheelhouse, "wheelhouse", "wheelhouse")
        if not any(f.path.endswith(".whl") for f in wheels):
            raise BundleError(f"{spec.wheelhouse}: expected .whl files (pip download "
                              "--only-binary=:all: -d DIR ...)")
        files += wheels
    if spec.role is Role.INFER and spec.export_dir is None:
        raise BundleError("--export: an infer bundle needs the exported model (parse-edge export)")
    files.sort(key=lambda f: f.path)
    seen = [f.path for f in files]
    if len(set(seen)) != len(seen):
        dup = next(p for p in seen if seen.count(p) > 1)
        raise BundleError(f"{dup}: expected once in the bundle, given twice")
    return files


def _sha256(source: bytes | Path) -> str:
    return hashlib.sha256(source).hexdigest() if isinstance(source, bytes) else sha256_file(source)


def _size(source: bytes | Path) -> int:
    return len(source) if isinstance(source, bytes) else source.stat().st_size


def metadata(spec: BundleSpec, files: Sequence[BundleFile], manifest: bytes) -> dict[str, object]:
    """Build the bundle.json document."""
    wheel_bytes = sum(_size(f.source) for f in files if f.path.endswith(".whl"))
    return {
        "format": FORMAT, "agent": spec.agent, "role": spec.role.value, "version": spec.version,
        "fleet": spec.fleet, "target": {"arch": spec.target.arch, "python": spec.target.python},
        "wheel": f"wheels/{spec.wheel.name}", "wheelhouse": spec.wheelhouse is not None,
        "requirements": list(INFER_REQUIREMENTS) if spec.role is Role.INFER else [],
        "imports": [*ROLE_IMPORTS[spec.role], *spec.extra_imports],
        "config": "config/fleet.yaml", "secrets": sorted(f"secrets/{n}" for n in spec.secrets),
        "model": "model" if spec.export_dir is not None else None, "data_path": spec.data_path,
        "device_profile": spec.device_profile, "provider": spec.provider,
        "unit": UNIT_FILE, "manifest_sha256": hashlib.sha256(manifest).hexdigest(),
        "venv_bytes_estimate": VENV_BASE_BYTES + UNPACK_FACTOR * wheel_bytes,
    }


def _add(tar: tarfile.TarFile, path: str, source: bytes | Path, mode: int) -> None:
    info = tarfile.TarInfo(path)
    info.size = _size(source)
    info.mtime = FIXED_MTIME
    info.mode = mode
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    if isinstance(source, bytes):
        tar.addfile(info, io.BytesIO(source))
    else:
        with source.open("rb") as f:
            tar.addfile(info, f)


def write_bundle(spec: BundleSpec, out: Path) -> BundleInfo:
    """Write the bundle to `out` (a .tar.gz); identical specs give identical bytes.

    Raises
    ------
    BundleError
        See :func:`collect_files`.
    """
    files = collect_files(spec)
    manifest = "".join(f"{_sha256(f.source)}  {f.path}\n" for f in files).encode()
    meta = json.dumps(metadata(spec, files, manifest), indent=2, sort_keys=True).encode() + b"\n"
    entries = sorted([*((f.path, f.source, f.mode) for f in files),
                      ("MANIFEST", manifest, 0o644), ("bundle.json", meta, 0o644)])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("wb") as raw:
        _write_tar(raw, entries)
    tmp.replace(out)
    digest = _sha256(out)
    return BundleInfo(out, digest, out.stat().st_size, release_name(spec.version, digest),
                      len(entries))


def _write_tar(raw: IO[bytes], entries: Iterable[tuple[str, bytes | Path, int]]) -> None:
    # filename="" and mtime=0 keep the gzip header free of the output name and the clock.
    with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for path, source, mode in entries:
            _add(tar, path, source, mode)


def read_metadata(bundle: Path) -> dict[str, Any]:
    """Read the bundle.json of a bundle file (laptop side, before flashing).

    Raises
    ------
    BundleError
        When the file is not a parse-edge bundle of this format.
    """
    try:
        with tarfile.open(bundle, "r:gz") as tar:
            f = tar.extractfile("bundle.json")
            doc = json.loads(f.read()) if f else None
    except (OSError, tarfile.TarError, KeyError, ValueError, EOFError):
        raise BundleError(f"{bundle}: expected a parse-edge bundle (.tar.gz with bundle.json)") \
            from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BundleError(f"{bundle}: bundle.json: expected format {FORMAT}")
    return doc
