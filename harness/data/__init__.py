"""Data: text datasets found online or in a local directory, and the offline check of the hub."""
