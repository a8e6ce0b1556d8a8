"""``python -m i2e_train.evaluate`` (the form torchrun launches): the ``i2e-eval`` command."""

from .commands.evaluate import main

if __name__ == "__main__":
    main()
