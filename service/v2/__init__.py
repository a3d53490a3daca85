"""The Open Inference Protocol v2 (KServe v2 / Triton's HTTP API) beside ``/v1``."""
