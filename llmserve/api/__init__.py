"""The HTTP face: FastAPI app factory, schemas, SSE framing, routes."""
