"""What runs a plugin: the run config, building models (backbone, adapters, precision), checkpoints, the trainer
and its pieces (data streams, optimizer, state, sharding, logging), and evaluation. It imports the sdk, never the
apps (tests/test_layers.py checks it).
"""
