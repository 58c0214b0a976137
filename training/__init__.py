"""HonestFace training: stage 1 (VRE dictionaries) and stage 2 (one-step generator + latent discriminator).

Standalone scripts (``train.py``, ``export.py``, ``stage1.py``) that import the model from ``honestface_core``.
The folder is also a package so the tests can import its modules.
"""
