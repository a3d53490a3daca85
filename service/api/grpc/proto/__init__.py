"""Triton's published grpc_service.proto and model_config.proto, and the modules generated from
them by ``scripts/generate_grpc.py`` (do not edit those by hand)."""
