"""A private Docker engine for the tests, and the images they run on it.

No registry is reachable from these machines, so every image is made here: a Debian base
with Python (mmdebstrap, cached between runs by content), the project's Dockerfile built on
it, and small stand-in images (tests/deploy/images/<name>/Dockerfile) built on that base.

The daemon is the tests' own: Debian's dockerd with its data-root, exec-root, pidfile and
socket under a temporary folder, `--bridge=none --iptables=false` (a default daemon rewrites
the host's iptables and ip_forward), so containers use host networking and listen on
127.0.0.1 ports the tests choose (conftest.free_port). At the end its containers are
removed, the daemon gets SIGTERM by PID and the folder is deleted.

API, for test modules (import the fixtures by name, as with st_harness):

    from docker_engine import base_image, docker_engine, project_image  # noqa: F401

- fixture `docker_engine` (session) -> DockerEngine. One daemon per test session, however
  many modules import the fixture.
    .env              environment for subprocesses that talk to the daemon (DOCKER_HOST set),
                      e.g. docker-compose
    .cli              path of the docker client (the one shipped with dockerd)
    .docker(*args, timeout=120, input=None) -> stdout; raises AssertionError with the
                      output when the command fails
    .run(*args, timeout=120) -> CompletedProcess (unchecked)
    .build(context, tag, build_args={}, buildkit=True, dockerfile=None) -> tag
    .start_build(...) -> Build, the same in the background: .result(timeout) -> tag, .cancel()
    .base_image() / .project_image() / .folder_image(folder) -> tag (each built once)
    .project_args     the build arguments the project image was built with
- fixture `base_image` (session) -> tag of Debian bookworm with python3 (3.11), venv, pip
  and the host's extra CA certificates (the outbound proxy presents its own CA, so pip in a
  build needs them; any corporate network would do the same).
- fixture `project_image` (session) -> tag of the repository's Dockerfile built with
  BuildKit on the base (`--build-arg PYTHON_IMAGE=<base>`), with VERSION/REVISION/CREATED.
- fixture `postgres_image` (session) -> tag of images/postgresql: Debian's PostgreSQL
  taking the official image's settings (POSTGRES_USER/PASSWORD/DB, PGPORT).
- `DockerEngine.folder_image(folder)` builds any tests/deploy/images/<name> folder on the
  base (build arg BASE_IMAGE), cached between runs as a saved image keyed by its content.
- `running_postgres(engine, image)` context manager -> Postgres (url, port, container):
  a PostgreSQL container on a free loopback port, removed afterwards.

Builds use `--network host` (there is no bridge). BuildKit is the one built into the
daemon, driven by Debian's 20.10 client (no buildx plugin needed); it builds offline because
the Dockerfile has no `# syntax=` line (that would pull a frontend image). The cache folder is
$SERIESFLOW_TEST_CACHE, else $XDG_CACHE_HOME/seriesflow-test, else ~/.cache/seriesflow-test;
nothing in it is committed. Under CI=true a missing dockerd or mmdebstrap fails the test
(conftest.require_tool); elsewhere it skips.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import psycopg
import pytest
from conftest import IN_CI, free_port, require_tool

ROOT = Path(__file__).resolve().parents[2]
IMAGES = Path(__file__).resolve().parent / "images"
CA_FOLDER = Path("/usr/local/share/ca-certificates")
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "python-is-python3", "ca-certificates")
BASE_TAG = "seriesflow-test/base:bookworm"
PROJECT_TAG = "seriesflow-test/seriesflow:test"
FOLDER_PREFIX = "sfdk-"  # /tmp/sfdk-XXXXXXXX: the engines' folders


def cache_dir() -> Path:
    configured = os.environ.get("SERIESFLOW_TEST_CACHE")
    if configured:
        path = Path(configured)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        path = (Path(xdg) if xdg else Path.home() / ".cache") / "seriesflow-test"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()[:24]


def _folder_digest(folder: Path) -> list[bytes | str]:
    parts: list[bytes | str] = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        parts += [
            str(path.relative_to(folder)),
            oct(path.stat().st_mode & 0o777),
            path.read_bytes(),
        ]
    return parts


def _require_root() -> None:
    if os.geteuid() != 0:
        message = "a private dockerd needs root (rootless Docker is not set up here)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


class DockerEngine:
    """A dockerd of the tests' own; see the module docstring."""

    def __init__(self, dockerd: str) -> None:
        remove_stale_folders()
        # Short: unix socket paths are limited to ~100 characters, and containerd's own
        # sockets live under the exec-root.
        self.folder = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX, dir="/tmp"))
        self.socket = self.folder / "s"
        self.pidfile = self.folder / "pid"
        self.log = self.folder / "dockerd.log"
        # The client shipped beside dockerd (Debian's 20.10), not whatever `docker` is
        # first on PATH: a newer client's BuildKit path needs the buildx plugin.
        # (/usr/sbin/dockerd ships /usr/bin/docker.)
        packaged = [Path(dockerd).with_name("docker"), Path(dockerd).parents[1] / "bin" / "docker"]
        self.cli = next((str(p) for p in packaged if p.exists()), None) or require_tool("docker")
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}"}
        self.env.pop("DOCKER_CONTEXT", None)
        self.env.pop("DOCKER_CONFIG", None)
        # A client config of its own: no credential helpers or contexts of the host's.
        (self.folder / "config").mkdir()
        self.env["DOCKER_CONFIG"] = str(self.folder / "config")
        # If this process dies without its teardown (SIGKILL, a CI job cancelled), the
        # daemon gets SIGTERM, stops its containers and exits: setpriv (util-linux) sets
        # the parent-death signal, then execs dockerd, so the PID stays dockerd's.
        setpriv = shutil.which("setpriv")
        prefix = [setpriv, "--pdeathsig", "TERM"] if setpriv else []
        with open(self.log, "wb") as sink:
            self.process = subprocess.Popen(
                [
                    *prefix,
                    dockerd,
                    "--data-root",
                    str(self.folder / "data"),
                    "--exec-root",
                    str(self.folder / "x"),
                    "--pidfile",
                    str(self.pidfile),
                    "-H",
                    f"unix://{self.socket}",
                    # No bridge, no iptables rules, no NAT, and net.ipv4.ip_forward left as
                    # it is (the bridge driver sets it to 1 at start unless told not to).
                    "--bridge=none",
                    "--iptables=false",
                    "--ip6tables=false",
                    "--ip-masq=false",
                    "--ip-forward=false",
                ],
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._built: dict[str, str] = {}
        # The build arguments project_image() used (VERSION, REVISION, CREATED, ...).
        self.project_args: dict[str, str] = {}
        try:
            self._wait_ready()
        except BaseException:
            self.close()
            raise

    def _wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"dockerd exited:\n{self.log.read_text()[-4000:]}")
            if self.socket.exists() and self.run("version", timeout=10).returncode == 0:
                return
            time.sleep(0.2)
        raise AssertionError(f"dockerd did not answer:\n{self.log.read_text()[-4000:]}")

    def run(
        self,
        *args: str,
        timeout: float = 120,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.cli, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            env={**self.env, **(env or {})},
        )

    def docker(self, *args: str, timeout: float = 120, input: str | None = None) -> str:
        result = self.run(*args, timeout=timeout, input=input)
        assert result.returncode == 0, (
            f"docker {' '.join(args)} exited {result.returncode}:\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
        return result.stdout

    def start_build(
        self,
        context: Path,
        tag: str,
        build_args: Mapping[str, str] | None = None,
        *,
        buildkit: bool = True,
        dockerfile: Path | None = None,
    ) -> Build:
        """`docker build` of a folder in the background (BuildKit or the classic builder,
        host network); Build.result() waits for it."""
        command = [self.cli, "build", "--network", "host", "--tag", tag]
        if buildkit:
            command += ["--progress", "plain"]
        for key, value in (build_args or {}).items():
            command += ["--build-arg", f"{key}={value}"]
        if dockerfile is not None:
            command += ["--file", str(dockerfile)]
        log = tempfile.TemporaryFile()  # noqa: SIM115 (Build.result or .cancel closes it)
        process = subprocess.Popen(
            [*command, str(context)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**self.env, "DOCKER_BUILDKIT": "1" if buildkit else "0"},
        )
        what = f"building {tag} from {context} ({'BuildKit' if buildkit else 'classic'})"
        return Build(tag, what, process, log)

    def build(
        self,
        context: Path,
        tag: str,
        build_args: Mapping[str, str] | None = None,
        *,
        buildkit: bool = True,
        dockerfile: Path | None = None,
        timeout: float = 600,
    ) -> str:
        """`docker build` of a folder, BuildKit or the classic builder, host network."""
        started = self.start_build(
            context, tag, build_args, buildkit=buildkit, dockerfile=dockerfile
        )
        return started.result(timeout)

    def base_image(self) -> str:
        """Debian bookworm + Python + the host's extra CAs, imported from a cached tarball."""
        if "base" not in self._built:
            tarball, key = base_tarball()
            self.docker("import", "--change", "ENV LANG=C.UTF-8", str(tarball), BASE_TAG)
            self.docker("tag", BASE_TAG, f"{BASE_TAG}-{key}")
            self._built["base"] = BASE_TAG
            self._built["base-key"] = key
        return self._built["base"]

    def project_image(self) -> str:
        """The repository's Dockerfile built with BuildKit on the base."""
        if "project" not in self._built:
            self.project_args = project_build_args(self.base_image())
            self._built["project"] = self.build(ROOT, PROJECT_TAG, self.project_args, buildkit=True)
        return self._built["project"]

    def folder_image(self, folder: Path, build_args: Mapping[str, str] | None = None) -> str:
        """An image from a folder holding a Dockerfile `FROM ${BASE_IMAGE}`, built on the
        base; kept between runs as a `docker save` archive keyed by the folder's content,
        the base's key and the build arguments."""
        base = self.base_image()
        arguments = {"BASE_IMAGE": base, **(build_args or {})}
        key = _digest(
            self._built["base-key"], json.dumps(arguments, sort_keys=True), *_folder_digest(folder)
        )
        tag = f"seriesflow-test/{folder.name}:{key}"
        if tag in self._built:
            return tag
        archive = cache_dir() / "images" / f"{folder.name}-{key}.tar"
        if archive.exists():
            self.docker("load", "--input", str(archive), timeout=300)
        else:
            self.build(folder, tag, arguments)
            archive.parent.mkdir(parents=True, exist_ok=True)
            partial = archive.with_suffix(f".{os.getpid()}.partial.tar")
            self.docker("save", "--output", str(partial), tag, timeout=300)
            for old in archive.parent.glob(f"{folder.name}-*.tar"):
                if ".partial" not in old.name:
                    old.unlink(missing_ok=True)  # one archive per image folder: the current
            partial.replace(archive)
        self._built[tag] = tag
        return tag

    def remove_containers(self) -> None:
        ids = self.run("ps", "--all", "--quiet", timeout=60).stdout.split()
        if ids:
            self.run("rm", "--force", "--volumes", *ids, timeout=120)

    def close(self) -> None:
        """Containers removed, then dockerd stopped by its PID and its folder deleted."""
        try:
            if self.process.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                    self.remove_containers()
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=30)
        finally:
            # dockerd unmounts its overlays on exit but leaves the host network namespace
            # bound at <exec-root>/netns/default: unmount what is left under the folder.
            for mount_point in _mounts_under(self.folder):
                subprocess.run(["umount", mount_point], capture_output=True, timeout=30)
            shutil.rmtree(self.folder, ignore_errors=True)


