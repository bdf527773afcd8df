# The project's image for docker-compose: CPU torch first (no multi-GB CUDA build),
# then the project.
FROM python:3.11-slim
WORKDIR /app
RUN pip install --no-cache-dir "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY leyline_pb leyline_pb
COPY oona oona
COPY tamiyo_bus tamiyo_bus
COPY consumers consumers
COPY producers producers
RUN pip install --no-cache-dir .
ENV TAMIYO_REDIS_URL=redis://redis:6379/0
ENTRYPOINT ["tamiyo-bus"]
