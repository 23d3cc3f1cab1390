"""The coordinator: OpenAI API, host websocket endpoint, scheduler."""
