"""Stage 2, training: datasets, augmentation, self-blended fakes, recipes, the hook-based loop, optimisers and the trainer that assembles a run."""
