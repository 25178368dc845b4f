"""
The daemon as twistd runs it: the configuration, the tap (``twistd redmessenger``),
the service tree that wires every part together, SIGHUP reloads, and the plugin
cache helper for installs.
"""
