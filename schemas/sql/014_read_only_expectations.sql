-- 012 took a stream to be at the lowest version the batch expects of it whenever that
-- version exists, trusting the unique (stream_id, stream_version) index to refuse the batch's
-- next event on it if another writer got there first. A stream the batch only reads gets no
-- next event: a command decided on a stale state of it (a hostname another app claimed
-- through another gateway since this one cached it) was appended as if the state were
-- current. Now a stream the batch does not write is read to its end, on every attempt; the
-- rest is 012 unchanged.

create or replace function certplane_append_chained(
    cmd_ids      uuid[],
    exp_cmd      integer[], exp_stream text[], exp_version integer[],
    ev_cmd       integer[], ev_index integer[], ev_stream text[], ev_id uuid[], ev_type text[],
    ev_schema    integer[], ev_data text[], ev_meta text[], ev_content bytea[],
    key_cmd      integer[], key_ids uuid[], key_master text[], key_wrapped bytea[],
    shred_cmd    integer[], shred_ids uuid[],
    req_cmd      integer[], req_on integer[],
    out status       text[],
    out bad_stream   text[], out bad_expected integer[], out bad_actual integer[],
    out ev_position  bigint[], out ev_version integer[]
) language plpgsql as $$
declare
    head      record;
    n_cmd     integer := coalesce(array_length(cmd_ids, 1), 0);
    n_exp     integer := coalesce(array_length(exp_cmd, 1), 0);
    n_ev      integer := coalesce(array_length(ev_cmd, 1), 0);
    n_req     integer := coalesce(array_length(req_cmd, 1), 0);
    r         integer;
    streams   text[];
    versions  integer[];
    exp_slot  integer[];
    ev_slot   integer[];
    seen      uuid[];
    ok        boolean[];
    prev_hash bytea[];
    hash      bytea[];
    k         integer;
    e         integer;
    x         integer;
    slot      integer;
    v         integer;
    pos       bigint;
    h         bytea;
    ts        timestamptz;
    ts_bytes  bytea;
    checked   boolean := false;
