"""Benchmarks: small unary gRPC calls through the sidecar, side by side with nginx (see README.md)."""
