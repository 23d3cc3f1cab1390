"""andy-host: a distributed AI compute pool with OpenAI-compatible endpoints."""

__version__ = "0.1.0"
