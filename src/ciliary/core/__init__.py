"""Pure value types shared by every layer: identities, verdicts, drop reasons, API models.

Nothing here performs I/O or imports another ciliary package; everything above may import it.
"""
