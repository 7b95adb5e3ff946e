"""`python -m engine serve`: an OpenAI-compatible server (app.py), its models (registry.py), its page (webui.py)."""
