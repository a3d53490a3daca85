"""The service's settings: one pydantic-settings class, ``YOLOSERVE_`` environment prefix.

``yoloserve serve`` flags override the environment. Every limit the service enforces is here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

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
    model: Path = Field(DEFAULT_MODEL, description="Weights (.pt) or ONNX model; the demo model by default")
    backend: Literal["auto", "torch", "onnx"] = Field(
        "auto", description="auto: ONNX Runtime for .onnx, and on a CPU when an .onnx lies beside the .pt")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto, cpu or cuda:N")
    half: bool | None = Field(None, description="FP16 on CUDA; None: on when the device is CUDA")
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
    max_concurrent_batches: int | None = Field(
        None, ge=1, le=256, description="forward passes in flight at once; None: one per core "
        "for ONNX Runtime on a CPU (single-threaded passes), else 1")
    preprocess_threads: int = Field(4, ge=1, le=64, description="Threads that decode and letterbox")
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

    # optional protection
    api_keys: list[SecretStr] = Field(default_factory=list)
    rate_limit_rps: float | None = Field(None, gt=0, description="per client; None: off")
    rate_limit_burst: int = Field(20, ge=1, description="Requests a client may send at once")

    # logs
    log_format: Literal["json", "text"] = Field("json", description="JSON lines or plain text")
    log_level: str = Field("INFO", description="Logging level")
    access_log: bool = Field(True, description="One log line per request")
