-- The event log: append-only, dense global positions, hash-chained (DESIGN invariants 1-4, 6).

create table events (
    position        bigint      primary key,          -- dense: assigned under the log_head lock
    stream_id       text        not null,
    stream_version  integer     not null check (stream_version > 0),
    event_id        uuid        not null unique,
    command_id      uuid        not null,
    command_index   integer     not null,             -- (command_id, 0) unique: one command appends once
    type            text        not null,
    schema_version  integer     not null,
    data            json        not null,             -- json, not jsonb: the exact bytes that were hashed
    metadata        json        not null,
    recorded_at     timestamptz not null,             -- never decreases with position
    prev_hash       bytea       not null,
    hash            bytea       not null,
    unique (stream_id, stream_version),
    unique (command_id, command_index)
);

-- One row: the last position and hash. Every append locks it FOR UPDATE, which serializes
-- appends, so positions commit in order and a reader that saw N saw everything below N.
create table log_head (
    id          boolean     primary key default true check (id),
    position    bigint      not null,
    hash        bytea       not null,
    recorded_at timestamptz not null
);
insert into log_head values (true, 0, '\x0000000000000000000000000000000000000000000000000000000000000000', '-infinity');

create function certplane_refuse_change() returns trigger language plpgsql as $$
begin
    raise exception 'the event log is append-only: % on events is not allowed', tg_op
        using errcode = 'insufficient_privilege',
              hint = 'History is changed by appending a new event, never by editing old ones.';
end $$;

create trigger events_append_only_rows before update or delete on events
    for each row execute function certplane_refuse_change();
create trigger events_append_only_truncate before truncate on events
    for each statement execute function certplane_refuse_change();

-- hash = SHA-256(prev_hash ‖ position ‖ stream_version ‖ recorded_at µs ‖ content_hash), where
-- content_hash = SHA-256 of the event's canonical bytes, computed by the writer (see
-- services/storage/hash_chain.py) and recomputed from the stored columns by every verifier.
-- Only what is assigned under the lock is hashed here, which keeps the locked section short.
create function certplane_event_hash(
    prev bytea, pos bigint, stream_version integer, recorded_at timestamptz, content_hash bytea
) returns bytea language sql immutable strict as $$
    select sha256(prev || int8send(pos) || int4send(stream_version)
                  || int8send((extract(epoch from recorded_at) * 1000000)::bigint) || content_hash)
$$;

-- Wrapped data keys: outside the log, deletable. Deleting one shreds the private key whose
-- ciphertext stays in the log forever.
create table data_keys (
    key_id        uuid        primary key,
    master_key_id text        not null,
    wrapped       bytea       not null,
    created_at    timestamptz not null default now()
);

-- Append a batch of commands in one round trip and one transaction (group commit).
-- batch: [{command_id, expected: {stream: version}, events: [{stream_id, event_id, type,
--          schema_version, data (JSON text), metadata (JSON text), content_hash (hex)}], new_keys: [{key_id,
--          master_key_id, wrapped (base64)}], shred: [key_id]}]
-- returns one result per command, in order:
--   {status: ok, positions: [..], versions: [..]} | {status: duplicate}
--   | {status: conflict, stream, expected, actual}
-- A conflict or duplicate affects its own command only; the others still append.
-- Set-based where it can be (one query for duplicates, one for current versions, one INSERT
-- for all events); only the hash chain is computed row by row, as it must be.
create function certplane_append(batch jsonb) returns jsonb language plpgsql as $$
declare
    head       record;
    cmd        jsonb;
    ev         jsonb;
    exp        record;
    cid        uuid;
    seen       uuid[];
    cur_stream text[];
    cur_ver    integer[];
    slot       integer;
    actual     integer;
    conflict   jsonb;
    stream     text;
    v          integer;
    idx        integer;
    pos        bigint;
    h          bytea;
    prev       bytea;
    ts         timestamptz;
    ts_bytes   bytea;
    positions  jsonb;
    ver_out    jsonb;
    results    jsonb[] := '{}';
    new_keys   jsonb := '[]'::jsonb;
    shred      jsonb := '[]'::jsonb;
    c_pos      bigint[] := '{}';
    c_stream   text[] := '{}';
    c_ver      integer[] := '{}';
    c_eid      uuid[] := '{}';
    c_cid      uuid[] := '{}';
    c_idx      integer[] := '{}';
    c_type     text[] := '{}';
    c_sv       integer[] := '{}';
    c_data     text[] := '{}';
    c_meta     text[] := '{}';
    c_prev     bytea[] := '{}';
    c_hash     bytea[] := '{}';
