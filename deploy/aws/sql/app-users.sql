-- The service's own database users, created once per database by an
-- administrator with the master login (deploy/aws/db-users.sh; runbook
-- docs/runbooks/aws-bootstrap.md). Idempotent: run again after a restore or
-- to reset the passwords from the app secret.
--
-- psql variables: db, owner, app, clone (names); the passwords come from the
-- environment (HB_APP_PASSWORD, HB_CLONE_PASSWORD: the app secret's current
-- and previous versions), never from the command line.
--
--   owner  NOLOGIN, owns the service's tables: what the migrations create
--          and alter. Nobody logs in as it.
--   app    the login of the secret (AppUsername), member of owner; every
--          session runs as owner (ALTER ROLE ... SET role), so a table a
--          migration creates belongs to owner, whichever login ran it.
--   clone  app's alternate (<app>_clone): the hosted multi-user rotation
--          (db-rotation.yaml) switches the secret between the two, and
--          grants clone app's rights exactly as done here (GRANT app TO clone).
--
-- Neither login is superuser, may create roles or databases, replicate or
-- bypass row security (off for a role a non-superuser master creates; only
-- a superuser could set them); they read and write, and migrate, their own
-- schema only.
\set ON_ERROR_STOP on
\getenv app_password HB_APP_PASSWORD
\getenv clone_password HB_CLONE_PASSWORD

SELECT format('CREATE ROLE %I NOLOGIN', :'owner')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'owner') \gexec
SELECT format('CREATE ROLE %I LOGIN', :'app')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'app') \gexec
SELECT format('CREATE ROLE %I LOGIN', :'clone')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'clone') \gexec

ALTER ROLE :"owner" NOLOGIN NOCREATEDB NOCREATEROLE;
ALTER ROLE :"app" LOGIN NOCREATEDB NOCREATEROLE PASSWORD :'app_password';
ALTER ROLE :"clone" LOGIN NOCREATEDB NOCREATEROLE PASSWORD :'clone_password';

-- The administrator becomes a member of owner to hand it the schema.
GRANT :"owner" TO CURRENT_USER;
GRANT :"owner" TO :"app";
GRANT :"app" TO :"clone";
ALTER ROLE :"app" SET role = :'owner';
ALTER ROLE :"clone" SET role = :'owner';

-- Only this database, and only through owner.
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"db" TO :"owner";
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
ALTER SCHEMA public OWNER TO :"owner";

-- Tables created before this ran (a database the service used to reach
-- as the master user) pass to owner.
SELECT format('ALTER TABLE public.%I OWNER TO %I', c.relname, :'owner')
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
   AND pg_get_userbyid(c.relowner) <> :'owner' \gexec
