"""The Dockerfile: hadolint's verdict, the final stage's shape, and its install steps run.

Static and quick, without a Docker engine: the build stage's commands are replayed outside
a container (the package built from exactly the files the build context would hold,
.dockerignore applied, into a venv without pip, which must run `seriesflow`). The image
itself is built and run by test_container.py on a private engine.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml
from deploy_support import ROOT, venv_tool

DOCKERFILE = ROOT / "Dockerfile"


def stages() -> list[list[str]]:
    """Instructions per stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            result.append([])
        if result:
            result[-1].append(line)
    return result


def test_dockerfile_is_clean_under_hadolint() -> None:
    hadolint = venv_tool("hadolint")
    result = subprocess.run(
        [hadolint, "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_final_stage_runs_seriesflow_as_a_numeric_user_without_build_tools() -> None:
    build, final = stages()
    assert build[0].endswith(" AS build") and "slim" in DOCKERFILE.read_text()
    assert final[0] == "FROM ${PYTHON_IMAGE}", "both stages share the slim Python base"
    users = [i for i in final if i.startswith("USER ")]
    assert users == ["USER 10001:10001"], "numeric, so runAsNonRoot can verify it"
    assert final[-2:] == ['ENTRYPOINT ["seriesflow"]', 'CMD ["--help"]']
    assert any(i.startswith("COPY --from=build /opt/seriesflow") for i in final)
    final_text = "\n".join(final)
    for tool in ("pip install", "apt-get", "gcc", "build-essential", "grpcio-tools", "COPY . "):
        assert tool not in final_text, f"final stage contains {tool!r}"
    assert "--without-pip" in "\n".join(build), "the venv copied into the image has no pip"
    expose = next(i for i in final if i.startswith("EXPOSE "))
    assert set(expose.split()[1:]) == {"6667", "8080", "8081", "50051", "9101", "9102"}
    assert "SERIESFLOW_LISTEN_HOST=0.0.0.0" in final_text


def test_builds_offline_with_buildkit_and_carries_full_oci_labels() -> None:
    text = DOCKERFILE.read_text()
    # A `# syntax=` directive makes BuildKit pull its frontend image from a registry.
    assert not re.search(r"^#\s*syntax\s*=", text, re.MULTILINE | re.IGNORECASE)
    final = "\n".join(stages()[-1])
    args = dict(re.findall(r"^ARG (\w+)=(\S*)$", final, re.MULTILINE))
    labels = dict(re.findall(r"org\.opencontainers\.image\.(\w+)=(\"[^\"]*\")", final))
    for name, arg in (
        ("version", "VERSION"),
        ("revision", "REVISION"),
        ("created", "CREATED"),
        ("source", "SOURCE"),
    ):
        assert labels.get(name) == f'"${{{arg}}}"', f"label {name} comes from ARG {arg}"
        assert arg in args, f"ARG {arg} has a default"
    assert {"title", "description", "licenses"} <= labels.keys()
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert args["VERSION"] == version, "VERSION's default is pyproject.toml's version"
    chart = yaml.safe_load((ROOT / "deploy" / "helm" / "seriesflow" / "Chart.yaml").read_text())
    assert args["SOURCE"] == chart["home"], "one project address for the image and the chart"


def test_the_image_installs_no_embedded_postgresql() -> None:
    """`pip install .` installs the default dependencies: pgserver only in an extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(d.lower().startswith("pgserver") for d in project["dependencies"])
    assert any(d.startswith("pgserver") for d in project["optional-dependencies"]["embedded"])
    install = next(i for i in stages()[0] if "pip" in i and " install " in i)
    assert re.search(r" install (--\S+ )*\.(\s|$)", install), install  # `.`, no [extras]


def docker_context_files() -> list[Path]:
    """Files the build context holds: .dockerignore's allow-list applied to the repository."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            pattern = line.lstrip("!").rstrip("/")
            rules.append(
                (line.startswith("!"), pattern.removeprefix("**/"), pattern.startswith("**/"))
            )
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    kept = []
    for name in tracked:
        included = True
        for negate, pattern, anywhere in rules:
            # Docker anchors patterns at the context root; **/ makes them match at any depth.
            hit = (
                pattern == "**"
                or fnmatch.fnmatch(name, pattern)
                or name.startswith(pattern + "/")
                or (anywhere and any(fnmatch.fnmatch(part, pattern) for part in name.split("/")))
            )
            if hit:
                included = negate
        path = ROOT / name
        if included and (path.is_file() or path.is_symlink()):
            kept.append(Path(name))
    return kept


def test_build_context_holds_what_the_dockerfile_copies_and_nothing_else() -> None:
    context = docker_context_files()
    tops = {p.parts[0] for p in context}
    assert tops == {"pyproject.toml", "README.md", "seriesflow", "store", "receiver", "migrations"}
    copies = [
        i.split()[1:-1]
        for stage in stages()
        for i in stage
        if i.startswith("COPY ") and "--from" not in i
    ]
    for sources in copies:
        for source in sources:
            assert source.rstrip("/") in tops, f"COPY {source} is not in the build context"


@pytest.mark.slow
def test_build_stage_steps_install_a_seriesflow_that_runs(tmp_path: Path) -> None:
    context = tmp_path / "context"
    for name in docker_context_files():
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        # As COPY does: seriesflow/store etc. stay relative symlinks to the folders beside.
        shutil.copy2(ROOT / name, context / name, follow_symlinks=False)
    venv = tmp_path / "opt-seriesflow"
    wheels = tmp_path / "wheels"
    # The Dockerfile's steps: a venv without pip, then the base image's pip installing the
    # context into it with --python. Offline here: the wheel is built with this
    # environment's setuptools (no build isolation, which would fetch it from PyPI) and the
    # dependencies come from this environment instead of PyPI.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(wheels),
            str(context),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = wheels.glob("seriesflow-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        top_level = {name.split("/")[0] for name in archive.namelist()}
        links = [
            i.filename for i in archive.infolist() if (i.external_attr >> 16) & 0o170000 == 0o120000
        ]
    assert top_level == {"seriesflow", "seriesflow-0.1.0.dist-info"}, top_level
    assert not links, f"the wheel must hold real files, not symlinks: {links}"
    assert "seriesflow/store/server.py" in archive.namelist()
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--quiet",
            "--no-deps",
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    assert not (venv / "bin" / "pip").exists()
    # The dependencies live in this environment's site-packages; the package itself must
    # come from the new venv (this environment's editable install is not on PYTHONPATH).
    environment = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "PYTHONPATH": sysconfig.get_paths()["purelib"],
        "HOME": str(tmp_path),
    }
    probe = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import seriesflow, seriesflow.store, seriesflow.receiver, seriesflow.cli; "
            "from seriesflow import migrations; "
            "print(seriesflow.__file__); print(sorted(migrations.head_revisions()))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
        cwd=tmp_path,  # not the repository: `python -c` puts the cwd first on sys.path
    )
    assert probe.returncode == 0, probe.stderr
    location, heads = probe.stdout.splitlines()[:2]
    assert Path(location).is_relative_to(venv), f"seriesflow imported from {location}"
    assert heads != "[]", "migration versions are in the installed package"
    for command in ("store", "receiver", "migrate"):
        result = subprocess.run(
            [str(venv / "bin" / "seriesflow"), command, "--help"],
            capture_output=True,
            text=True,
            timeout=120,
            env=environment,
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr
    assert os.access(venv / "bin" / "seriesflow", os.X_OK)
