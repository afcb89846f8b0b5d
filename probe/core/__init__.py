"""The attention core and everything that touches a model's forward: the step-by-step attention, hook
points, swapping a loaded model's attention, reruns from a block, per-head outputs, the parity comparison,
the architecture table and the family adapters.

Imports torch and transformers only: never the plugin manager, the pipeline, a report or the command line.
"""
