FROM python:3.11-slim
WORKDIR /app
# The pinned releases first (requirements/run.txt, written by scripts/lock): a layer
# that is rebuilt only when the lock changes, and installs nothing unpinned.
COPY requirements/run.txt ./requirements/run.txt
RUN pip install --no-cache-dir --require-hashes -r requirements/run.txt
COPY pyproject.toml README.md ./
# Every package pyproject.toml lists (tests/test_deploy.py keeps them in step).
COPY flowscribe_ingest ./flowscribe_ingest
COPY gateway ./gateway
COPY worker ./worker
COPY store ./store
COPY schemas ./schemas
COPY ops ./ops
COPY runtime ./runtime
COPY console ./console
RUN pip install --no-cache-dir --no-deps . && useradd --system --uid 10001 flowscribe
USER flowscribe
ENV FLOWSCRIBE_LOG_FORMAT=json
# 8080: the gateway (callbacks, /metrics, /healthz, /readyz); 8081: a worker's /metrics, /healthz, /readyz;
# 8090: the operator's console (never expose it to the internet: see README, "The console").
EXPOSE 8080 8081 8090
ENTRYPOINT ["flowscribe-ingest"]
CMD ["gateway"]
