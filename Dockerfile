# labtel: one image; the command chooses what runs (`serve`, `collector`, `api`, `migrate`).
#   docker build -t labtel .
#   docker run -p 4317:4317 -p 4318:4318 -p 8000:8000 labtel serve                # embedded store
#   docker run -e LABTEL_CLICKHOUSE_ENDPOINT=http://clickhouse:8123 labtel collector
# deploy/docker-compose.yml runs it with a ClickHouse server; deploy/docker-compose.cluster.yml
# with a 2 shards x 2 replicas ClickHouse cluster.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/labtel
COPY pyproject.toml README.md ./
COPY sdk sdk
COPY collector collector
COPY query_api query_api
COPY cli cli
COPY demo demo
RUN pip install ".[server]"

COPY otel-config.yaml /etc/labtel/otel-config.yaml
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/labtel labtel \
    && mkdir -p /var/lib/labtel/wal /var/lib/labtel/data \
    && chown -R labtel:labtel /var/lib/labtel
USER labtel
WORKDIR /var/lib/labtel

# Listen on every interface inside the container; data and the write-ahead log under /var/lib/labtel.
ENV LABTEL_CONFIG=/etc/labtel/otel-config.yaml \
    LABTEL_GRPC_ENDPOINT=0.0.0.0:4317 \
    LABTEL_HTTP_ENDPOINT=0.0.0.0:4318 \
    LABTEL_API_ENDPOINT=0.0.0.0:8000 \
    LABTEL_CLICKHOUSE_ENDPOINT=chdb:///var/lib/labtel/data \
    LABTEL_WAL_DIR=/var/lib/labtel/wal
VOLUME ["/var/lib/labtel"]
EXPOSE 4317 4318 8000
ENTRYPOINT ["labtel"]
CMD ["serve"]
