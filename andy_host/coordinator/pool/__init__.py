"""Running client work on the pool: the typed job, choosing a host (scheduler and
queue), relaying its events back, and failing over when a host goes."""
