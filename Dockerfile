# dhtd: the libp2p Kademlia DHT served over gRPC, as a container image.
#
#   docker build -t dhtd .
#   docker run --rm -p 127.0.0.1:50051:50051 -p 4001:4001 -v dhtd-data:/data dhtd \
#     --bootstrap /dns4/<host>/tcp/4001/p2p/<peer id>
#
# The base is pinned by tag; pass --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:…
# to pin it by digest, or another Debian bookworm image with python3 and its headers
# (scripts/build-image-local builds against such a local base, without a registry).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------
# build: the same install as `./dev setup`, without the dev tools and not editable.
FROM ${PYTHON_IMAGE} AS build

# fastecdsa (needed by libp2p) has no Linux wheel: pip compiles it against GMP.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev libgmp-dev \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# The pinned, hashed runtime dependencies first: this layer is reused until the lock changes.
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock

COPY pyproject.toml README.md ./
COPY clients/python clients/python
COPY service service
RUN pip install --no-cache-dir --no-deps --no-build-isolation ./clients/python . \
    && pip check

# ---------------------------------------------------------------------------
# runtime: the venv, a non-root user, and nothing to compile with.
# (libgmp10, which fastecdsa links to, is part of every Debian base: coreutils needs it.)
FROM ${PYTHON_IMAGE}

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="dhtd" \
      org.opencontainers.image.description="The libp2p / IPFS Kademlia DHT as a gRPC daemon" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT"

RUN groupadd --gid 10001 dhtd \
    && useradd --uid 10001 --gid 10001 --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin dhtd \
    && mkdir -p /data \
    && chown 10001:10001 /data \
    && chmod 0700 /data

COPY --from=build /opt/venv /opt/venv

# Inside a container every listener binds all interfaces; publish 50051 (gRPC, no
# authentication) and 9464 (metrics) only where you mean to.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DHTD_GRPC_ADDR=0.0.0.0:50051 \
    DHTD_LISTEN=/ip4/0.0.0.0/tcp/4001 \
    DHTD_METRICS_ADDR=0.0.0.0:9464 \
    DHTD_DATA_DIR=/data

# identity.key lives here: keep it on a volume so the peer ID survives restarts.
VOLUME /data
WORKDIR /data
USER 10001:10001

# gRPC API, libp2p (TCP), HTTP /metrics /healthz /readyz
EXPOSE 50051 4001 9464

# Liveness only: a node without DHT peers is alive but not ready (/readyz says so).
# No curl in the slim base; python's urllib fails on anything but 2xx.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; port = os.environ.get('DHTD_METRICS_ADDR', '').rpartition(':')[2] or '9464'; u.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]

ENTRYPOINT ["dhtd"]
