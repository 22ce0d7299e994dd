"""Test support: local stand-ins for outside services."""
