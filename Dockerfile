# The project's Python image for Docker Compose users: stack provisioning, generator, pipeline.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY generator ./generator
COPY sinks ./sinks
COPY infra ./infra
COPY loadtest ./loadtest
RUN pip install .
USER nobody
