"""The host side: what runs on the machine that holds the instances. What it holds
of its tenants (store.py: their specs, spec.py, as the control plane sent them, and
their state here), the agent (agent.py: runtimes, pooler entries, instance files,
wake and sleep), backups made and restored here (backups.py, backup_stream.py),
moves between hosts (moves.py), usage (usage.py), the registrar's decisions on
databases (databases.py), the heartbeat (heartbeat.py), what it tells the control
plane (report.py) and the Celery tasks of the host's queues (tasks.py).

The boundary is one-way: nothing here imports the control plane's models, services,
tasks, API or web code (tests/test_host_boundary.py checks it), and a host's
processes have no control-plane database at all (DBAAS_HOST_ONLY, set by run_host).
"""
