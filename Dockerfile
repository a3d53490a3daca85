# syntax=docker/dockerfile:1
# yoloserve image. CPU by default; for CUDA: docker build --build-arg BASE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04 \
#   --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu130 .
ARG BASE=python:3.11-slim-bookworm
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

# ---- build stage: a virtual environment with the server stack -------------------------------
FROM python:3.11-slim-bookworm AS build
ARG TORCH_INDEX
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY batching ./batching
COPY clients ./clients
COPY loadbalancer ./loadbalancer
COPY bench ./bench
RUN pip install --extra-index-url "$TORCH_INDEX" "torch>=2.3,<3" "torchvision>=0.18" \
 && pip install ".[server]"

# ---- runtime stage -----------------------------------------------------------------------------
FROM ${BASE} AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home /app --shell /usr/sbin/nologin yoloserve
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY gunicorn.conf.py ./
# the model directory belongs to root and is read-only for the service user
COPY --chown=root:root --chmod=0444 models/demo.pt models/demo.onnx models/README.md /app/models/
RUN chmod 0555 /app/models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    YOLO_OFFLINE=1 \
    YOLO_CONFIG_DIR=/tmp/ultralytics \
    YOLOSERVE_HOST=0.0.0.0 \
    YOLOSERVE_PORT=8000 \
    YOLOSERVE_MODEL=/app/models/demo.pt
USER yoloserve
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8000/health/live || exit 1
ENTRYPOINT ["yoloserve"]
CMD ["serve"]
