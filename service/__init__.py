"""yoloserve's HTTP service: the FastAPI app, its settings, metrics and the inference engine.

Importing this package is light (no torch, no OpenCV); the heavy parts load in ``service.engine``.
"""