begin
  select * into head from log_head where id for update;  -- held across a retry
  <<attempt>>
  loop
   begin
    status := array_fill(null::text, array[n_cmd]);
    bad_stream := status; bad_expected := array_fill(null::integer, array[n_cmd]);
    bad_actual := bad_expected;
    ev_position := array_fill(null::bigint, array[n_ev]);
    ev_version := array_fill(null::integer, array[n_ev]);
    prev_hash := array_fill(null::bytea, array[n_ev]); hash := prev_hash;
    pos := head.position;
    h := head.hash;
    ts := greatest(clock_timestamp(), head.recorded_at);
    ts_bytes := int8send((extract(epoch from ts) * 1000000)::bigint);

    seen := '{}';
    if checked then  -- a unique violation: look for repeated commands (see 006)
        select coalesce(array_agg(command_id), '{}') into seen
        from events where command_index = 0 and command_id = any(cmd_ids);
    end if;

    -- Every stream the batch names or writes, and its current version (see above): on the
    -- first attempt, for a stream it writes, the lowest version the batch expects of it, if
    -- that version is there; a stream it only reads is read to its end.
    select coalesce(array_agg(d.s), '{}'),
           coalesce(array_agg(case
               when checked or d.low is null or not d.written then coalesce(
                   (select max(stream_version) from events where stream_id = d.s), 0)
               when d.low = 0 or exists (select from events
                                         where stream_id = d.s and stream_version = d.low)
                   then d.low
               else coalesce((select max(stream_version) from events where stream_id = d.s), 0)
               end), '{}')
    into streams, versions
    from (select u.s, min(u.expected) as low, bool_or(u.expected is null) as written
          from (select q.s, q.expected from unnest(exp_stream, exp_version) as q(s, expected)
                union all
                select w.s, null::integer from unnest(ev_stream) as w(s)) u
          group by u.s) d;

    -- each expectation's and each event's stream as its index in `streams`
    select coalesce(array_agg(i order by o), '{}') into exp_slot
    from unnest(exp_stream) with ordinality as u(s, o)
         join unnest(streams) with ordinality as d(s, i) using (s);
    select coalesce(array_agg(i order by o), '{}') into ev_slot
    from unnest(ev_stream) with ordinality as u(s, o)
         join unnest(streams) with ordinality as d(s, i) using (s);

    -- Commands in order; a command sees the versions its predecessors in the batch wrote.
    ok := array_fill(false, array[n_cmd]);
    x := 1;  -- exp_* entries are grouped by command, in command order
    e := 1;  -- so are ev_* entries
    r := 1;  -- and req_* entries
    for k in 1 .. n_cmd loop
        status[k] := 'ok';
        if checked then
            if cmd_ids[k] = any(seen) then
                status[k] := 'duplicate';
            end if;
        end if;
        while x <= n_exp and exp_cmd[x] = k loop
            if status[k] = 'ok' then
                v := versions[exp_slot[x]];
                if v <> exp_version[x] then
                    status[k] := 'conflict';
                    bad_stream[k] := exp_stream[x];
                    bad_expected[k] := exp_version[x];
                    bad_actual[k] := v;
                end if;
            end if;
            x := x + 1;
        end loop;
        -- decided on the state an earlier command of the batch makes: only with it
        while r <= n_req and req_cmd[r] = k loop
            if status[k] = 'ok' and not ok[req_on[r]] then
                status[k] := 'conflict';
                bad_stream[k] := exp_stream[x - 1];
                bad_expected[k] := exp_version[x - 1];
                bad_actual[k] := versions[exp_slot[x - 1]];
            end if;
            r := r + 1;
        end loop;
        ok[k] := status[k] = 'ok';
        if ok[k] then
            if checked then
                seen := seen || cmd_ids[k];  -- the same id later in this batch is a duplicate
            end if;
            while e <= n_ev and ev_cmd[e] = k loop
                slot := ev_slot[e];
                v := versions[slot] + 1;
                versions[slot] := v;
                pos := pos + 1;
                ev_position[e] := pos;
                ev_version[e] := v;
                prev_hash[e] := h;
                h := sha256(h || int8send(pos) || int4send(v) || ts_bytes || ev_content[e]);
                hash[e] := h;  -- = certplane_event_hash(prev, pos, v, ts, content)
                e := e + 1;
            end loop;
        else
            while e <= n_ev and ev_cmd[e] = k loop
                e := e + 1;
            end loop;
        end if;
    end loop;

    if pos > head.position then
        insert into events (position, stream_id, stream_version, event_id, command_id,
                            command_index, type, schema_version, data, metadata, recorded_at,
                            prev_hash, hash)
        select u.p, u.s, u.v, u.eid, cmd_ids[u.c], u.i, u.t, u.sv, u.d::json, u.m::json, ts,
               u.pv, u.hh
        from unnest(ev_position, ev_stream, ev_version, ev_id, ev_cmd, ev_index, ev_type,
                    ev_schema, ev_data, ev_meta, prev_hash, hash)
             as u(p, s, v, eid, c, i, t, sv, d, m, pv, hh)
        where u.p is not null;
        if cardinality(key_cmd) > 0 then  -- most batches have no keys: skip the statements
            insert into data_keys (key_id, master_key_id, wrapped)
                select u.id, u.m, u.w
                from unnest(key_cmd, key_ids, key_master, key_wrapped) as u(c, id, m, w)
                where ok[u.c];
        end if;
        if cardinality(shred_cmd) > 0 then
            delete from data_keys
                where key_id in (select u.id from unnest(shred_cmd, shred_ids) as u(c, id)
                                 where ok[u.c]);
        end if;
        update log_head set position = pos, hash = h, recorded_at = ts where id;
        perform pg_notify('certplane_events', pos::text);
    end if;
    return;
   exception when unique_violation then
    if checked then
        raise;  -- not a repeated command nor a claimed stream: a real collision, say so
    end if;
    checked := true;
   end;
  end loop attempt;
end $$;

-- as 013: the replaced function keeps the generic plans
alter function certplane_append_chained(
    uuid[], integer[], text[], integer[], integer[], integer[], text[], uuid[], text[],
    integer[], text[], text[], bytea[], integer[], uuid[], text[], bytea[], integer[], uuid[],
    integer[], integer[]
) set plan_cache_mode = force_generic_plan;
