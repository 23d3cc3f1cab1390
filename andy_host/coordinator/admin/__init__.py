"""The admin's HTTP API and the actions on hosts every replica applies."""
