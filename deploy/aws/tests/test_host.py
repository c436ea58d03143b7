"""deploy/aws/host/hello-birthday-aws.sh render-env: the env file and the
database URL credential an instance runs with, built from aws.conf and the
database secret. The AWS CLI is replaced by a script that prints a fixed
secret."""

import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import textwrap
import unittest
from collections.abc import Sequence
from urllib.parse import unquote, urlsplit

from cfn import AWS_DIR, ENVIRONMENTS, load_parameters

BUNDLE = AWS_DIR / "host" / "rds-ca-bundle.pem"

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
    def setUp(self) -> None:
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
        self.url_file = os.path.join(self.dir, "database-url")
        # The release as the user data unpacks it: the host bundle's CA file.
        self.release = os.path.join(self.dir, "release")
        os.makedirs(os.path.join(self.release, "deploy/aws/host"))
        shutil.copy(BUNDLE, os.path.join(self.release, "deploy/aws/host/rds-ca-bundle.pem"))
        self.ca_file = os.path.join(self.dir, "rds-ca.pem")
        # Any download would go through curl: record it and fail.
        with open(os.path.join(bindir, "curl"), "w") as f:
            f.write(f"#!/usr/bin/env bash\necho \"$*\" >>\"{self.dir}/curl.calls\"\nexit 7\n")
        os.chmod(os.path.join(bindir, "curl"), 0o755)
        with open(self.conf, "w") as f:
            f.write(CONF.replace("RELEASE_DIR=/opt/hello-birthday/releases/1.4.0", f"RELEASE_DIR={self.release}"))
        self.environ = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", HB_AWS_CONF=self.conf,
                            HB_ENV_FILE=self.env_file, HB_DATABASE_URL_FILE=self.url_file,
                            HB_STATE_DIR=os.path.join(self.dir, "state"),
                            HB_RDS_CA_FILE=self.ca_file)

    def render(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(SCRIPT), "render-env"], env=self.environ, capture_output=True, text=True,
                              timeout=60, check=False)

    def read_url(self) -> str:
        with open(self.url_file) as f:
            return f.read().rstrip("\n")

    def read_env(self) -> dict[str, str]:
        with open(self.env_file) as f:
            return dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line and not line.startswith("#"))

    def test_the_database_certificate_is_verified_against_the_rds_ca(self) -> None:
        self.assertEqual(self.render().returncode, 0)
        self.assertEqual(self.read_env()["DATABASE_CA_FILE"], self.ca_file)

    def test_the_rds_ca_comes_from_the_release_without_any_download(self) -> None:
        proc = self.render()
        self.assertEqual(proc.returncode, 0, proc.stderr)
        with open(self.ca_file, "rb") as a, open(BUNDLE, "rb") as b:
            self.assertEqual(a.read(), b.read())
        self.assertFalse(os.path.exists(os.path.join(self.dir, "curl.calls")), "the boot downloaded something")
        os.remove(os.path.join(self.release, "deploy/aws/host/rds-ca-bundle.pem"))
        os.remove(self.ca_file)
        proc = self.render()
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("RDS CA bundle missing from the release", proc.stderr)

    def test_database_url_carries_the_secret_percent_encoded_and_requires_tls(self) -> None:
        proc = self.render()
        self.assertEqual(proc.returncode, 0, proc.stderr)
        url = urlsplit(self.read_url())
        self.assertEqual((url.scheme, url.hostname, url.port, url.path, url.query),
                         ("postgres", "db.example.internal", 5432, "/hello_birthday", "sslmode=require"))
        assert url.username is not None and url.password is not None, "the URL carries the login"
        self.assertEqual((unquote(url.username), unquote(url.password)), ("hello_birthday", PASSWORD))
        self.assertNotIn(PASSWORD, proc.stdout + proc.stderr)

    def test_the_url_is_in_the_private_credential_file_not_in_the_env_file(self) -> None:
        # The unit's LoadCredential= reads the file; a DATABASE_URL in the
        # env file would win over it.
        self.assertEqual(self.render().returncode, 0)
        self.assertEqual(stat.S_IMODE(os.stat(self.url_file).st_mode), 0o600)
        self.assertTrue(self.read_url().startswith("postgres://"))
        with open(self.env_file) as f:
            env_text = f.read()
        self.assertNotIn("DATABASE_URL", env_text)
        self.assertNotIn(urlsplit(self.read_url()).password, env_text)

    def test_env_file_is_private_and_sets_the_deployment_values(self) -> None:
        self.assertEqual(self.render().returncode, 0)
        self.assertEqual(stat.S_IMODE(os.stat(self.env_file).st_mode), 0o600)
        env = self.read_env()
        self.assertEqual(
            {k: env[k] for k in ("RELEASE", "LOG_FORMAT", "DRAIN_SECONDS", "SHUTDOWN_TIMEOUT_SECONDS", "DB_POOL_SIZE",
                                 "PORT", "METRICS_PORT", "BIND_ADDR", "METRICS_BIND_ADDR")},
            {"RELEASE": "1.4.0", "LOG_FORMAT": "json", "DRAIN_SECONDS": "15", "SHUTDOWN_TIMEOUT_SECONDS": "10",
             "DB_POOL_SIZE": "12", "PORT": "5000", "METRICS_PORT": "9464",
             "BIND_ADDR": "0.0.0.0", "METRICS_BIND_ADDR": "0.0.0.0"})

    def test_other_settings_of_the_existing_file_survive_and_nothing_is_duplicated(self) -> None:
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
        # The earlier release's URL line is gone: the credential holds it.
        self.assertNotIn("DATABASE_URL", self.read_env())
        self.assertTrue(self.read_url().startswith("postgres://"))
        self.assertEqual(self.read_env()["DRAIN_SECONDS"], "15")

    def test_a_malformed_conf_line_is_refused_not_executed(self) -> None:
        with open(self.conf, "a") as f:
            f.write("$(touch pwned)\n")
        proc = self.render()
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("bad line", proc.stderr)
        self.assertFalse(os.path.exists(self.env_file))
        self.assertFalse(os.path.exists("pwned"))

    def test_a_missing_setting_is_named(self) -> None:
        with open(self.conf, "w") as f:
            f.write(CONF.replace("DB_HOST=db.example.internal\n", ""))
        proc = self.render()
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("DB_HOST is missing", proc.stderr)

    def test_help(self) -> None:
        proc = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, check=False)
        self.assertEqual(proc.returncode, 0)
        self.assertIn("bootstrap", proc.stdout)


