"""Code both services share: errors, server lifecycle, registry, logging, secrets."""
