"""swan-policy: Switchable Activation Networks for vision-action robot policies.

Importing the package stays cheap and torch-free (the deploy runtime relies on it):
torch-side modules are imported where they are used.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
