"""probe's first-party plugins, installed as the package ``probe_plugins`` (entry-point group ``probe``).

Each file is one plugin and reads on its own; turn any of them off with PROBE_PLUGINS.
"""
