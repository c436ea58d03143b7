"""Draw docs/images/architecture.png: the AWS production environment of
deploy/aws/templates, with AWS icons (the `diagrams` package, rendered by
graphviz `dot`).

Usage: .venv/bin/python deploy/aws/diagram.py [--out PATH_WITHOUT_EXTENSION]
"""

import argparse
import pathlib

from diagrams import Cluster, Diagram, Edge
from diagrams.aws.compute import EC2, EC2AutoScaling
from diagrams.aws.database import RDSPostgresqlInstance
from diagrams.aws.general import Users
from diagrams.aws.integration import SNS
from diagrams.aws.management import Cloudformation, Cloudwatch, CloudwatchAlarm, SystemsManager
from diagrams.aws.network import ElbApplicationLoadBalancer, Endpoint, NATGateway, Route53
from diagrams.aws.security import KMS, CertificateManager, SecretsManager
from diagrams.aws.storage import Backup, SimpleStorageServiceS3
from diagrams.onprem.ci import GithubActions
from diagrams.onprem.monitoring import Grafana, Prometheus

ROOT = pathlib.Path(__file__).resolve().parents[2]


def draw(out: pathlib.Path) -> None:
    graph = {"pad": "0.4", "nodesep": "0.5", "ranksep": "0.8", "fontsize": "20", "splines": "spline"}
    with Diagram("hello-birthday on AWS (production)", filename=str(out), outformat="png", show=False,
                 direction="TB", graph_attr=graph):
        users = Users("clients")
        dns = Route53("Route 53\nfailover alias + health checks")

        with Cluster("CI/CD"):
            pipeline = GithubActions("GitHub Actions\nci.yml / cd.yml")
            deploy = Cloudformation("deploy.sh --target aws\n6 stacks, change sets")

        with Cluster("Region eu-west-1"):
            cert = CertificateManager("ACM certificate")
            with Cluster("VPC 10.20.0.0/16"):
                alb = ElbApplicationLoadBalancer("ALB :443\nTLS 1.2+, 80 -> 443")
                with Cluster("AZ a"):
                    with Cluster("public"):
                        nat_a = NATGateway("NAT a")
                    with Cluster("private app"):
                        app_a = EC2("hello-birthday\n:5000 API, :9464 metrics")
                    with Cluster("isolated data"):
                        db_primary = RDSPostgresqlInstance("RDS primary")
                with Cluster("AZ b"):
                    with Cluster("public"):
                        nat_b = NATGateway("NAT b")
                    with Cluster("private app"):
                        app_b = EC2("hello-birthday\n:5000 API, :9464 metrics")
                    with Cluster("isolated data"):
                        db_standby = RDSPostgresqlInstance("RDS standby\n(Multi-AZ, sync)")
                asg = EC2AutoScaling("Auto Scaling group\nrolling, 1 at a time")
                s3_endpoint = Endpoint("S3 gateway\nendpoint")
                with Cluster("monitoring hosts"):
                    prometheus = Prometheus("Prometheus\n+ Alertmanager")
                    grafana = Grafana("Grafana")

            with Cluster("regional services"):
                secrets = SecretsManager("DB master secret\n(RDS-managed)")
                kms = KMS("environment key")
                buckets = SimpleStorageServiceS3("S3: artifacts,\nbackups, logs")
                cloudwatch = Cloudwatch("CloudWatch\nlogs, dashboard")
                alarms = CloudwatchAlarm("alarms\nSLO burn, hosts, DB")
                topic = SNS("alarm topic")
                vault = Backup("AWS Backup\ndaily")
                ssm = SystemsManager("Session Manager\n(no SSH)")

        with Cluster("Region eu-central-1 (DR)"):
            dr_vault = Backup("DR vault\nsnapshot copies")
            dr_backups = Backup("replicated automated\nbackups (PITR)")

        users >> dns >> Edge(label="HTTPS") >> alb
        cert - Edge(style="dotted") - alb
        alb >> Edge(label=":5000, health /readyz") >> [app_a, app_b]
        [app_a, app_b] >> Edge(label="TLS :5432") >> db_primary
        db_primary >> Edge(label="sync replication", style="dashed") >> db_standby
        prometheus >> Edge(label="scrape :9464", color="darkgreen") >> [app_a, app_b]
        grafana >> prometheus
        app_a >> Edge(style="dotted") >> nat_a
        app_b >> Edge(style="dotted") >> nat_b
        # The fleet's own dependencies, drawn once from the group.
        asg - Edge(style="dashed") - [app_a, app_b]
        asg >> Edge(label="release", style="dotted") >> s3_endpoint >> buckets
        asg >> Edge(label="DB password", style="dotted") >> secrets
        asg >> Edge(label="logs", style="dotted") >> cloudwatch
        ssm - Edge(style="dotted") - asg
        alb >> Edge(label="metrics", style="dotted") >> alarms >> topic
        db_primary >> Edge(label="snapshots") >> vault >> Edge(label="cross-Region copy") >> dr_vault
        db_primary >> Edge(label="backup replication\n(snapshots + logs)") >> dr_backups
        kms - Edge(style="dotted") - secrets
        pipeline >> deploy >> Edge(label="artifacts") >> buckets
        deploy >> Edge(label="AppVersion", style="bold") >> asg

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "images" / "architecture"),
                        help="output path without extension (default: docs/images/architecture)")
    args = parser.parse_args()
    draw(pathlib.Path(args.out))


if __name__ == "__main__":
    main()
