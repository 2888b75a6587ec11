"""Reconcile, act, record: where the CLI's commands are carried out."""
