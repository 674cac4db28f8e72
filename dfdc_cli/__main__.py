"""``python -m dfdc_cli`` (and ``torchrun -m dfdc_cli train ...``) run the `deepfake` CLI."""

from dfdc_cli.cli import main

if __name__ == "__main__":
    main()
