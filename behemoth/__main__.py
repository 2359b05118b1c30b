"""`python -m behemoth` (and `torchrun -m behemoth`) run the CLI."""

from behemoth.cli import main

if __name__ == "__main__":
    main()
