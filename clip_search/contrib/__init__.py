"""Integrations with third-party shop apps, each an app of its own to add to INSTALLED_APPS."""
