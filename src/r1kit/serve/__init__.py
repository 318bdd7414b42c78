"""Serving: an OpenAI-compatible HTTP server with DeepSeek's reasoning_content, a web chat and a terminal chat.

app.py (create_app: the routes), serve.py (`r1kit serve`, serve_in_thread), server.py (prompts, sampling,
admission, token streams), worker.py (the engine thread), schemas.py (the protocol models and limits),
middleware.py (access log, Host allow-list, API key, body limits), metrics.py (/metrics, the request log line),
tools.py (function calling in the R1 format), reasoning.py (the <think> split, streaming and not), errors.py,
chat.py (`r1kit chat`), scripted.py (a scripted stand-in model for tests and demos), static/ (the web chat at /,
with its vendored Markdown, KaTeX and highlight.js). Imports are lazy so `import r1kit.serve` does not pull in
FastAPI.
"""
