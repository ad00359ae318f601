"""The pure domain of vsync-stream: entries, key validation, CID, VSync, event decoding and the fold.

Nothing in this package imports a framework, a broker client or does I/O, so every rule here is
testable with plain synchronous functions.
"""
