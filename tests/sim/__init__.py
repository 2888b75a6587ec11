"""Simulation tier: hours of queue load against fake providers, in seconds."""
