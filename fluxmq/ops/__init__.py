"""Operations: webhooks, Prometheus metrics, the admin API and hot reload."""
