"""The service's settings: one pydantic-settings class, ``YOLOSERVE_`` environment prefix.

``yoloserve serve`` flags override the environment. Every limit the service enforces is here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.modelspec import parse_spec
from service.resources import demo_model_path

__all__ = ["DEFAULT_MODEL", "Settings"]

# the demo model: package data of the installed distribution (``models/demo.pt`` in the checkout);
# locating it is a lookup and a stat, nothing is loaded
DEFAULT_MODEL: Path = demo_model_path()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="YOLOSERVE_", extra="ignore")

    # where and what to serve
    host: str = Field("127.0.0.1", description="Address to bind")
    port: int = Field(8000, ge=0, le=65535, description="Port to bind")
    workers: int = Field(1, ge=1, le=64, description="Processes; more than 1 runs gunicorn")
    grpc_port: int | None = Field(None, ge=0, le=65535, description="Port of the Open Inference "
                                  "Protocol over gRPC (KServe v2 / Triton, with health checking "
                                  "and reflection), on --host; None: off. Every worker binds it "
                                  "(SO_REUSEPORT) when there are several")
    model: Path = Field(DEFAULT_MODEL, description="Weights (.pt) or ONNX model; the demo model by default")
    models: list[str] = Field(
        default_factory=list, description="Several models, each [NAME=]PATH (a bare path is named "
        "by its file); the first is the default, and `model` is its path. Empty: `model` alone")
    model_alias: list[str] = Field(
        default_factory=list, description="ALIAS=NAME:WEIGHT,NAME:WEIGHT: a name that splits "
        "requests among models by weight (a canary)")
    backend: Literal["auto", "torch", "onnx", "openvino"] = Field(
        "auto", description="auto: OpenVINO for an IR and for bf16/fp16/int8 on a CPU; ONNX "
        "Runtime for .onnx, and on a CPU when an .onnx lies beside the .pt; else PyTorch")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto, cpu or cuda:N")
    precision: Literal["fp32", "fp16", "bf16", "int8", "auto"] = Field(
        "fp32", description="fp16 on CUDA; bf16 on CPUs with AMX or AVX512-BF16 (and CUDA); int8 "
        "from a quantized OpenVINO model; auto: the fastest this hardware has whose stored "
        "evaluation is within --accuracy-budget, else fp32")
    half: bool | None = Field(None, description="Same as --precision fp16")
    tensorrt: bool = Field(False, description="ONNX Runtime on CUDA through its TensorRT provider "
                           "(FP16 kernels at --precision fp16), CUDA's provider behind it")
    accuracy_budget: float = Field(0.5, ge=0.0, le=100.0, description="Points of mAP50-95 below "
                                   "FP32 that --precision auto accepts")
    letterbox: Literal["square", "rect"] = Field(
        "square", description="square: every image padded to the input size; rect: padded to "
        "the stride multiple only (Ultralytics' rect=True), images of one shape batched together")
    decode_reduce: bool = Field(False, description="Decode a JPEG at 1/2, 1/4 or 1/8 scale when "
                                "its long side is at least twice the input size (faster; changes "
                                "pixels: judge it with `yoloserve evaluate --decode-reduce`)")
    cores: int | None = Field(None, ge=1, description="CPU cores this process may use for "
                              "forward passes; None: all of them (divided among --workers)")
    threads: int | None = Field(None, ge=1, description="ONNX Runtime's threads for one forward "
                                "pass on a CPU; None: cores / concurrent batches")
    spin: bool = Field(True, description="ONNX Runtime's CPU threads spin between the operators "
                       "of a run (faster); off: they sleep, leaving more CPU to the event loop")

    # dynamic batching
    max_batch_size: int = Field(8, ge=1, le=256, description="Images in one forward pass at most")
    max_wait_ms: float = Field(5.0, ge=0.0, le=10_000.0, description="How long a partial batch "
                               "waits for more images while another batch runs")
    max_queue: int = Field(256, ge=0, description="images waiting for the model; 0: none wait, "
                           "requests past what the running batches hold are refused (503)")
    latency_target_ms: float | None = Field(
        None, gt=0.0, le=60_000.0, description="A frame's predicted time in the batcher (queue "
        "+ its batch's pass) to stay under: batches and passes in flight capped by a per-size cost "
        "model when they must be; None: off (batches sized for throughput)")
    max_concurrent_batches: int | None = Field(
        None, ge=1, le=256, description="forward passes in flight at once; None: one per core "
        "for ONNX Runtime on a CPU (single-threaded passes), else 1")
    preprocess_threads: int | None = Field(None, ge=1, le=64, description="Threads that decode "
                                           "and letterbox; None: one per core (at least 2)")
    warmup: bool = Field(True, description="Run every batch size once before taking requests")
    load_in_background: bool = Field(True, description="open the port before the model is loaded")

    # limits
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="Request body limit (413)")
    max_pixels: int = Field(8192 * 8192, ge=1024, description="Pixels per image, read from its "
                            "header before decoding (413)")
    min_side: int = Field(32, ge=1, description="Shortest image side allowed (400)")
    max_side: int = Field(8192, ge=1, description="Longest image side allowed (400)")
    max_batch_items: int = Field(64, ge=1, le=1024, description="Images per /v1/detect/batch request")
    max_parts: int = Field(128, ge=1, description="Multipart fields per request")
    max_header_bytes: int = Field(16 * 1024, ge=1024, description="Request line and headers (431)")
    default_timeout_ms: float | None = Field(None, gt=0, description="deadline when none is sent")
    drain_timeout_s: float = Field(30.0, ge=0.0, description="How long SIGTERM waits for work in flight")

    # video streams
    max_streams: int = Field(256, ge=1, description="Video streams held at once; a new one past "
                             "the limit is refused (503)")
    stream_ttl_s: float = Field(60.0, gt=0.0, description="Seconds a stream is kept after its last frame")
    stream_threads: int = Field(2, ge=1, le=64, description="Threads that run the streams' trackers")
    stream_ws_window: int = Field(4, ge=1, le=256, description="Frames of one WebSocket feed "
                                  "detected at once; the next ones wait to be read")

    # result cache and coalescing
    cache_enabled: bool = Field(True, description="Result cache and coalescing of identical requests")
    cache_size: int = Field(256, ge=0, description="Results kept in the cache")
    cache_ttl_s: float = Field(300.0, ge=0.0, description="Seconds a cached result lives")

    # shared state across workers and hosts (service/shared/): unset, each process keeps its own
    redis_url: SecretStr | None = Field(
        None, description="redis:// or rediss://[user:password@]host:port/db; result cache, "
        "coalescing and rate limit shared by every process that names it")
    redis_pool_size: int = Field(32, ge=1, le=1024, description="Redis connections per process")
    redis_connect_timeout_ms: float = Field(500.0, gt=0, description="Redis connect timeout")
    redis_timeout_ms: float = Field(500.0, gt=0, description="One Redis call at most; past it the "
                                    "process serves without shared state until Redis answers again")
    redis_key_prefix: str = Field("yoloserve:", description="Prefix of every key, so that several "
                                  "deployments share one Redis")
    redis_lock_lease_ms: float = Field(2000.0, gt=0, description="Lease of a coalescing lock: a "
                                       "process that dies while computing delays the others this long")

    # optional protection
    api_keys: list[SecretStr] = Field(default_factory=list)
    rate_limit_rps: float | None = Field(None, gt=0, description="per client; None: off")
    rate_limit_burst: int = Field(20, ge=1, description="Requests a client may send at once")

    # model monitoring (drift)
    monitor_enabled: bool = Field(True, description="Per-class detection rates and confidence "
                                  "distributions over a sliding window, compared with a baseline")
    monitor_window: int = Field(500, ge=10, le=1_000_000, description="Images in the sliding "
                                "window; a class past the threshold is logged once per window")
    monitor_min_window: int = Field(100, ge=1, description="Images the window holds before "
                                    "drift is scored")
    monitor_baseline_images: int = Field(500, ge=10, description="Images after start that form "
                                         "the baseline when no baseline file is given")
    monitor_baseline: Path | None = Field(None, description="Baseline file written by "
                                          "`yoloserve monitor baseline`")
    monitor_min_conf: float = Field(0.25, ge=0.0, lt=1.0, description="Detections counted from "
                                    "this confidence; requests asking for more are not counted")
    drift_threshold: float = Field(0.25, gt=0.0, description="Drift score (PSI) past which a "
                                   "class is logged as drifting")

    # logs
    log_format: Literal["json", "text"] = Field("json", description="JSON lines or plain text")
    log_level: str = Field("INFO", description="Logging level")
    access_log: bool = Field(True, description="One log line per request")

    @model_validator(mode="after")
    def _half_is_fp16(self) -> Settings:
        """``--half`` is a synonym of ``--precision fp16``."""
        if self.half:
            self.precision = "fp16"
        return self

    @model_validator(mode="after")
    def _default_model(self) -> Settings:
        """With several models, ``model`` is the default (first) one's path."""
        if self.models:
            self.model = parse_spec(self.models[0]).path
        return self
