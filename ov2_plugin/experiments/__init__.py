"""Experiments built on the plugin: ``objectives`` compares pretraining objectives at equal cost (``ov2 compare``)."""
