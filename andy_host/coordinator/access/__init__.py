"""Who may call what and how often: API keys and host tokens, key scopes and expiry,
rate limits (in memory and shared through Redis), and daily usage."""
