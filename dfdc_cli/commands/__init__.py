"""The CLI's subcommands, one module each: they parse options and print; the work is in the stage modules.

A command module imports its stage modules inside its command function, not at its top: `deepfake
--help` imports every command module, and the stages import torch, whose import is the CLI's one
measured start-up cost (2026-12-05, 2-core machine under load: `import torch, torchvision` 61 s,
`deepfake --help` 7 s; tests/test_models_standalone.py checks that --help imports no torch).
"""
