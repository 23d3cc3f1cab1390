"""Running as a systemd service: unit files, install plans, status and the notify protocol."""
