# syntax=docker/dockerfile:1
# One image for every role; the command picks it:
#   twotier api | twotier worker --queues small | twotier beat | twotier migrate
# Targets:
#   app   (the default) the server roles; talks to TGI or OpenAI-compatible model servers and
#         carries no torch (about 250 MB instead of about 1.5 GB)
#   local the same plus torch (CPU) and the bundled SmolLM2 model, for `twotier model-server`
#         (the CPU profile of docker-compose.yml) and `twotier serve`
#   docker build -t twotier .            docker build --target local -t twotier-local .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/twotier/bin:$PATH
RUN python -m venv /opt/twotier
WORKDIR /src
# Dependencies first, pinned by the server lock (the base install: no torch); this layer is
# rebuilt only when the lock changes.
COPY requirements/server.lock requirements/
RUN pip install -r requirements/server.lock
COPY pyproject.toml README.md ./
COPY services ./services
COPY workers ./workers
COPY migrations ./migrations
RUN pip install --no-deps . && find /opt/twotier -name '__pycache__' -prune -exec rm -rf {} +

FROM build AS build-local
# The CPU build of torch (PyPI's default build is CUDA, several GB), then the bundled model,
# fetched and converted once here so that the container starts without network access.
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu ".[local]" \
    && TWOTIER_CACHE_DIR=/opt/twotier-cache twotier models pull

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/twotier/bin:$PATH \
    TWOTIER_LOG_JSON=true
RUN useradd --system --uid 10001 --gid 0 --create-home --home-dir /home/twotier twotier
WORKDIR /home/twotier
EXPOSE 8000 9100
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "services.cli.healthcheck", "http://127.0.0.1:8000/healthz"]
CMD ["twotier", "api", "--host", "0.0.0.0", "--port", "8000"]

FROM runtime AS local
COPY --from=build-local /opt/twotier /opt/twotier
COPY --from=build-local --chown=10001:0 /opt/twotier-cache /opt/twotier-cache
# The model is in the image: never reach for a hub; scratch files go to /tmp.
ENV TWOTIER_CACHE_DIR=/opt/twotier-cache HF_HUB_OFFLINE=1 HF_HOME=/tmp/huggingface
USER 10001
EXPOSE 8081
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "services.cli.healthcheck", "http://127.0.0.1:8081/health"]
CMD ["twotier", "model-server", "--host", "0.0.0.0", "--port", "8081"]

# Last, so that a plain `docker build` gives the server image.
FROM runtime AS app
COPY --from=build /opt/twotier /opt/twotier
USER 10001
