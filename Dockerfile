FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY flowscribe_ingest ./flowscribe_ingest
COPY gateway ./gateway
COPY worker ./worker
COPY schemas ./schemas
RUN pip install --no-cache-dir . && useradd --system --uid 10001 flowscribe
USER flowscribe
ENV FLOWSCRIBE_LOG_FORMAT=json
ENTRYPOINT ["flowscribe-ingest"]
CMD ["gateway"]
