"""The `elastic` command line (click): parse, call the engine, print."""
