"""The hosts: their websocket link, who may enrol and at what pace, the registry of
connected hosts and their models, and each host's health."""
