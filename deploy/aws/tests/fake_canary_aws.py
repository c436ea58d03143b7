#!/usr/bin/env python3
"""A scripted `aws` for the canary step (deploy/aws/canary.sh): CloudWatch
answers percentiles, which no emulator computes, so get-metric-data answers
come from recorded JSON, one per look ($FAKE_CANARY_METRICS: a JSON list; the
last one repeats). The canary group is healthy unless $FAKE_CANARY_UNHEALTHY
is set. Every call is appended to $FAKE_AWS_LOG (one JSON list per line); any
call not scripted here exits 2, so an unexpected call fails the test.
"""

import json
import os
import sys

OUTPUTS = {
    "LoadBalancerFullName": "app/hello-birthday-staging/50dc6c495c0c9188",
    "TargetGroupFullName": "targetgroup/hello-birthday-staging/73e2d6bc24d8a067",
    "CanaryTargetGroupFullName": "targetgroup/hello-b-Canar-1ABCDEF/943f017f100becff",
    "CanaryTargetGroupArn": "arn:aws:elasticloadbalancing:eu-west-1:111122223333:"
    "targetgroup/hello-b-Canar-1ABCDEF/943f017f100becff",
    "ServiceUrl": "https://hello.fake.example",
}


def opt(args, name):
    return args[args.index(name) + 1] if name in args else None


def main(argv):
    log_path = os.environ["FAKE_AWS_LOG"]
    logged = list(argv)
    # Change-set parameters come in a temporary file: log what it says.
    if "--parameters" in logged and logged[logged.index("--parameters") + 1].startswith("file://"):
        i = logged.index("--parameters") + 1
        with open(logged[i][len("file://"):]) as f:
            logged[i] = f.read()
    with open(log_path, "a") as log:
        log.write(json.dumps(logged) + "\n")
    args = argv[2:] if argv[:1] == ["--region"] else list(argv)
    cmd = args[:2]
    if cmd == ["cloudformation", "describe-stacks"]:
        query = opt(args, "--query") or ""
        if query == "Stacks[0]":
            print(json.dumps({"StackName": opt(args, "--stack-name"), "StackStatus": "UPDATE_COMPLETE"}))
        else:
            print(next(v for k, v in OUTPUTS.items() if f"'{k}'" in query))
    elif cmd == ["cloudformation", "create-change-set"]:
        print(f"arn:aws:cloudformation:eu-west-1:111122223333:changeSet/{opt(args, '--change-set-name')}/1")
    elif cmd == ["cloudformation", "describe-change-set"]:
        print(json.dumps({"Status": "CREATE_COMPLETE", "Changes": []}))
    elif cmd in (["cloudformation", "execute-change-set"], ["cloudformation", "wait"]):
        pass
    elif cmd == ["elbv2", "describe-target-health"]:
        print("0" if os.environ.get("FAKE_CANARY_UNHEALTHY") else "1")
    elif cmd == ["cloudwatch", "get-metric-data"]:
        answers = json.loads(os.environ["FAKE_CANARY_METRICS"])
        looks = sum(1 for line in open(log_path) if '"get-metric-data"' in line)
        print(json.dumps(answers[min(looks, len(answers)) - 1]))
    else:
        print(f"fake aws: unscripted call {argv}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
