-- The role the services run as. On the log it holds INSERT and SELECT only, so even a
-- compromised service cannot rewrite history; the trigger stops everyone else.
do $$
begin
    create role certplane_service login;
exception when duplicate_object or unique_violation then
    null;  -- created by another database's migration on this server
end $$;

grant usage on schema public to certplane_service;
revoke all on events from public;
grant select, insert on events to certplane_service;
grant select, update on log_head to certplane_service;
grant select, insert, delete on data_keys to certplane_service;
grant select on schema_migrations to certplane_service;
