"""deploy/aws/host/hello-birthday-aws.sh render-env: the env file an
instance runs with, built from aws.conf and the database secret. The AWS CLI
is replaced by a script that prints a fixed secret."""

import os
import stat
import subprocess
import tempfile
import textwrap
import unittest
from urllib.parse import unquote, urlsplit

from cfn import AWS_DIR

SCRIPT = AWS_DIR / "host" / "hello-birthday-aws.sh"
PASSWORD = "p@ss:w/rd?#%&=+ x"  # every URL delimiter a generated password may hold

CONF = textwrap.dedent("""\
    # written by user data
    REGION=eu-west-1
    STACK_NAME=hello-birthday-staging-app
    APP_VERSION=1.4.0
    RELEASE_DIR=/opt/hello-birthday/releases/1.4.0
    DB_SECRET_ARN=arn:aws:secretsmanager:eu-west-1:111122223333:secret:rds!db-1
    DB_HOST=db.example.internal
    DB_PORT=5432
    DB_NAME=hello_birthday
    DB_POOL_SIZE=12
    SERVICE_PORT=5000
    METRICS_PORT=9464
    DRAIN_SECONDS=15
    SHUTDOWN_TIMEOUT_SECONDS=10
    REQUEST_TIMEOUT_SECONDS=5
    """)


class RenderEnv(unittest.TestCase):
    def setUp(self):
        tmp = tempfile.TemporaryDirectory(prefix="aws-host-")
        self.addCleanup(tmp.cleanup)
        self.dir = tmp.name
        bindir = os.path.join(self.dir, "bin")
        os.makedirs(bindir)
        fake = os.path.join(bindir, "aws")
        with open(fake, "w") as f:
            f.write(textwrap.dedent(f"""\
                #!/usr/bin/env bash
                # Fake AWS CLI: only the secret read is expected.
                echo "$*" >>"{self.dir}/aws.calls"
                [ "$1 $2" = "secretsmanager get-secret-value" ] || exit 2
                printf '%s\\n' '{{"username":"hello_birthday","password":"{PASSWORD}"}}'
                """))
        os.chmod(fake, 0o755)
        self.conf = os.path.join(self.dir, "aws.conf")
        self.env_file = os.path.join(self.dir, "env")
        # A bundle already in place: the script must not fetch it again.
        self.ca_file = os.path.join(self.dir, "rds-ca.pem")
        with open(self.ca_file, "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
        with open(self.conf, "w") as f:
            f.write(CONF)
        self.environ = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", HB_AWS_CONF=self.conf,
                            HB_ENV_FILE=self.env_file, HB_STATE_DIR=os.path.join(self.dir, "state"),
                            HB_RDS_CA_FILE=self.ca_file)

    def render(self):
        return subprocess.run([str(SCRIPT), "render-env"], env=self.environ, capture_output=True, text=True,
                              timeout=60, check=False)

    def read_env(self):
        with open(self.env_file) as f:
            return dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line and not line.startswith("#"))

    def test_the_database_certificate_is_verified_against_the_rds_ca(self):
        self.assertEqual(self.render().returncode, 0)
        self.assertEqual(self.read_env()["DATABASE_CA_FILE"], self.ca_file)

    def test_database_url_carries_the_secret_percent_encoded_and_requires_tls(self):
        proc = self.render()
        self.assertEqual(proc.returncode, 0, proc.stderr)
        url = urlsplit(self.read_env()["DATABASE_URL"])
        self.assertEqual((url.scheme, url.hostname, url.port, url.path, url.query),
                         ("postgres", "db.example.internal", 5432, "/hello_birthday", "sslmode=require"))
        self.assertEqual((unquote(url.username), unquote(url.password)), ("hello_birthday", PASSWORD))
        self.assertNotIn(PASSWORD, proc.stdout + proc.stderr)

    def test_env_file_is_private_and_sets_the_deployment_values(self):
        self.assertEqual(self.render().returncode, 0)
        self.assertEqual(stat.S_IMODE(os.stat(self.env_file).st_mode), 0o600)
        env = self.read_env()
        self.assertEqual(
            {k: env[k] for k in ("RELEASE", "LOG_FORMAT", "DRAIN_SECONDS", "SHUTDOWN_TIMEOUT_SECONDS", "DB_POOL_SIZE",
                                 "PORT", "METRICS_PORT")},
            {"RELEASE": "1.4.0", "LOG_FORMAT": "json", "DRAIN_SECONDS": "15", "SHUTDOWN_TIMEOUT_SECONDS": "10",
             "DB_POOL_SIZE": "12", "PORT": "5000", "METRICS_PORT": "9464"})

    def test_other_settings_of_the_existing_file_survive_and_nothing_is_duplicated(self):
        with open(self.env_file, "w") as f:
            f.write("# operator notes\nKEEPALIVE_SECONDS=75\nDATABASE_URL=sqlite:///var/lib/x.db\nDRAIN_SECONDS=5\n")
        self.assertEqual(self.render().returncode, 0)
        self.assertEqual(self.render().returncode, 0)  # twice: idempotent
        with open(self.env_file) as f:
            lines = f.read().splitlines()
        self.assertIn("# operator notes", lines)
        self.assertIn("KEEPALIVE_SECONDS=75", lines)
        keys = [line.split("=", 1)[0] for line in lines if "=" in line]
        self.assertEqual(len(keys), len(set(keys)), lines)
        self.assertTrue(self.read_env()["DATABASE_URL"].startswith("postgres://"))
        self.assertEqual(self.read_env()["DRAIN_SECONDS"], "15")

    def test_a_malformed_conf_line_is_refused_not_executed(self):
        with open(self.conf, "a") as f:
            f.write("$(touch pwned)\n")
        proc = self.render()
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("bad line", proc.stderr)
        self.assertFalse(os.path.exists(self.env_file))
        self.assertFalse(os.path.exists("pwned"))

    def test_a_missing_setting_is_named(self):
        with open(self.conf, "w") as f:
            f.write(CONF.replace("DB_HOST=db.example.internal\n", ""))
        proc = self.render()
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("DB_HOST is missing", proc.stderr)

    def test_help(self):
        proc = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, check=False)
        self.assertEqual(proc.returncode, 0)
        self.assertIn("bootstrap", proc.stdout)


if __name__ == "__main__":
    unittest.main()
