from twisted.application.service import ServiceMaker

RedMessenger = ServiceMaker(
    "RedMessenger",
    "redmessenger.daemon.tap",
    "Deliver Redis PUBLISHes to browsers over WebSocket, queueing them while users are away.",
    "redmessenger",
)
