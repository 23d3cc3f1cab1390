"""Assembly and the run loop: the application, its state, its periodic work, and
what it tells its operator at start."""
