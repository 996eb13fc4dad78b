-- Appends whose commands may depend on earlier commands of the same batch. The gateway
-- decides an app's next command on the state its pending commands make, before they are
-- appended. A version check alone cannot tell that basis from another: if the earlier
-- command fails because another gateway wrote the app's stream, the stream reaches the
-- version the later command expects anyway, with other events. So the batch names, per
-- command, the earlier commands (req_on, 1-based) it was decided after; it is appended
-- only if they were (else 'conflict', and the gateway decides it again on the log's
-- facts). Otherwise the same as certplane_append_arrays (007), which stays for gateways of
-- the previous release during a rolling upgrade: both take the same lock.

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
    seen      uuid[];
    ok        boolean[];
    prev_hash bytea[];
    hash      bytea[];
    k         integer;
    i         integer;
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

    -- A repeated command (a client's retry) is rare: the first attempt assumes there is none
    -- and lets the unique index on (command_id, command_index) prove it at insert (see 006).
    seen := '{}';
    if checked then
        select coalesce(array_agg(command_id), '{}') into seen
        from events where command_index = 0 and command_id = any(cmd_ids);
    end if;

    -- The current version of every stream the batch names or writes, in one query.
    select coalesce(array_agg(s), '{}'),
           coalesce(array_agg(coalesce(
               (select max(stream_version) from events where stream_id = s), 0)), '{}')
    into streams, versions
    from (select distinct s from unnest(exp_stream || ev_stream) s) d;

    -- Commands in order; a command sees the versions its predecessors in the batch wrote.
    ok := array_fill(false, array[n_cmd]);
    x := 1;  -- exp_* entries are grouped by command, in command order
    e := 1;  -- so are ev_* entries
    r := 1;  -- and req_* entries
    for k in 1 .. n_cmd loop
        if cmd_ids[k] = any(seen) then
            status[k] := 'duplicate';
        else
            status[k] := 'ok';
            while x <= n_exp and exp_cmd[x] = k loop
                v := versions[array_position(streams, exp_stream[x])];
                if status[k] = 'ok' and v <> exp_version[x] then
                    status[k] := 'conflict';
                    bad_stream[k] := exp_stream[x];
                    bad_expected[k] := exp_version[x];
                    bad_actual[k] := v;
                end if;
                x := x + 1;
            end loop;
            -- decided on the state an earlier command of the batch makes: only with it
            while r <= n_req and req_cmd[r] = k loop
                if status[k] = 'ok' and not ok[req_on[r]] then
                    status[k] := 'conflict';
                    bad_stream[k] := exp_stream[x - 1];
                    bad_expected[k] := exp_version[x - 1];
                    bad_actual[k] := versions[array_position(streams, exp_stream[x - 1])];
                end if;
                r := r + 1;
            end loop;
        end if;
        while x <= n_exp and exp_cmd[x] = k loop  -- skipped by a duplicate
            x := x + 1;
        end loop;
        while r <= n_req and req_cmd[r] = k loop
            r := r + 1;
        end loop;
        ok[k] := status[k] = 'ok';
        if ok[k] then
            seen := seen || cmd_ids[k];  -- the same id later in this batch is a duplicate
        end if;
        while e <= n_ev and ev_cmd[e] = k loop
            if ok[k] then
                slot := array_position(streams, ev_stream[e]);
                v := versions[slot] + 1;
                versions[slot] := v;
                pos := pos + 1;
                ev_position[e] := pos;
                ev_version[e] := v;
                prev_hash[e] := h;
                h := sha256(h || int8send(pos) || int4send(v) || ts_bytes || ev_content[e]);
                hash[e] := h;  -- = certplane_event_hash(prev, pos, v, ts, content)
            end if;
            e := e + 1;
        end loop;
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
        raise;  -- not a repeated command: a real collision, say so
    end if;
    checked := true;
   end;
  end loop attempt;
end $$;

grant execute on function certplane_append_chained(
    uuid[], integer[], text[], integer[], integer[], integer[], text[], uuid[], text[],
    integer[], text[], text[], bytea[], integer[], uuid[], text[], bytea[], integer[], uuid[],
    integer[], integer[]
) to certplane_service;
