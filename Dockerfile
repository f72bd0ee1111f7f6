# dcnios: one image, three entry points (dcnios, dcnios-producer, dcnios-consumer).
#   docker build -t REGISTRY/dcnios:0.1.0 .          (see README, "Deploying on Kubernetes")
# Stage 1 builds wheels for dcnios and its dependencies; stage 2 installs them from that directory
# only (no index), on a slim base, and runs as an unprivileged user with no shell login.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
WORKDIR /src
RUN python -m pip install --no-cache-dir --upgrade pip setuptools wheel
COPY pyproject.toml README.md ./
COPY dcnios dcnios
COPY producers producers
COPY consumers consumers
COPY schemas schemas
COPY nifi_recipes nifi_recipes
COPY deploy deploy
# Production needs no extra: `local` (embedded broker, sandbox) and `dev` are for laptops and CI,
# `nifi` for `dcnios deploy-nifi` from an admin machine. EXTRAS=nifi adds it if wanted.
ARG EXTRAS=""
RUN python -m pip wheel --no-cache-dir --wheel-dir /wheels ".${EXTRAS:+[$EXTRAS]}"

FROM python:${PYTHON_VERSION}-slim-bookworm
ARG EXTRAS=""
RUN groupadd --system --gid 10001 dcnios \
    && useradd --system --uid 10001 --gid dcnios --no-create-home --shell /usr/sbin/nologin dcnios
COPY --from=build /wheels /wheels
RUN python -m pip install --no-cache-dir --no-index --find-links /wheels "dcnios${EXTRAS:+[$EXTRAS]}" \
    && rm -rf /wheels
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# /metrics and /healthz (--metrics-port); the Deployments `dcnios k8s` renders use 9400.
EXPOSE 9400
USER 10001:10001
CMD ["dcnios", "--help"]
