"""Replicated mode: replicas sharing Redis (directory of hosts, announcements) and
running jobs for each other over a signed internal route."""
