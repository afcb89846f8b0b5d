"""probe's own model-family adapters, registered through the same hook as anyone's."""

from probe.hookspecs import hookimpl


@hookimpl
def register_adapters(register):
    from probe.core.adapters import builtin_adapters

    # Registered last-asked first: the registry asks the most recently registered first.
    for adapter in reversed(builtin_adapters()):
        register(adapter.name, adapter)
