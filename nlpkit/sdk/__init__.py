"""What a task plugin is written against: ``Task`` and its options, the modeling strategies (``modeling``,
``generation``), readers and encoders of data, the heads, the registry and the errors. Plugins import from here (or from ``nlpkit``, which re-exports the
most used names) and from nothing else in nlpkit; the engine and the apps build on this layer, never the reverse
(tests/test_layers.py checks it).
"""
