"""`python -m clem_icd.cli`: the `clem-icd` command, for launchers that run modules, e.g.
`accelerate launch -m clem_icd.cli train ...` (multi-GPU training)."""

from clem_icd.cli import main

if __name__ == "__main__":
    main()
