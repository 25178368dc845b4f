"""RedMessenger: delivers Redis PUBLISHes to users' browsers, queueing them while users are away."""

__version__ = "0.1.0"
