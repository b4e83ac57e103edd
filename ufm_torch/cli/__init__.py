"""The command line: ``ufm-train`` (Hydra), ``ufm-plot``, and the checks of a config before anything is built."""
