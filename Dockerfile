# The Undertow services (setup job, demo, gateway; later the workers) in one image.
# Production talks to the Kafka and ClickHouse services of docker-compose.yml, so the embedded
# engine (extra "local") is not installed here.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

RUN useradd --create-home --uid 10001 undertow
WORKDIR /app
COPY pyproject.toml README.md ./
COPY undertow ./undertow
COPY schemas ./schemas
COPY streams ./streams
COPY services ./services
COPY infra ./infra
RUN pip install --no-compile ".[gateway]"

USER undertow
ENTRYPOINT ["undertow"]
CMD ["--help"]
