# syntax=docker/dockerfile:1
# yoloserve image. CPU by default; for CUDA: docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu130 .
# (torch's CUDA wheels bring the CUDA and cuDNN libraries; the host's driver comes in through the
# NVIDIA container toolkit, so both builds use the same Python base image)
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

# ---- build stage: a virtual environment with the server stack -------------------------------
FROM python:3.11-slim-bookworm AS build
ARG TORCH_INDEX
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch from its own index first (CPU or CUDA build), in a layer that source changes do not rebuild
RUN pip install --extra-index-url "$TORCH_INDEX" "torch>=2.3,<3" "torchvision>=0.18"
# then the project itself, a normal (non-editable) install: its packages, the demo model
# (models/ ships as the package yoloserve.models) and gunicorn's settings (service.gunicorn_conf)
WORKDIR /src
COPY . .
RUN pip install ".[server]"

# ---- runtime stage -----------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home /app --shell /usr/sbin/nologin yoloserve
# the whole install, the demo model included, belongs to root: read-only for the service user
COPY --from=build --chown=root:root /opt/venv /opt/venv
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    YOLO_OFFLINE=1 \
    YOLO_CONFIG_DIR=/tmp/ultralytics \
    YOLOSERVE_HOST=0.0.0.0 \
    YOLOSERVE_PORT=8000 \
    YOLOSERVE_GRPC_PORT=8001
USER yoloserve
# 8000 HTTP (/v1, /v2); 8001 the Open Inference Protocol over gRPC, as Triton
EXPOSE 8000 8001
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8000/health/live || exit 1
# no --model: the demo model shipped in the package; mount weights and pass --model (or set
# YOLOSERVE_MODEL) to serve others. --workers N finds gunicorn's settings in the package too.
ENTRYPOINT ["yoloserve"]
CMD ["serve"]