def remove_stale_folders(max_age: float = 600) -> None:
    """Folders of earlier engines whose dockerd is gone (a killed test run): their leftover
    mounts and files. A folder whose daemon still runs is another session's: left alone."""
    for folder in Path("/tmp").glob(f"{FOLDER_PREFIX}*"):
        pidfile = folder / "pid"
        try:
            if pidfile.exists():
                os.kill(int(pidfile.read_text().strip() or 0), 0)
                continue  # alive
            if time.time() - folder.stat().st_mtime < max_age:
                continue  # perhaps a daemon starting now, before its pidfile
        except ProcessLookupError:
            pass
        except (OSError, ValueError):
            continue
        for mount_point in _mounts_under(folder):
            subprocess.run(["umount", mount_point], capture_output=True, timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


def _mounts_under(folder: Path) -> list[str]:
    """Mount points at or below a folder, deepest first."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        if point == str(folder) or point.startswith(f"{folder}/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


@dataclass
class Build:
    """A `docker build` running in the background."""

    tag: str
    what: str
    process: subprocess.Popen[bytes]
    log: IO[bytes]

    def result(self, timeout: float = 600) -> str:
        """The tag once built; AssertionError with the build's output if it failed."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.cancel()
            raise AssertionError(f"{self.what}: still running after {timeout} s") from None
        self.log.seek(0)
        output = self.log.read().decode(errors="replace")
        self.log.close()
        assert code == 0, f"{self.what} failed ({code}):\n{output[-8000:]}"
        return self.tag

    def cancel(self) -> None:
        """Stop the client (the daemon then cancels the build)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def project_build_args(python_image: str) -> dict[str, str]:
    revision = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "PYTHON_IMAGE": python_image,
        "VERSION": project_version(),
        "REVISION": revision or "unknown",
        "CREATED": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def project_version() -> str:
    import tomllib

    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def base_command(output: Path) -> list[str]:
    """The mmdebstrap command making the base: its arguments are the cache key."""
    certificates = sorted(CA_FOLDER.glob("*.crt")) if CA_FOLDER.is_dir() else []
    command = [
        require_tool("mmdebstrap"),
        "--quiet",
        "--variant=minbase",
        f"--include={','.join(BASE_PACKAGES)}",
    ]
    if certificates:
        command += [
            "--customize-hook=copy-in "
            + " ".join(str(c) for c in certificates)
            + " /usr/local/share/ca-certificates",
            '--customize-hook=chroot "$1" update-ca-certificates',
        ]
    return [*command, "bookworm", str(output)]


@functools.cache
def base_tarball() -> tuple[Path, str]:
    """The base root filesystem tarball and its key: made once, then reused while the
    mmdebstrap arguments and the CA certificates' contents stay the same."""
    certificates = sorted(CA_FOLDER.glob("*.crt")) if CA_FOLDER.is_dir() else []
    placeholder = Path("OUTPUT")
    key = _digest(
        json.dumps(base_command(placeholder)[1:]),
        *(c.read_bytes() for c in certificates),
    )
    folder = cache_dir()
    tarball = folder / f"base-bookworm-{key}.tar"
    if not tarball.exists():
        # mmdebstrap picks its output format from the name: keep the .tar suffix.
        partial = folder / f"base-bookworm-{key}.{os.getpid()}.partial.tar"
        result = subprocess.run(base_command(partial), capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"mmdebstrap failed:\n{result.stderr[-6000:]}"
        for old in folder.glob("base-bookworm-*.tar"):
            if old.is_file() and ".partial" not in old.name:
                old.unlink()  # one base at a time: the cache holds only the current key
        partial.replace(tarball)
    return tarball, key


_ENGINE: list[DockerEngine] = []


def shared_engine() -> DockerEngine:
    """The session's one engine (fixtures imported into several modules are separate
    fixture definitions; they all share this)."""
    if not _ENGINE:
        dockerd = require_tool("dockerd")
        require_tool("mmdebstrap")
        _require_root()
        _ENGINE.append(DockerEngine(dockerd))
    return _ENGINE[0]


def close_shared_engine() -> None:
    while _ENGINE:
        _ENGINE.pop().close()


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    engine = shared_engine()
    try:
        yield engine
    finally:
        # Session-scoped: runs at the session's end, after every module's tests.
        close_shared_engine()


@pytest.fixture(scope="session")
def base_image(docker_engine: DockerEngine) -> str:
    return docker_engine.base_image()


@pytest.fixture(scope="session")
def project_image(docker_engine: DockerEngine) -> str:
    return docker_engine.project_image()


@pytest.fixture(scope="session")
def postgres_image(docker_engine: DockerEngine) -> str:
    return docker_engine.folder_image(IMAGES / "postgresql")


@dataclass(frozen=True)
class Postgres:
    container: str
    port: int
    user: str
    password: str
    database: str

    @property
    def url(self) -> str:
        """As a process on the host (or a container with host networking) reaches it."""
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"


@contextlib.contextmanager
def running_postgres(
    engine: DockerEngine, image: str, database: str = "seriesflow", timeout: float = 60
) -> Iterator[Postgres]:
    """A PostgreSQL container on a free 127.0.0.1 port (host network), ready for
    connections; removed with its data volume afterwards."""
    name = f"postgres-{uuid.uuid4().hex[:8]}"
    db = Postgres(name, free_port(), "seriesflow", uuid.uuid4().hex, database)
    engine.docker(
        "run",
        "--detach",
        "--name",
        name,
        "--network",
        "host",
        "--env",
        f"PGPORT={db.port}",
        "--env",
        "POSTGRES_LISTEN_ADDRESSES=127.0.0.1",
        "--env",
        f"POSTGRES_USER={db.user}",
        "--env",
        f"POSTGRES_PASSWORD={db.password}",
        "--env",
        f"POSTGRES_DB={db.database}",
        "--mount",
        f"type=volume,source={name}-data,target=/var/lib/postgresql/data",
        image,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(db.url, connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                break
            except psycopg.OperationalError:
                state = engine.docker("inspect", "--format", "{{.State.Status}}", name).strip()
                if state != "running" or time.monotonic() > deadline:
                    logs = engine.run("logs", name).stderr[-4000:]
                    raise AssertionError(f"PostgreSQL container {state}:\n{logs}") from None
                time.sleep(0.3)
        yield db
    finally:
        engine.run("rm", "--force", "--volumes", name, timeout=60)
        engine.run("volume", "rm", f"{name}-data", timeout=60)
