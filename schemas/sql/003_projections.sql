-- Projector bookkeeping. Read models themselves live in one schema per projection and
-- generation (e.g. certificates_g1), behind views in a stable schema (certificates.*), so a
-- rebuild can fill a new generation while the old one serves, then swap the views atomically.

create table projector_checkpoints (
    name        text        primary key,          -- "<projection>" or "<projection>#g<N>" while rebuilding
    generation  integer     not null default 1,
    position    bigint      not null default 0,
    updated_at  timestamptz not null default now()
);

create table projector_dead_letters (
    name            text        not null,
    position        bigint      not null,
    event_type      text        not null,
    error           text        not null,
    attempts        integer     not null,
    failed_at       timestamptz not null default now(),
    skipped_at      timestamptz,
    skipped_by      text,
    skip_position   bigint,                           -- the ProjectionSkipped event that audits it
    primary key (name, position)
);

create table projector_status (
    name          text        not null,
    instance      text        not null,
    state         text        not null,              -- running | standby | stopped | rebuilding
    detail        text        not null default '',
    heartbeat_at  timestamptz not null default now(),
    primary key (name, instance)
);

-- (CREATE on the database, for the generation schemas, is granted by `certplane migrate`
-- every time it runs: a database grant does not survive a template copy or a restore.)
grant select, insert, update on projector_checkpoints to certplane_service;
grant select, insert, update on projector_dead_letters to certplane_service;
grant select, insert, update, delete on projector_status to certplane_service;
