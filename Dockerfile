# One image for both services: `rmllm-vault serve` or `rmllm-llm serve`.
# Build: docker build -t realmultillm .   Run the stack: docker compose up (see README).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gen ./gen
COPY rmllm_common ./rmllm_common
COPY vault_service ./vault_service
COPY llm_service ./llm_service
COPY clients ./clients
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
# The services refuse a data directory other users can reach.
RUN useradd --system --uid 10001 --home-dir /data --create-home rmllm && chmod 0700 /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER rmllm
ENV RMLLM_DATA_DIR=/data PYTHONUNBUFFERED=1
VOLUME ["/data"]
EXPOSE 50051 50052
# The compose file sets the command and a healthcheck through the gRPC health service:
#   python -m rmllm_common.healthcheck 127.0.0.1:50052
CMD ["rmllm-llm", "serve", "--listen", "0.0.0.0:50051"]
