-- Gateways of the previous release call certplane_append_arrays until they are replaced: it
-- becomes the chained append with no requirements, so one body serves both.
create or replace function certplane_append_arrays(
    cmd_ids      uuid[],
    exp_cmd      integer[], exp_stream text[], exp_version integer[],
    ev_cmd       integer[], ev_index integer[], ev_stream text[], ev_id uuid[], ev_type text[],
    ev_schema    integer[], ev_data text[], ev_meta text[], ev_content bytea[],
    key_cmd      integer[], key_ids uuid[], key_master text[], key_wrapped bytea[],
    shred_cmd    integer[], shred_ids uuid[],
    out status       text[],
    out bad_stream   text[], out bad_expected integer[], out bad_actual integer[],
    out ev_position  bigint[], out ev_version integer[]
) language sql as $$
    select * from certplane_append_chained(
        cmd_ids, exp_cmd, exp_stream, exp_version,
        ev_cmd, ev_index, ev_stream, ev_id, ev_type, ev_schema, ev_data, ev_meta, ev_content,
        key_cmd, key_ids, key_master, key_wrapped, shred_cmd, shred_ids,
        '{}'::integer[], '{}'::integer[])
$$;
