-- Signed tree heads (RFC 9162-style checkpoints) written by the sealer projector: statements
-- signed with a key kept outside the database, so they are facts, not a derived view. A
-- rebuild adds the ones it lacks and never replaces one (a different root at a size already
-- signed means the log was rewritten: the sealer stops on it).
create table audit_tree_heads (
    size        bigint      primary key check (size > 0),
    root_hash   bytea       not null,
    signed_at   timestamptz not null,
    key_id      text        not null,
    public_key  bytea       not null,
    signature   bytea       not null
);
grant select, insert on audit_tree_heads to certplane_service;
