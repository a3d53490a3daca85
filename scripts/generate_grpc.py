"""Generates the Python modules of the Open Inference Protocol's gRPC service from the published
``.proto`` files kept in ``service/api/grpc/proto/`` (Triton's ``grpc_service.proto`` and the
``model_config.proto`` it imports), with grpcio-tools::

    .venv/bin/python scripts/generate_grpc.py

Two changes are made to protoc's output, both so that the modules live inside this package and
beside other copies of the same protocol (``tritonclient``, KServe) in one process:

- ``import model_config_pb2`` becomes an import from this package;
- the files are added to the package's own descriptor pool (``service.api.grpc.proto.pool``)
  rather than protobuf's default one, where another copy of package ``inference`` would clash.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "service" / "api" / "grpc" / "proto"
PACKAGE = "service.api.grpc.proto"
FILES = ("model_config.proto", "grpc_service.proto")


def main() -> int:
    include = Path(protoc.__file__).parent / "_proto"
    args = ["grpc_tools.protoc", f"-I{PROTO}", f"-I{include}", f"--python_out={PROTO}",
            f"--pyi_out={PROTO}", f"--grpc_python_out={PROTO}", *(str(PROTO / f) for f in FILES)]
    if protoc.main(args) != 0:
        return 1
    (PROTO / "model_config_pb2_grpc.py").unlink(missing_ok=True)  # the file has no service
    for path in PROTO.glob("*_pb2*.py*"):
        text = path.read_text()
        text = re.sub(r"^import (\w+_pb2) as (\w+)$", rf"from {PACKAGE} import \1 as \2", text,
                      flags=re.M)
        text = re.sub(r"^import (\w+_pb2)$", rf"from {PACKAGE} import \1", text, flags=re.M)
        text = text.replace("_descriptor_pool.Default()", "_pool.POOL")
        if "_pool.POOL" in text:
            text = text.replace("from google.protobuf import descriptor_pool as _descriptor_pool\n",
                                f"from {PACKAGE} import pool as _pool\n")
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
