"""One harness for the demo, the spike and the chaos run (each behaviour written once):

- `processes.py`: start, wait for, kill -9, stall, restart and always stop the processes of a
  run (FlashSale's roles, HAProxy, locust, servers); environments, ports, tools.
- `servers.py`: a Redis and a PostgreSQL of a run's own, on free ports, to kill and stall.
- `netns.py`: a network namespace for one API process, to cut it off from Redis.
- `haproxy.py`: HAProxy in front of the API processes, as the chart's ingress configures it.
- `crowd.py`: the simulated shoppers and what they saw.
- `store.py`: a sale's facts read from PostgreSQL and Redis; removing a run's keys.
- `invariants.py`: what must hold after any sale (pure functions, unit-tested).
- `report.py`: percentiles, tables, plots over time, progress and the final JSON line.
"""
