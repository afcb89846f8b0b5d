"""probe's own model-family adapters, registered through the same hook as anyone's."""

from probe.hookspecs import hookimpl


@hookimpl
def register_adapters(register):
    from probe.adapters.bert import BertAdapter
    from probe.adapters.bloom import BloomAdapter
    from probe.adapters.falcon import FalconAdapter
    from probe.adapters.gpt2 import GPT2Adapter
    from probe.adapters.gpt_neo import GPTNeoAdapter
    from probe.adapters.interface import InterfaceAdapter
    from probe.adapters.mapped import MappedAdapter
    from probe.adapters.mpt import MptAdapter

    register("universal", InterfaceAdapter())
    register("mapped", MappedAdapter())
    register("bert", BertAdapter())
    register("gpt2", GPT2Adapter())
    register("gpt_neo", GPTNeoAdapter())
    register("mpt", MptAdapter())
    register("falcon", FalconAdapter())
    register("bloom", BloomAdapter())
