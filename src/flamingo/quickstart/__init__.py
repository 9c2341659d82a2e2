"""``flamingo quickstart``: the whole system end to end on a laptop CPU, on a procedurally drawn world.

Nothing else in the package imports the quickstart. Its small LM (``flamingo.quickstart.world_lm``) registers itself
with ``transformers`` when that module is imported, which ``Flamingo.from_pretrained`` does on its own for a
checkpoint that stores the LM.
"""