class ShippedCaBundle(unittest.TestCase):
    def certificates(self) -> list[str]:
        text = BUNDLE.read_text()
        pems: list[str] = re.findall(r"-----BEGIN CERTIFICATE-----\n.*?-----END CERTIFICATE-----\n", text, re.S)
        return pems

    def subject(self, pem: str) -> str:
        return subprocess.run(["openssl", "x509", "-noout", "-subject"], input=pem, capture_output=True, text=True,
                              check=True).stdout

    def test_it_holds_the_roots_of_every_region_the_environments_use_and_none_expired(self) -> None:
        pems = self.certificates()
        self.assertGreater(len(pems), 10)
        for pem in pems:
            self.assertEqual(subprocess.run(["openssl", "x509", "-noout", "-checkend", "0"], input=pem,
                                            capture_output=True, text=True).returncode, 0, self.subject(pem))
        subjects = "".join(self.subject(p) for p in pems)
        for env in ENVIRONMENTS:
            for region in filter(None, (load_parameters(env)["region"], load_parameters(env).get("drRegion"))):
                # RDS's current CAs for new instances: rds-ca-rsa2048-g1 (default), rsa4096, ecc384.
                for kind in ("RSA2048 G1", "RSA4096 G1", "ECC384 G1"):
                    self.assertIn(f"Amazon RDS {region} Root CA {kind}", subjects, f"{env}: {region} {kind}")


ROTATION_CONF = CONF


