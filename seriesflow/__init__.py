"""seriesflow: DICOM ingestion into an exact PostgreSQL catalog (CLI and shared plumbing)."""

import os

__version__ = "0.1.0"

# Every process of ours that forks does so only to exec (pg_ctl, the children of
# `seriesflow run`). gRPC's fork handlers exist for fork-without-exec and have crashed such
# children (SIGSEGV before exec) while gRPC threads were busy. gRPC reads this when it is
# first imported, and every entry point imports this package before grpc.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
