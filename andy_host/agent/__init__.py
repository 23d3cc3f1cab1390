"""The host agent: backend adapters, job runner, and the link to the coordinator."""
