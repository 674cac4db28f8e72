"""deepfake: face-tube deepfake detection (re-implementation of the DFDC "Medics" solution)."""

__version__ = "0.1.0"
