# One image for every Headwater process: `headwater serve` (the default) and `headwater worker`
# (compose.yaml runs both). Built from the package alone: no tests, no benchmarks, no dev tools.
FROM python:3.11-slim

# The server listens on every interface inside the container; its data (the SQLite store, when no
# HEADWATER_STORE is given) lives in the volume.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HEADWATER_HOST=0.0.0.0 HEADWATER_PORT=8000 HEADWATER_DATA_DIR=/data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY headwater ./headwater
RUN pip install . \
    && useradd --system --uid 10001 --no-create-home --home-dir /data headwater \
    && mkdir /data && chown headwater:headwater /data

USER headwater
VOLUME ["/data"]
EXPOSE 8000
# python, not curl: the slim base has no curl, and this keeps the image without extra packages.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['HEADWATER_PORT'] + '/healthz', timeout=2)"]
CMD ["headwater", "serve"]
