"""``python -m dfdc_cli`` (and ``torchrun -m dfdc_cli train ...``) run the `deepfake` CLI."""

from .cli import main

if __name__ == "__main__":
    main()
