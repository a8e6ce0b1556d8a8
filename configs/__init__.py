"""The Hydra configs of i2e-train. In a source checkout they live in the top-level ``configs/`` folder;
installed, they are the package ``i2e_train.configs``."""
