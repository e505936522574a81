"""Install a parse-edge bundle as a release on a board (stdlib only).

Shipped in every bundle (``install.py`` at its root runs this) and run by ``parse-edge flash``
over SSH; by hand: ``python3 install.py install --bundle B.tar.gz --prefix /opt/parse-edge``
installs and starts it. A release directory only gets its final name once every step (checksum,
platform check, extraction, MANIFEST verification, venv, package install, import check) has
passed; a failure removes the half-built directory and exits 2 after one ``error:`` line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

from devices.board.release import (
    HEALTH_S,
    BoardError,
    activate,
    init_system,
    link_target,
    locked,
    rollback,
    running,
    say,
    start_current,
    status,
    stop,
)

FORMAT = 1
PIP_ENV = {"PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1",
           "PIP_NO_INPUT": "1"}


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def board_platform() -> dict[str, str]:
    """Return the machine architecture and Python ``major.minor`` of this interpreter."""
    return {"arch": platform.machine(), "python": f"{sys.version_info[0]}.{sys.version_info[1]}"}


def free_bytes(path: Path) -> int:
    """Bytes available to us on the file system holding `path` (or its nearest parent)."""
    while not path.exists():
        path = path.parent
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def probe(prefix: Path, name: str | None) -> dict[str, Any]:
    """Report what flash needs to plan: platform, free space, releases, whether the agent runs."""
    release = prefix / "releases" / name if name else None
    return {
        **board_platform(), "init": init_system(), "free_bytes": free_bytes(prefix),
        "current": link_target(prefix / "current"), "previous": link_target(prefix / "previous"),
        "installed": bool(release and (release / ".installed").exists()),
        "running": running(prefix),
    }



def _safe_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    members = tar.getmembers()
    for m in members:
        parts = Path(m.name).parts
        if m.name.startswith("/") or ".." in parts or not (m.isreg() or m.isdir()):
            raise BoardError(f"bundle entry {m.name!r}: expected a plain file or folder inside "
                             "the bundle")
    return members


def _read_meta(tar: tarfile.TarFile) -> dict[str, Any]:
    try:
        f = tar.extractfile("bundle.json")
        doc = json.loads(f.read() if f else b"")
    except (KeyError, ValueError):
        raise BoardError("bundle.json: expected the bundle's metadata (is this a parse-edge "
                         "bundle?)") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BoardError(f"bundle.json: format: expected {FORMAT}")
    return doc


def check_platform(meta: dict[str, Any]) -> None:
    """Refuse a bundle built for another machine architecture or Python version."""
    target = meta.get("target") or {}
    here = board_platform()
    if not isinstance(target, dict) or {k: target.get(k) for k in here} != here:
        want = f"{target.get('arch')}/Python {target.get('python')}" if isinstance(target, dict) \
            else "?"
        raise BoardError(f"bundle targets {want}, board has {here['arch']}/Python "
                         f"{here['python']}; expected a bundle built for this board "
                         "(bundle --target-arch/--target-python)")


def verify_manifest(root: Path, meta: dict[str, Any]) -> int:
    """Check every file against MANIFEST and MANIFEST against bundle.json; the file count.

    Raises
    ------
    BoardError
        On an edited MANIFEST, a changed, missing or unlisted file.
    """
    manifest = root / "MANIFEST"
    if not manifest.is_file() or sha256_file(manifest) != meta.get("manifest_sha256"):
        raise BoardError("MANIFEST: expected the sha256 recorded in bundle.json (MANIFEST edited "
                         "or missing)")
    listed: dict[str, str] = {}
    for i, line in enumerate(manifest.read_text().splitlines(), 1):
        digest, _, rel = line.partition("  ")
        if len(digest) != 64 or not rel or ".." in Path(rel).parts:
            raise BoardError(f"MANIFEST: line {i}: expected '<sha256>  <path>'")
        listed[rel] = digest
    present = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    unlisted = present - set(listed) - {"MANIFEST", "bundle.json"}
    if unlisted:
        raise BoardError(f"{sorted(unlisted)[0]}: expected in MANIFEST (file not listed)")
    for rel, digest in sorted(listed.items()):
        path = root / rel
        if not path.is_file():
            raise BoardError(f"{rel}: listed in MANIFEST but missing from the bundle")
        if sha256_file(path) != digest:
            raise BoardError(f"{rel}: sha256 does not match MANIFEST (file changed)")
    return len(listed)


def _outer_pip(python: str) -> bool:
    """Tell whether the board interpreter's pip can install into another environment.

    That is ``pip --python`` (pip >= 22.3); venvs are then made without pip, which saves the
    ~4 s ``ensurepip`` takes per release.
    """
    proc = subprocess.run([python, "-m", "pip", "--version"], capture_output=True, text=True,
                          env={**os.environ, **PIP_ENV})
    parts = proc.stdout.split()
    try:
        version = tuple(int(x) for x in parts[1].split(".")[:2]) if proc.returncode == 0 else ()
    except (IndexError, ValueError):
        return False
    return version >= (22, 3)


def _pip(pip: list[str], args: list[str]) -> None:
    env = {**os.environ, **PIP_ENV}
    proc = subprocess.run([*pip, "install", "-q", "--no-index", "--no-cache-dir", *args],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        tail = lines[-1] if lines else f"exit status {proc.returncode}"
        raise BoardError(f"pip install failed: {tail}")


def _make_venv(root: Path, meta: dict[str, Any], python: str) -> None:
    venv = root / "venv"
    vpy = venv / "bin" / "python"
    wheelhouse = bool(meta.get("wheelhouse"))
    outer = _outer_pip(python)
    cmd = [python, "-m", "venv", *([] if wheelhouse else ["--system-site-packages"]),
           *(["--without-pip"] if outer else []), str(venv)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        raise BoardError(f"venv: {tail[0]} (expected `{python} -m venv` to work; on Debian "
                         "install python3-venv)")
    pip = [python, "-m", "pip", "--python", str(vpy)] if outer else [str(vpy), "-m", "pip"]
    wheel = root / str(meta["wheel"])
    if wheelhouse and meta.get("role") == "train":
        _pip(pip, ["--find-links", str(root / "wheelhouse"), str(wheel)])
    else:
        _pip(pip, ["--no-deps", str(wheel)])
        if wheelhouse:
            requirements = [str(r) for r in meta.get("requirements", [])]
            _pip(pip, ["--find-links", str(root / "wheelhouse"), *requirements])
    say("venv", f"{venv} ({'wheelhouse, --no-index' if wheelhouse else '--system-site-packages'})")
    modules = [str(m) for m in meta.get("imports", [])]
    check = ("import importlib.util, sys; missing = [m for m in sys.argv[1:] "
             "if importlib.util.find_spec(m) is None]; print(' '.join(missing)); "
             "sys.exit(1 if missing else 0)")
    proc = subprocess.run([str(vpy), "-c", check, *modules], capture_output=True, text=True)
    if proc.returncode != 0:
        missing = proc.stdout.strip() or proc.stderr.strip().splitlines()[-1:]
        raise BoardError(f"venv lacks Python packages {missing}: expected them from the bundle's "
                         "wheelhouse (bundle --wheelhouse) or the board's system site packages")


def install(prefix: Path, bundle: Path, name: str | None, expect_sha256: str | None,
            python: str) -> str:
    """Install `bundle` as a release under `prefix`; returns the release name.

    Raises
    ------
    BoardError
        On a checksum mismatch, a bundle for another platform, a bad MANIFEST, a full disk or a
        failed venv/package install; nothing is left under releases/ then.
    """
    digest = sha256_file(bundle)
    if expect_sha256 and digest != expect_sha256:
        raise BoardError(f"{bundle.name}: sha256 after copy is {digest[:12]}, expected "
                         f"{expect_sha256[:12]} (copy corrupted)")
    say("checksum", f"{bundle.name} sha256 {digest[:12]} ok")
    try:
        with tarfile.open(bundle, "r:gz") as tar:
            members = _safe_members(tar)
            meta = _read_meta(tar)
            check_platform(meta)
            say("platform", f"{meta['target']} matches the board")
            name = name or f"{meta['version']}-{digest[:12]}"
            if (prefix / "releases" / name / ".installed").exists():
                say("install", f"release {name} already installed")
                return name
            _build(prefix, name, tar, members, meta, python)
    except (tarfile.TarError, EOFError) as exc:
        raise BoardError(f"{bundle.name}: expected a gzip tar bundle ({exc})") from None
    say("install", f"release {name} installed")
    return name


def _build(prefix: Path, name: str, tar: tarfile.TarFile, members: list[tarfile.TarInfo],
           meta: dict[str, Any], python: str) -> None:
    """Extract, verify and set up the venv in a scratch folder, then rename it into place."""
    size = sum(m.size for m in members)
    need = size + int(meta.get("venv_bytes_estimate", 0))
    have = free_bytes(prefix)
    if have < need:
        raise BoardError(f"{prefix}: {have / 1e6:.0f} MB free, expected at least "
                         f"{need / 1e6:.0f} MB for release {name} (full disk)")
    final = prefix / "releases" / name
    work = prefix / "releases" / f".partial-{name}"
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(final, ignore_errors=True)  # a half-built folder from an interrupted run
    try:
        work.mkdir(parents=True)
        for m in members:
            target = work / m.name
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(m)
            assert src is not None
            with target.open("wb") as out:
                shutil.copyfileobj(src, out)
            target.chmod(m.mode & 0o777)
        say("extract", f"{len(members)} entries, {size / 1e6:.1f} MB")
        say("verify", f"{verify_manifest(work, meta)} files match MANIFEST")
        _make_venv(work, meta, python)
        (work / ".installed").write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))
        os.replace(work, final)
    except OSError as exc:
        shutil.rmtree(work, ignore_errors=True)
        if exc.errno == 28:  # ENOSPC
            raise BoardError(f"{prefix}: no space left while installing {name} (full disk)") \
                from None
        raise BoardError(f"{prefix}: install of {name} failed ({exc})") from None
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def main(argv: list[str] | None = None) -> int:
    """Command line: probe | install | activate | rollback | status | start | stop."""
    parser = argparse.ArgumentParser(prog="install.py", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["probe", "install", "activate", "rollback", "status",
                                           "start", "stop"])
    parser.add_argument("--prefix", required=True, type=Path)
    parser.add_argument("--bundle", type=Path, help="install: the bundle file on this board")
    parser.add_argument("--name", default=None, help="release name")
    parser.add_argument("--sha256", default=None, help="install: expected sha256 of the bundle")
    parser.add_argument("--python", default=sys.executable, help="interpreter for venvs")
    parser.add_argument("--no-start", action="store_true")
    parser.add_argument("--health-s", type=float, default=HEALTH_S)
    parser.add_argument("--fresh", action="store_true",
                        help="start: remove the agent's state (metrics, checkpoint) first")
    parser.add_argument("--run-id", default=None,
                        help="start: the trial's run id (32 hex digits), passed to the agent")
    args = parser.parse_args(argv)
    prefix = args.prefix.absolute()
    try:
        if args.action == "probe":
            print(json.dumps(probe(prefix, args.name)))
        elif args.action == "status":
            print(json.dumps(status(prefix)))
        elif args.action == "start":
            with locked(prefix):
                if args.run_id is not None and not re.fullmatch(r"[0-9a-f]{32}", args.run_id):
                    parser.error(f"--run-id: expected 32 hex digits, got {args.run_id!r}")
                start_current(prefix, args.python, args.fresh, args.run_id)
        elif args.action == "stop":
            with locked(prefix):
                stop(prefix, link_target(prefix / "current"), init_system(), args.python)
        else:
            with locked(prefix):
                if args.action == "install":
                    if args.bundle is None:
                        parser.error("install needs --bundle")
                    name = install(prefix, args.bundle, args.name, args.sha256, args.python)
                    if args.name is None:  # by hand: install means install and run
                        activate(prefix, name, not args.no_start, args.health_s, args.python)
                elif args.action == "activate":
                    activate(prefix, args.name, not args.no_start, args.health_s, args.python)
                else:
                    rollback(prefix, not args.no_start, args.health_s, args.python)
    except BoardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
