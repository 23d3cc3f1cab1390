"""The system tier: real llama-server and model, the built wheel, a browser, nginx,
replicas on real Redis and PostgreSQL, and the storm. Slow; part of the README's test command."""