class RotationRefresh(unittest.TestCase):
    """refresh after an alternating-users rotation: the previous login still
    works, so each instance takes the new one in its own slot, never two at
    once; a login that no longer works restarts at once."""

    OLD = {"username": "hello_birthday_app", "password": "old-pass"}
    NEW = {"username": "hello_birthday_app_clone", "password": "new-pass"}
    IDS = ("i-0aaa", "i-0bbb", "i-0ccc")

    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory(prefix="aws-refresh-")
        self.addCleanup(tmp.cleanup)
        self.dir = tmp.name
        bindir = os.path.join(self.dir, "bin")
        os.makedirs(bindir)
        self.write(os.path.join(bindir, "aws"), f"""\
            #!/usr/bin/env bash
            d={self.dir}
            case "$1 $2" in
              "secretsmanager get-secret-value")
                stage=AWSCURRENT
                while [ $# -gt 0 ]; do [ "$1" = --version-stage ] && stage=$2; shift; done
                [ -f "$d/$stage.json" ] || exit 254
                cat "$d/$stage.json" ;;
              "elbv2 describe-target-health")
                case "$*" in
                  *healthy*) cat "$d/healthy" ;;
                  *) cat "$d/all" ;;
                esac ;;
              *) exit 2 ;;
            esac
            """)
        self.write(os.path.join(bindir, "systemctl"), f"""\
            #!/usr/bin/env bash
            echo "$HB_INSTANCE_ID $*" >>{self.dir}/restarts
            """)
        release = os.path.join(self.dir, "release", "deploy/aws/host")
        os.makedirs(release)
        shutil.copy(BUNDLE, release)
        self.conf = os.path.join(self.dir, "aws.conf")
        with open(self.conf, "w") as f:
            f.write(CONF.replace("RELEASE_DIR=/opt/hello-birthday/releases/1.4.0",
                                 f"RELEASE_DIR={self.dir}/release") + "TARGET_GROUP_ARN=arn:aws:elasticloadbalancing:tg\n")
        self.path = f"{bindir}:{os.environ['PATH']}"

    def write(self, path: str, text: str) -> None:
        with open(path, "w") as f:
            f.write(textwrap.dedent(text))
        os.chmod(path, 0o755)

    def secrets(self, current: dict[str, str], previous: dict[str, str] | None = None) -> None:
        for stage, value in (("AWSCURRENT", current), ("AWSPREVIOUS", previous)):
            path = os.path.join(self.dir, f"{stage}.json")
            if value is None:
                if os.path.exists(path):
                    os.remove(path)
            else:
                with open(path, "w") as f:
                    f.write(json.dumps(value) + "\n")

    def targets(self, healthy: Sequence[str], all_ids: Sequence[str] = IDS) -> None:
        with open(os.path.join(self.dir, "healthy"), "w") as f:
            f.write("\t".join(healthy) + "\n")
        with open(os.path.join(self.dir, "all"), "w") as f:
            f.write("\t".join(all_ids) + "\n")

    def run_as(self, instance: str, command: str, now: int = 0) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, PATH=self.path, HB_AWS_CONF=self.conf, HB_INSTANCE_ID=instance, HB_NOW=str(now),
                   HB_ENV_FILE=os.path.join(self.dir, instance, "env"),
                   HB_DATABASE_URL_FILE=os.path.join(self.dir, instance, "database-url"),
                   HB_STATE_DIR=os.path.join(self.dir, instance, "state"),
                   HB_RDS_CA_FILE=os.path.join(self.dir, instance, "rds-ca.pem"))
        os.makedirs(os.path.join(self.dir, instance), exist_ok=True)
        return subprocess.run([str(SCRIPT), command], env=env, capture_output=True, text=True, timeout=60, check=False)

    def restarts(self) -> list[str]:
        path = os.path.join(self.dir, "restarts")
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return [line.split()[0] for line in f]

    def started_with_the_old_login(self) -> None:
        self.secrets(self.OLD)
        for i in self.IDS:
            self.assertEqual(self.run_as(i, "render-env").returncode, 0)
        self.secrets(self.NEW, self.OLD)
        self.targets(self.IDS)

    def test_no_two_instances_restart_in_the_same_slot_and_each_restarts_once_per_round(self) -> None:
        self.started_with_the_old_login()
        slot = 15 * 60
        by_slot = []
        for k in range(len(self.IDS)):
            before = len(self.restarts())
            for i in self.IDS:
                proc = self.run_as(i, "refresh", now=k * slot + 60)
                self.assertEqual(proc.returncode, 0, proc.stderr)
            by_slot.append(self.restarts()[before:])
        self.assertTrue(all(len(r) == 1 for r in by_slot), by_slot)
        self.assertEqual(sorted(r[0] for r in by_slot), sorted(self.IDS))

    def test_no_restart_while_another_target_is_unhealthy(self) -> None:
        self.started_with_the_old_login()
        self.targets(("i-0bbb",))  # i-0aaa and i-0ccc not healthy
        for k in range(3):
            for i in self.IDS:
                self.assertEqual(self.run_as(i, "refresh", now=k * 900 + 60).returncode, 0)
        self.assertEqual(self.restarts(), [])

    def test_a_login_that_no_longer_works_restarts_at_once_but_never_the_last_healthy(self) -> None:
        self.started_with_the_old_login()
        # Two rotations later: the login in use is neither current nor previous.
        self.secrets({"username": "hello_birthday_app", "password": "newer"}, self.NEW)
        self.assertEqual(self.run_as("i-0aaa", "refresh", now=60).returncode, 0)
        self.assertEqual(self.restarts(), ["i-0aaa"])
        self.targets(("i-0bbb",), all_ids=("i-0bbb",))
        self.assertEqual(self.run_as("i-0bbb", "refresh", now=60).returncode, 0)
        self.assertEqual(self.restarts(), ["i-0aaa"])

    def test_nothing_happens_without_a_rotation(self) -> None:
        self.secrets(self.OLD)
        self.targets(self.IDS)
        self.assertEqual(self.run_as("i-0aaa", "render-env").returncode, 0)
        proc = self.run_as("i-0aaa", "refresh")
        self.assertIn("unchanged", proc.stdout)
        self.assertEqual(self.restarts(), [])


if __name__ == "__main__":
    unittest.main()
