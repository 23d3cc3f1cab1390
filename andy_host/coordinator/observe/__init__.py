"""What people and operators see: the dashboard and its feed, /metrics, pool status,
the live admin totals, the leaderboard and the pool's counters."""
