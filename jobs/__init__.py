"""Ray entry points over the `pipeline` library, and the `deep-spectral` CLI."""
