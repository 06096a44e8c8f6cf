"""The host side: what runs on the machine that holds the instances. The agent
(agent.py: runtimes, pooler entries, instance files, wake and sleep), backups made
and restored here (backups.py, backup_stream.py), usage (usage.py), the activator's
decisions on databases (databases.py) and the Celery tasks of the host's queues
(tasks.py).

The boundary is one-way: nothing here imports the control plane's services, tasks,
API or web code (tests/test_host_boundary.py checks it).
"""
