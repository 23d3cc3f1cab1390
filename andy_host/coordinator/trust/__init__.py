"""How far the pool believes a host: its standing, the answer checks and quarantine,
and the ledger of what it served."""
