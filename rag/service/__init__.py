"""The HTTP query service (FastAPI): router (HTTP only), serving (the work), protocol (wire models)."""
