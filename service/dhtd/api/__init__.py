"""The gRPC edge: decoding requests, encoding answers, mapping errors to statuses."""
