"""The broker events webhooks can be sent (the names of the original FluxMQ)."""

EVENT_TYPES = (
    "client.connected",
    "client.disconnected",
    "client.session_takeover",
    "message.published",
    "message.delivered",
    "message.retained",
    "subscription.created",
    "subscription.removed",
    "auth.success",
    "auth.failure",
    "authz.publish_denied",
    "authz.subscribe_denied",
)

# Events with a topic: an endpoint's `topic_filters` apply to them.
TOPIC_EVENTS = frozenset(
    {"message.published", "message.delivered", "message.retained", "authz.publish_denied"}
)
