# The project's Python image for Docker Compose users: stack provisioning, generator, pipeline.
# Prism (Beam's local runner) is built from the Go module proxy, as `make bootstrap` does.
FROM golang:1.26 AS prism
RUN GOBIN=/out go install github.com/apache/beam/sdks/v2/go/cmd/prism@v2.77.0

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
