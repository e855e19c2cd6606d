# syntax=docker/dockerfile:1
# One image for every Modelplane process: the control plane (`modelplane server`), the
# one-shot migration (`modelplane migrate`), the gateways (`python -m gateway --engine
# haproxy`, with Debian's HAProxy), deployer workers (`python -m deployer`) and the serving
# processes a worker starts (`python -m serving`).
#
#   docker build -t modelplane:cpu .                                     # CPU torch (default)
#   docker build -t modelplane:cuda --build-arg TORCH_VARIANT=cu126 .    # CUDA torch
#
# TORCH_VARIANT names a PyTorch wheel index (cpu, cu126, cu128, ...); TORCH_INDEX_URL
# overrides the whole URL (a mirror).
#
# Bookworm, not the floating default release: the gateway's HAProxy engine is tested against
# Debian 12's HAProxy (2.6, the oldest it supports; `make test` installs the same package).
FROM python:3.11-slim-bookworm

ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MODELPLANE_HOME=/var/lib/modelplane

RUN groupadd --system --gid 10001 modelplane \
 && useradd --system --uid 10001 --gid modelplane --home-dir /var/lib/modelplane \
    --create-home --shell /usr/sbin/nologin modelplane \
 && install -d -o modelplane -g modelplane /var/lib/modelplane/cache

# HAProxy, the gateway's data plane: only the binary is used (`python -m gateway` starts
# and reloads it as its own child, as the non-root user); the package's service never runs.
RUN apt-get update \
 && apt-get install -y --no-install-recommends haproxy \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# Dependencies before code: this layer is rebuilt only when pyproject.toml changes. The image
# runs the server side with the PyTorch runtime: the base dependencies plus the `server` and
# `torch` extras. torch comes from the variant's index first; the pin in pyproject
# (torch==X) is then satisfied by X+cpu or X+cuNNN, and every other dependency comes from PyPI.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; extras = p['optional-dependencies']; deps = p['dependencies'] + extras['server'] + extras['torch']; open('/tmp/requirements.txt', 'w').write('\n'.join(deps) + '\n')" \
 && pip install --index-url "${TORCH_INDEX_URL}" "$(grep '^torch' /tmp/requirements.txt)" \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# The code. Editable, so `registry.migrate` finds alembic.ini and migrations/ beside it.
COPY README.md alembic.ini ./
COPY migrations ./migrations
COPY contract ./contract
COPY storage ./storage
COPY registry ./registry
COPY gateway ./gateway
COPY serving ./serving
COPY deployer ./deployer
COPY client ./client
COPY cli ./cli
COPY devstack ./devstack
RUN pip install --no-deps -e . && python -m compileall -q /app

USER modelplane
EXPOSE 8000 8080
CMD ["modelplane", "server"]
