# Home Assistant add-on image for Amanuensis. The Supervisor passes BUILD_FROM
# per architecture from addon/build.yaml; the default makes a plain
# `docker build .` work on amd64.
ARG BUILD_FROM=ghcr.io/home-assistant/amd64-base-debian:trixie
FROM ${BUILD_FROM}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Debian versions are not pinned: the base image's tag fixes the release, and
# exact package versions leave the mirror at each point release, which would
# break builds from a clean clone.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

# S6_CMD_WAIT_FOR_SERVICES_MAXTIME=0: the discovery step waits for the model to
# load, which can take longer than s6's default limit on a small board.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH="/opt/amanuensis/bin:${PATH}" \
    S6_CMD_WAIT_FOR_SERVICES_MAXTIME=0

# The CPU-only torch build (silero-vad's wheel requires torch; the server never
# imports it); the image has no CUDA runtime.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
WORKDIR /usr/src/amanuensis
COPY pyproject.toml README.md ./
COPY wyoming_amanuensis ./wyoming_amanuensis
COPY addon/install.sh ./addon/install.sh
RUN addon/install.sh /opt/amanuensis . \
    && rm -rf /usr/src/amanuensis

WORKDIR /
COPY addon/rootfs /

# The health command sends describe and expects info, as Home Assistant does.
HEALTHCHECK --start-period=5m --interval=30s --timeout=10s \
    CMD ["/opt/amanuensis/bin/python3", "-m", "wyoming_amanuensis", "health", "--uri", "tcp://127.0.0.1:10300"]
