"""Configuration: the options table (options.py), its three sources (YAML, environment, flags), provider
instances, policies, durations and the aigw home; resolved into one frozen `Settings` (config.py)."""
