"""The OpenAI-compatible HTTP server: a thin FastAPI process over `AsyncClient` (README "Serving")."""
