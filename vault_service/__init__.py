"""The vault service: encrypted custody of provider keys and user-token authentication."""
