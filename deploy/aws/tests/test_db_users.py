"""The service's own database users on a real PostgreSQL: deploy/aws/db-users.sh
(with a scripted `aws` for the stack outputs and secrets) run as an
RDS-like master (CREATEROLE, CREATEDB, owner of the database, not
superuser), then the service's migrations as its login, the hosted
multi-user rotation's own SQL (ALTER USER <clone> WITH PASSWORD, after
GRANT <app> TO <clone>), and what either login may not do.

Run: .venv/bin/python -m unittest test_db_users   (from deploy/aws/tests)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import textwrap
import unittest
from typing import TypedDict

from cfn import AWS_DIR, ROOT

PG = ROOT / "scripts" / "pg-throwaway.sh"
DB_USERS = AWS_DIR / "db-users.sh"
MIGRATIONS = sorted((ROOT / "migrations" / "postgres").glob("*.sql"))
# The service's migration ledger (src/store/postgres.rs) before the migrations.
LEDGER = ("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
          "description TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
MASTER = {"username": "hello_birthday", "password": "master-pw-1"}


class Login(TypedDict, total=False):
    """as_app's login, when not the app's own first one."""

    user: str
    password: str


class DatabaseUsers(unittest.TestCase):
    tmp: str
    cluster: str
    port: int

    @classmethod
    def setUpClass(cls) -> None:
        if not shutil.which("psql"):
            raise AssertionError("psql missing: run scripts/setup.sh dev")
        cls.tmp = tempfile.mkdtemp(prefix="db-users-")
        os.chmod(cls.tmp, 0o755)
        cls.cluster = os.path.join(cls.tmp, "pg")
        out = subprocess.run([str(PG), "start", cls.cluster, "--user", "postgres", "--password", "super-pw",
                              "--auth-host", "scram-sha-256"], capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise AssertionError(out.stderr)
        url = out.stdout.strip().splitlines()[-1]
        cls.port = int(url.rsplit(":", 1)[1].split("/")[0])
        # An RDS master: not superuser; creates roles and owns its database.
        cls.sql("postgres", "super-pw", "postgres",
                f"CREATE ROLE {MASTER['username']} LOGIN CREATEROLE CREATEDB PASSWORD '{MASTER['password']}'")
        cls.sql("postgres", "super-pw", "postgres", f"CREATE DATABASE hello_birthday OWNER {MASTER['username']}")

    @classmethod
    def tearDownClass(cls) -> None:
        subprocess.run([str(PG), "destroy", cls.cluster], capture_output=True, timeout=60)
        shutil.rmtree(cls.tmp, ignore_errors=True)

    @classmethod
    def sql(cls, user: str, password: str, db: str, statement: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(cls.port),
                              "-U", user, "-d", db, "-c", statement],
                             env=dict(os.environ, PGPASSWORD=password, PGSSLMODE="disable"),
                             capture_output=True, text=True, timeout=60)
        if check and out.returncode != 0:
            raise AssertionError(f"{user}: {statement}: {out.stderr}")
        return out

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="db-users-aws-")
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.secrets({"username": "hello_birthday_app", "password": "app-pw-1"})
        with open(os.path.join(self.dir, "aws"), "w") as f:
            f.write(textwrap.dedent(f"""\
                #!/usr/bin/env python3
                import json, sys
                d = {json.dumps(self.dir)}
                a = sys.argv[1:]
                if "describe-stacks" in a:
                    key = a[a.index("--query") + 1].split("'")[1]
                    print({{"MasterUserSecretArn": "arn:master", "AppUserSecretArn": "arn:app",
                            "DatabaseName": "hello_birthday", "EndpointAddress": "db.internal"}}[key])
                elif "get-secret-value" in a:
                    arn, stage = a[a.index("--secret-id") + 1], a[a.index("--version-stage") + 1]
                    secrets = json.load(open(d + "/secrets.json"))
                    if arn == "arn:master":
                        print(json.dumps({json.dumps(MASTER)}))
                    elif stage in secrets:
                        print(json.dumps(secrets[stage]))
                    else:
                        sys.exit(254)
                elif "tag-resource" in a:
                    with open(d + "/tags", "a") as f:
                        f.write(a[a.index("--secret-id") + 1] + " " + a[a.index("--tags") + 1] + "\\n")
                else:
                    sys.exit(2)
                """))
        os.chmod(os.path.join(self.dir, "aws"), 0o755)

    def secrets(self, current: dict[str, str], previous: dict[str, str] | None = None) -> None:
        with open(os.path.join(self.dir, "secrets.json"), "w") as f:
            json.dump({"AWSCURRENT": {**current, "engine": "postgres"},
                       **({"AWSPREVIOUS": {**previous, "engine": "postgres"}} if previous else {})}, f)

    def bootstrap(self) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([str(DB_USERS), "--env", "production", "--host", "127.0.0.1", "--port", str(self.port)],
                             env=dict(os.environ, AWS_CLI=os.path.join(self.dir, "aws"), PGSSLMODE="disable"),
                             capture_output=True, text=True, timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertNotIn("app-pw", out.stdout + out.stderr)
        return out

    def as_app(self, statement: str, password: str = "app-pw-1", user: str = "hello_birthday_app",
               check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.sql(user, password, "hello_birthday", statement, check=check)

    def test_1_the_service_migrates_and_serves_as_its_own_login(self) -> None:
        # A table the service made while it still logged in as the master.
        self.sql(MASTER["username"], MASTER["password"], "hello_birthday", "CREATE TABLE legacy (x int)")
        self.bootstrap()
        self.bootstrap()  # idempotent
        # Once done, the app secret says so: the deploy waits for this tag
        # before a first app stack.
        with open(os.path.join(self.dir, "tags")) as f:
            tagged = f.read().splitlines()
        self.assertEqual(len(tagged), 2)
        self.assertTrue(all(line.startswith("arn:app Key=db-users,Value=20") for line in tagged), tagged)
        self.as_app(LEDGER)
        for path in MIGRATIONS:
            self.as_app(path.read_text())
        self.as_app("INSERT INTO users (username, date_of_birth) VALUES ('Alice', '1990-02-28')")
        self.assertEqual(self.as_app("SELECT current_user").stdout.strip(), "hello_birthday_app_owner")
        owners = self.sql(MASTER["username"], MASTER["password"], "hello_birthday",
                          "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class c JOIN pg_namespace n "
                          "ON n.oid = c.relnamespace WHERE nspname = 'public' AND relkind = 'r'").stdout.split()
        self.assertEqual(owners, ["hello_birthday_app_owner"])

    def test_2_a_rotation_switches_logins_without_breaking_the_open_connection(self) -> None:
        self.bootstrap()
        self.as_app(LEDGER)
        session = subprocess.Popen(["psql", "-X", "-At", "-h", "127.0.0.1", "-p", str(self.port), "-U",
                                    "hello_birthday_app", "-d", "hello_birthday"],
                                   env=dict(os.environ, PGPASSWORD="app-pw-1", PGSSLMODE="disable"),
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.addCleanup(session.kill)
        assert session.stdin is not None  # stdin=PIPE
        session.stdin.write("SELECT 'before', count(*) FROM schema_migrations;\n")
        session.stdin.flush()
        # What the hosted PostgreSQLMultiUser function runs with the master
        # login on the first rotation (the clone exists: ALTER, not CREATE).
        self.sql(MASTER["username"], MASTER["password"], "hello_birthday",
                 "ALTER USER hello_birthday_app_clone WITH PASSWORD 'clone-pw-2'")
        self.secrets({"username": "hello_birthday_app_clone", "password": "clone-pw-2"},
                     {"username": "hello_birthday_app", "password": "app-pw-1"})
        # The new login works and may migrate; the previous one still works.
        clone: Login = {"user": "hello_birthday_app_clone", "password": "clone-pw-2"}
        self.as_app("CREATE TABLE IF NOT EXISTS made_by_clone (x int)", **clone)
        self.as_app("ALTER TABLE made_by_clone ADD COLUMN y int")  # the other login alters it
        self.as_app("ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS note text", **clone)
        self.assertEqual(self.as_app("SELECT current_user", **clone).stdout.strip(), "hello_birthday_app_owner")
        session.stdin.write("SELECT 'after', count(*) FROM schema_migrations;\n\\q\n")
        session.stdin.flush()
        out, err = session.communicate(timeout=30)
        self.assertEqual(session.returncode, 0, err)
        self.assertEqual([line.split("|")[0] for line in out.split()], ["before", "after"])
        # The second rotation changes the first login's password: the bootstrap,
        # run again (after a restore), sets both from the secret's two versions.
        self.bootstrap()
        self.as_app("SELECT 1", **clone)
        self.as_app("SELECT 1")

    def test_3_neither_login_may_do_more(self) -> None:
        self.bootstrap()
        logins: tuple[Login, ...] = ({}, {"user": "hello_birthday_app_clone", "password": "clone-pw-2"})
        for login in logins:
            if login:
                self.sql(MASTER["username"], MASTER["password"], "hello_birthday",
                         "ALTER USER hello_birthday_app_clone WITH PASSWORD 'clone-pw-2'")
            for statement in ("CREATE ROLE intruder LOGIN", "CREATE DATABASE other",
                              "ALTER ROLE hello_birthday PASSWORD 'x'", "SELECT rolpassword FROM pg_authid",
                              f"ALTER ROLE {login.get('user', 'hello_birthday_app')} CREATEROLE",
                              "SET ROLE hello_birthday", "ALTER DATABASE hello_birthday RENAME TO other",
                              "COPY (SELECT 1) TO '/tmp/x'"):
                self.assertNotEqual(self.as_app(statement, check=False, **login).returncode, 0, statement)
            flags = self.as_app("SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls "
                                "FROM pg_roles WHERE rolname = session_user", **login).stdout.strip()
            self.assertEqual(flags, "f|f|f|f|f")
        # An unknown clone password until the first rotation: nobody logs in.
        self.secrets({"username": "hello_birthday_app", "password": "app-pw-1"})
        self.bootstrap()
        self.assertNotEqual(self.as_app("SELECT 1", user="hello_birthday_app_clone", password="clone-pw-2",
                                        check=False).returncode, 0)


if __name__ == "__main__":
    unittest.main()
