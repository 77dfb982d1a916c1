"""FluxMQ's load tool and the Mosquitto-vs-FluxMQ comparison harness (``python -m bench``).

Modules: ``mqttwire`` (client-side MQTT encoding), ``framing`` (walking packets over large
reads, latency histogram), ``client``/``pub``/``sub``/``conn`` (one connection and its role),
``worker`` (a process's epoll loop), ``runner`` (the parent: phases, rates, summary),
``procstats`` (/proc CPU and memory), ``target`` (loopback-only rule), ``topics`` (filter
matching), ``report`` (percentiles, tables), ``compare`` (brokers and scenarios), ``cli``.
"""
