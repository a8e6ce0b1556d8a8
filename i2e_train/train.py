"""``python -m i2e_train.train`` (the form torchrun launches): the ``i2e-train`` command."""

from .commands.train import main

if __name__ == "__main__":
    main()
