"""A purpose-built HTTP/2 layer for relaying gRPC: frames, HPACK and the connection protocol."""
