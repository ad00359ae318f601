"""The DICT simulator: the DICT's own state, a realistic population, the Bridge gRPC server, and a
publisher of the participant's key events onto Pulsar (DESIGN 3.5).

Import the modules you need (``model``, ``population``, ``server``, ``publisher``); nothing here
connects or starts anything at import time.
"""
