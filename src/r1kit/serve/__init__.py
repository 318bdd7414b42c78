"""Serving: an OpenAI-compatible HTTP server with DeepSeek's reasoning_content, a web chat and a terminal chat.

app.py (create_app, serve: `r1kit serve`), reasoning.py (the <think> split, streaming and not), schemas.py (request
models and limits), chat.py (`r1kit chat`), scripted.py (a scripted stand-in model for tests and demos),
static/index.html (the web chat at /). Imports are lazy so `import r1kit.serve` does not pull in FastAPI.
"""
