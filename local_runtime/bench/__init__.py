"""The benchmark: the pipeline measured against raw binary ``COPY`` in the same run.

``make bench SCALE=small|medium|large`` starts its own embedded PostgreSQL
(``.local/bench-pg``, a free port; or the server of ``BENCH_PG_URI``), builds
two fresh databases on it (``bench_legacy``, ``bench_supabase``), seeds the
legacy world at the scale and bootstraps the destination. Then, in one run:

* the **limit** of each entity: the legacy table streamed by binary
  ``COPY ... TO STDOUT`` into ``COPY ... FROM STDIN`` of an empty scratch
  table with the legacy column types and a primary key (``bench_limit``);
* the **naive** baselines, on a slice of the messages (``bench_naive``, emptied
  before each): the migration plan's approach as written (psycopg2, rows read
  through a server-side cursor, ``INSERT ... ON CONFLICT (id) DO UPDATE`` by
  ``execute_values`` in batches of 100, one commit per batch), and the same
  upserts through psycopg 3's pipelined ``executemany``; the pipeline's rows/s
  is reported over each;
* **the pipeline**, entity by entity in load order: (1) a full run into the
  empty destination, (2) a full run with nothing changed, (3) a full run after
  10 % of the messages were edited, (4) an incremental run after
  ``apply_changes(fraction=0.01)``, (5) the reconciliation alone;
* a profile of the messages full run: cProfile of the Python side,
  ``pg_stat_statements`` of the SQL side, ``EXPLAIN (ANALYZE, BUFFERS)`` of
  the transform query and of one merge chunk.

Every measured step runs in its own spawned child process, so its wall time
excludes interpreter start-up and its peak RSS (``ru_maxrss`` of the child)
is the step's alone. A ``CHECKPOINT`` precedes each step so no step pays for
an earlier one's writes. Output: a table with every figure, its ratio to the
limit and the targets (PASS/MISS), ``bench-results/<timestamp>-<scale>.json``
and ``.png``, and one line appended to ``bench-results/history.jsonl``; the
next run at another scale is compared against that line.

Modules: ``__main__`` (the run end to end), ``phases`` (what runs, in order:
the registry a new step joins with one line), ``steps`` (the measured bodies,
run in a child), ``measure`` (the child processes, their memory and CPU),
``server`` (the PostgreSQL server and databases), ``report`` (pure functions
of the figures: ratios, targets, history), ``output`` (printed report, files).

Environment: ``BENCH_PG_URI`` (use that server), ``BENCH_KEEP=1`` (leave the
embedded server running), ``BENCH_FAST=1`` (embedded server with fsync off).
"""
