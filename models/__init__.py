"""Model registry of the deepfake ensemble: architectures, member specs and the weights store.

``train``, ``scan`` and ``eval`` build every network through :mod:`models.registry`.
"""
