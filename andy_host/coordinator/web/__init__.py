"""HTTP plumbing every endpoint shares: JSON bodies and answers, CORS, request ids,
and the client address as the coordinator counts it."""
