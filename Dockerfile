# The project's Python image for Docker Compose users: stack provisioning, generator, pipeline.
# Prism (Beam's local runner) is built from the Go module proxy with our two patches, as
# `make bootstrap` does (infra/prism/build.sh).
FROM golang:1.26 AS prism
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends patch && rm -rf /var/lib/apt/lists/*
COPY infra/prism /prism
RUN mkdir /out && /prism/build.sh 2.77.0 /out/prism

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIPELINE_PRISM_BINARY=/usr/local/bin/prism STACK_DIR=/tmp/engagement-stack
COPY --from=prism /out/prism /usr/local/bin/prism
WORKDIR /app
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY generator ./generator
COPY sinks ./sinks
COPY infra ./infra
COPY loadtest ./loadtest
RUN pip install .
USER nobody
