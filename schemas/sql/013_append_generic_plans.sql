-- The append function's statements take whole arrays as parameters. PostgreSQL plans such a
-- statement again for the values of each call while that custom plan looks cheaper than the
-- generic one, and for the short arrays of a lightly loaded gateway it always does: perf on
-- a backend appending one command a call (bench/append_sql.py --batch 1) had a quarter of
-- its time in the planner, the same statements planned again and again. The generic plans
-- are the plans these statements need whatever the arrays hold (each of them looks streams
-- and command ids up by their unique indexes, or unnests its arguments), so the function
-- always uses them. Measured: PostgreSQL's CPU for a one-command append 1,144 / 1,269 against
-- 1,537 / 1,606 us; for 32-command appends no change beyond the noise (122-133 us a command).

alter function certplane_append_chained(
    uuid[], integer[], text[], integer[], integer[], integer[], text[], uuid[], text[],
    integer[], text[], text[], bytea[], integer[], uuid[], text[], bytea[], integer[], uuid[],
    integer[], integer[]
) set plan_cache_mode = force_generic_plan;
