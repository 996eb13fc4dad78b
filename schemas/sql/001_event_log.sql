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

-- Length-prefixed UTF-8, so that field boundaries are unambiguous in the hashed bytes.
create function certplane_lp(value text) returns bytea language sql immutable strict as $$
    select int4send(octet_length(convert_to(value, 'UTF8'))) || convert_to(value, 'UTF8')
$$;

-- hash = SHA-256(prev_hash ‖ canonical row). services/storage/hash_chain.py computes the same.
create function certplane_event_hash(
    prev bytea, pos bigint, stream_id text, stream_version integer, event_id uuid,
    command_id uuid, command_index integer, type text, schema_version integer,
    recorded_at timestamptz, data text, metadata text
) returns bytea language sql immutable strict as $$
    select sha256(
        'certplane-event-v1'::bytea || prev || int8send(pos)
        || certplane_lp(stream_id) || int4send(stream_version) || uuid_send(event_id)
        || uuid_send(command_id) || int4send(command_index) || certplane_lp(type)
        || int4send(schema_version)
        || int8send((extract(epoch from recorded_at) * 1000000)::bigint)
        || certplane_lp(data) || certplane_lp(metadata))
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
--          schema_version, data (JSON text), metadata (JSON text)}], new_keys: [{key_id,
--          master_key_id, wrapped (base64)}], shred: [key_id]}]
-- returns one result per command, in order:
--   {status: ok, positions: [..], versions: [..]} | {status: duplicate}
--   | {status: conflict, stream, expected, actual}
-- A conflict or duplicate affects its own command only; the others still append.
create function certplane_append(batch jsonb) returns jsonb language plpgsql as $$
declare
    head       record;
    cmd        jsonb;
    ev         jsonb;
    exp        record;
    actual     integer;
    conflict   jsonb;
    versions   jsonb;
    v          integer;
    idx        integer;
    pos        bigint;
    h          bytea;
    prev       bytea;
    ts         timestamptz;
    positions  jsonb;
    ver_out    jsonb;
    results    jsonb := '[]'::jsonb;
begin
    select * into head from log_head where id for update;
    pos := head.position;
    h := head.hash;
    ts := greatest(clock_timestamp(), head.recorded_at);
    for cmd in select value from jsonb_array_elements(batch) loop
        if exists (select 1 from events where command_id = (cmd->>'command_id')::uuid) then
            results := results || jsonb_build_array(jsonb_build_object('status', 'duplicate'));
            continue;
        end if;
        conflict := null;
        for exp in select key, value::integer as expected from jsonb_each_text(cmd->'expected') loop
            select coalesce(max(stream_version), 0) into actual from events where stream_id = exp.key;
            if actual <> exp.expected then
                conflict := jsonb_build_object('status', 'conflict', 'stream', exp.key,
                                               'expected', exp.expected, 'actual', actual);
                exit;
            end if;
        end loop;
        if conflict is not null then
            results := results || jsonb_build_array(conflict);
            continue;
        end if;
        versions := cmd->'expected';
        positions := '[]'::jsonb;
        ver_out := '[]'::jsonb;
        idx := 0;
        for ev in select value from jsonb_array_elements(cmd->'events') loop
            v := coalesce((versions->>(ev->>'stream_id'))::integer, 0) + 1;
            versions := jsonb_set(versions, array[ev->>'stream_id'], to_jsonb(v));
            pos := pos + 1;
            prev := h;
            h := certplane_event_hash(prev, pos, ev->>'stream_id', v, (ev->>'event_id')::uuid,
                                      (cmd->>'command_id')::uuid, idx, ev->>'type',
                                      (ev->>'schema_version')::integer, ts, ev->>'data',
                                      ev->>'metadata');
            insert into events (position, stream_id, stream_version, event_id, command_id,
                                command_index, type, schema_version, data, metadata,
                                recorded_at, prev_hash, hash)
            values (pos, ev->>'stream_id', v, (ev->>'event_id')::uuid, (cmd->>'command_id')::uuid,
                    idx, ev->>'type', (ev->>'schema_version')::integer, (ev->>'data')::json,
                    (ev->>'metadata')::json, ts, prev, h);
            positions := positions || to_jsonb(pos);
            ver_out := ver_out || to_jsonb(v);
            idx := idx + 1;
        end loop;
        insert into data_keys (key_id, master_key_id, wrapped)
            select (k->>'key_id')::uuid, k->>'master_key_id', decode(k->>'wrapped', 'base64')
            from jsonb_array_elements(coalesce(cmd->'new_keys', '[]'::jsonb)) as k;
        delete from data_keys
            where key_id in (select (s #>> '{}')::uuid
                             from jsonb_array_elements(coalesce(cmd->'shred', '[]'::jsonb)) as s);
        results := results || jsonb_build_array(jsonb_build_object(
            'status', 'ok', 'positions', positions, 'versions', ver_out));
    end loop;
    if pos > head.position then
        update log_head set position = pos, hash = h, recorded_at = ts where id;
        perform pg_notify('certplane_events', pos::text);
    end if;
    return results;
end $$;
