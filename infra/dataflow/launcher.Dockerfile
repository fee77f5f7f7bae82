# The Flex Template launcher: builds the job graph and submits it (pipeline.dataflow_launch), then exits.
# Build from the repository root:
#   docker build -f infra/dataflow/launcher.Dockerfile -t REGION-docker.pkg.dev/PROJECT/REPO/engagement-launcher:TAG .
# The workers run the SDK image of infra/dataflow/Dockerfile (template parameter sdk_container_image);
# this image only launches, so it needs the project but not Beam's worker boot program.
FROM gcr.io/dataflow-templates-base/python311-template-launcher-base
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /template
COPY pyproject.toml setup.py README.md ./
COPY pipeline ./pipeline
COPY generator ./generator
COPY sinks ./sinks
COPY infra ./infra
COPY loadtest ./loadtest
RUN pip install . && pip check
# The launcher runs this file with the template's parameters; the project is installed above, so no
# FLEX_TEMPLATE_PYTHON_REQUIREMENTS_FILE or FLEX_TEMPLATE_PYTHON_SETUP_FILE (the latter would also stage
# the package to workers that already have it in their image).
ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/template/infra/dataflow/launch.py
