"""The service's own alerting, for users without Prometheus: rules evaluated on every check
(``rules``), the alert state machine (``engine``), notifications with retry (``notify``) and
the config file that holds rules, channels and rollback policies (``config``)."""
