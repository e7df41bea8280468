# syntax=docker/dockerfile:1
# lifelong in a container: the daemon as a non-root user, the embedded model inside the image.
#   CPU:  docker build -t lifelong:cpu .
#   CUDA: docker build -t lifelong:cuda \
#           --build-arg BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#           --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
#   run:  docker run -v lifelong-home:/var/lib/lifelong -p 127.0.0.1:9717:9717 \
#           -e LIFELONG_METRICS__BIND=0.0.0.0:9717 lifelong:cpu
# The home is a volume; a named volume starts from the image's default lifelong.toml (for a bind
# mount, run `init --home /var/lib/lifelong` once). Kubernetes: deploy/k8s.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    LIFELONG_HOME=/var/lib/lifelong

# The CUDA runtime images carry no Python; the python:* images do.
RUN if ! python3 -c "import venv, ensurepip" 2>/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && groupadd --system --gid 10001 lifelong \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/lifelong --no-create-home \
        --shell /usr/sbin/nologin lifelong

RUN python3 -m venv /opt/lifelong/venv
ENV PATH=/opt/lifelong/venv/bin:$PATH
# torch first, from the index that matches the base (CPU or CUDA build); the project's own
# requirement is a range that this build satisfies, so `pip install .` keeps it.
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"

WORKDIR /opt/lifelong/src
COPY pyproject.toml README.md ./
COPY daemon ./daemon
COPY strategies ./strategies
COPY registry ./registry
# optional extras, e.g. --build-arg EXTRAS=remote for the registry on PostgreSQL + S3
ARG EXTRAS=""
RUN pip install ".${EXTRAS:+[$EXTRAS]}" \
    && lifelong --help >/dev/null \
    && python -c "from strategies.models import resolve; resolve('embedded:minilm')" \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/lifelong /srv/lifelong/inbox \
    && su -s /bin/sh lifelong -c "/opt/lifelong/venv/bin/lifelong init --home /var/lib/lifelong"

USER 10001:10001
WORKDIR /var/lib/lifelong
VOLUME ["/var/lib/lifelong"]
EXPOSE 9717
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9717/healthz', timeout=3)"]
ENTRYPOINT ["lifelong"]
CMD ["run", "--home", "/var/lib/lifelong"]
