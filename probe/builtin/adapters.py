"""probe's own model-family adapters, answering the same hook as anyone's, last."""

from probe.hookspecs import hookimpl


@hookimpl(trylast=True)
def probe_adapter(model):
    """The adapter plugins registered through the older register_adapters hook (the most recent first)
    that takes ``model``, else the first of probe's built-ins that does; None when none does."""
    from probe import plugins
    from probe.core.adapters import SpecError, builtin_adapters, first_match

    for entry in reversed(list(plugins.registry("adapter").values())):
        try:
            if entry.value.matches(model):
                return entry.value
        except SpecError as error:  # named here, or the error would name this built-in plugin
            raise plugins.PluginError(f"plugin {entry.plugin!r}: adapter {entry.name!r}: {error}") from error
    return first_match(model, builtin_adapters())
