# One image for both services: `seriesflow store`, `seriesflow receiver`, `seriesflow migrate`.
# Build:  docker build -t seriesflow:0.1.0 \
#           --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) \
#           --build-arg CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ) .
# No `# syntax=` line: BuildKit then uses its built-in Dockerfile frontend instead of pulling
# one from a registry, so BuildKit and the classic builder both build it with no registry
# but the base image's (pip still needs PyPI). tests/deploy/test_container.py builds both.
# pgserver (the embedded PostgreSQL of `seriesflow run` without a URL, the `embedded` extra)
# is not installed: a container is always given SERIESFLOW_DATABASE_URL.
#
# Stage 1 installs the package and its dependencies into a venv. Every dependency ships
# manylinux wheels and the gRPC stubs are committed, so no compiler is needed anywhere;
# the build stage exists so that pip, setuptools and the source tree stay out of the image.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
# A venv without pip: the final image carries only what seriesflow imports.
RUN python -m venv --without-pip /opt/seriesflow
WORKDIR /src
COPY pyproject.toml README.md ./
# seriesflow/store, seriesflow/receiver and seriesflow/migrations are relative symlinks to
# the top-level folders below (COPY keeps them as links); the wheel holds real files.
COPY seriesflow/ seriesflow/
COPY store/ store/
COPY receiver/ receiver/
COPY migrations/ migrations/
# pip of the base image installs into the venv's interpreter (pip >= 22.3: `pip --python
# PATH install`, the option before the subcommand).
# A regular (non-editable) install: the package is copied into site-packages and its
# bytecode compiled now, so the read-only root filesystem never needs a __pycache__.
RUN python -m pip --python /opt/seriesflow/bin/python install --no-cache-dir . \
 && /opt/seriesflow/bin/python -c "import seriesflow.cli, seriesflow.store.server, seriesflow.receiver.app, seriesflow.migrations"

FROM ${PYTHON_IMAGE}
# Numeric user and group so Kubernetes' runAsNonRoot can verify them without /etc/passwd.
# 10001 is the chart's runAsUser/fsGroup: change both together.
RUN groupadd --system --gid 10001 seriesflow \
 && useradd --system --uid 10001 --gid 10001 \
      --home-dir /var/lib/seriesflow --no-create-home --shell /usr/sbin/nologin seriesflow \
 && mkdir -p /var/lib/seriesflow \
 && chown 10001:10001 /var/lib/seriesflow
COPY --from=build /opt/seriesflow /opt/seriesflow
ENV PATH=/opt/seriesflow/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SERIESFLOW_LISTEN_HOST=0.0.0.0 \
    SERIESFLOW_DATA_DIR=/var/lib/seriesflow
WORKDIR /var/lib/seriesflow
USER 10001:10001
# DICOM, store gRPC, store metrics, receiver metrics + health.
EXPOSE 6667 8080 8081 50051 9101 9102
# OCI annotations. The build sets VERSION, REVISION (the commit) and CREATED (RFC 3339);
# the defaults say plainly that it did not. VERSION's default is pyproject.toml's version
# (a test keeps the two equal). Last, so a new REVISION or CREATED rebuilds no other layer.
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=1970-01-01T00:00:00Z
ARG SOURCE=https://github.com/seriesflow/seriesflow
LABEL org.opencontainers.image.title="seriesflow" \
      org.opencontainers.image.description="DICOM C-STORE receiver and series catalog store" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}"
# seriesflow_build_info{revision} of both services reads it (seriesflow/build_info.py).
ENV SERIESFLOW_REVISION=${REVISION}
ENTRYPOINT ["seriesflow"]
CMD ["--help"]
