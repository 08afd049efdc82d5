"""The node's web face: one ASGI application (Starlette) served by uvicorn.

This slice holds the health checks and Prometheus metrics; the admin console's pages go
in ``templates/`` and new route modules beside :mod:`.app`.
"""
