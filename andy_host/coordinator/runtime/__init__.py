"""Assembly and the run loop: the application and its parts, built once with what each
needs (each part's application key lives next to it), /health, the periodic work and
its housekeeping, and what the coordinator tells its operator at start."""
