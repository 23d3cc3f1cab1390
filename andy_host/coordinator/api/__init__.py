"""The client APIs: OpenAI (chat, completions, embeddings, models, Responses) and Ollama,
their request bodies and their streamed shapes, and the OpenAPI document."""