begin
    select * into head from log_head where id for update;
    pos := head.position;
    h := head.hash;
    ts := greatest(clock_timestamp(), head.recorded_at);
    ts_bytes := int8send((extract(epoch from ts) * 1000000)::bigint);

    select coalesce(array_agg(e.command_id), '{}') into seen
    from events e
    where e.command_index = 0
      and e.command_id in (select (c->>'command_id')::uuid from jsonb_array_elements(batch) c);

    select coalesce(array_agg(s.stream_id), '{}'),
           coalesce(array_agg(coalesce(
               (select max(e.stream_version) from events e where e.stream_id = s.stream_id), 0)), '{}')
    into cur_stream, cur_ver
    from (select distinct k as stream_id
          from jsonb_array_elements(batch) c, jsonb_object_keys(c->'expected') k) s;

    for cmd in select value from jsonb_array_elements(batch) loop
        cid := (cmd->>'command_id')::uuid;
        if cid = any(seen) then
            results := results || jsonb_build_object('status', 'duplicate');
            continue;
        end if;
        conflict := null;
        for exp in select key, value::integer as expected from jsonb_each_text(cmd->'expected') loop
            actual := cur_ver[array_position(cur_stream, exp.key)];
            if actual <> exp.expected then
                conflict := jsonb_build_object('status', 'conflict', 'stream', exp.key,
                                               'expected', exp.expected, 'actual', actual);
                exit;
            end if;
        end loop;
        if conflict is not null then
            results := results || conflict;
            continue;
        end if;
        seen := seen || cid;
        positions := '[]'::jsonb;
        ver_out := '[]'::jsonb;
        idx := 0;
        for ev in select value from jsonb_array_elements(cmd->'events') loop
            stream := ev->>'stream_id';
            slot := array_position(cur_stream, stream);
            if slot is null then  -- a stream written without being named in `expected`
                cur_stream := cur_stream || stream;
                cur_ver := cur_ver || coalesce(
                    (select max(e.stream_version) from events e where e.stream_id = stream), 0);
                slot := array_length(cur_stream, 1);
            end if;
            v := cur_ver[slot] + 1;
            cur_ver[slot] := v;
            pos := pos + 1;
            prev := h;
            h := sha256(prev || int8send(pos) || int4send(v) || ts_bytes
                        || decode(ev->>'content_hash', 'hex'));  -- = certplane_event_hash(...)
            c_pos := c_pos || pos;
            c_stream := c_stream || stream;
            c_ver := c_ver || v;
            c_eid := c_eid || (ev->>'event_id')::uuid;
            c_cid := c_cid || cid;
            c_idx := c_idx || idx;
            c_type := c_type || (ev->>'type');
            c_sv := c_sv || (ev->>'schema_version')::integer;
            c_data := c_data || (ev->>'data');
            c_meta := c_meta || (ev->>'metadata');
            c_prev := c_prev || prev;
            c_hash := c_hash || h;
            positions := positions || to_jsonb(pos);
            ver_out := ver_out || to_jsonb(v);
            idx := idx + 1;
        end loop;
        if jsonb_array_length(coalesce(cmd->'new_keys', '[]'::jsonb)) > 0 then
            new_keys := new_keys || (cmd->'new_keys');
        end if;
        if jsonb_array_length(coalesce(cmd->'shred', '[]'::jsonb)) > 0 then
            shred := shred || (cmd->'shred');
        end if;
        results := results || jsonb_build_object('status', 'ok', 'positions', positions,
                                                 'versions', ver_out);
    end loop;

    if pos > head.position then
        insert into events (position, stream_id, stream_version, event_id, command_id,
                            command_index, type, schema_version, data, metadata, recorded_at,
                            prev_hash, hash)
        select p, s, ver, eid, c, i, t, sv, d::json, m::json, ts, pv, hh
        from unnest(c_pos, c_stream, c_ver, c_eid, c_cid, c_idx, c_type, c_sv, c_data, c_meta,
                    c_prev, c_hash) as u(p, s, ver, eid, c, i, t, sv, d, m, pv, hh);
        if jsonb_array_length(new_keys) > 0 then
            insert into data_keys (key_id, master_key_id, wrapped)
                select (k->>'key_id')::uuid, k->>'master_key_id', decode(k->>'wrapped', 'base64')
                from jsonb_array_elements(new_keys) as k;
        end if;
        if jsonb_array_length(shred) > 0 then
            delete from data_keys
                where key_id in (select (x #>> '{}')::uuid from jsonb_array_elements(shred) as x);
        end if;
        update log_head set position = pos, hash = h, recorded_at = ts where id;
        perform pg_notify('certplane_events', pos::text);
    end if;
    return to_jsonb(results);
end $$;
