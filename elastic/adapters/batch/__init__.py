"""Batch systems: read the queue (pending demand, running jobs, exec hosts) and add, drain
and remove execution hosts. ``sge`` is Grid Engine; its pure parsers are in ``sge_parse``."""
