"""Authentication and authorisation: Mosquitto password and ACL files, the HTTP callout, and
the hooks (`fluxmq.security.policy.SecurityHooks`) that apply them to every door."""
