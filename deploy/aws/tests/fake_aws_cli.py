#!/usr/bin/env python3
"""A scripted stand-in for the `aws` command, for the outcomes an emulator
cannot produce: a stack that CloudFormation rolls back.

Every call is appended to $FAKE_AWS_LOG (one JSON list per line). Stacks whose
name ends with $FAKE_AWS_FAIL_SUFFIX fail their update wait and are then
reported as UPDATE_ROLLBACK_COMPLETE, with the failure events CloudFormation
gives for an instance that never signalled. Any call not scripted here exits
2, so an unexpected call fails the test.

FAKE_AWS_APP=noparams answers the app stack without its release parameters
(which release runs cannot be known); FAKE_AWS_RECORD is the content of the
deployment record deployments/<env>/previous.json (absent: 404). Uploaded
*.sha256 files are kept and read back. FAKE_AWS_EXEC_CHANGES=replace makes
change sets computed at execution (named exec-*) differ from planned ones.
"""

import json
import os
import sys

ARNS = "arn:aws:cloudwatch:eu-west-1:111122223333:alarm:fast-5xx,arn:aws:cloudwatch:eu-west-1:111122223333:alarm:fast-latency"
OUTPUTS = {
    "ArtifactsBucketName": "fake-artifacts",
    "RollbackTriggerAlarmArns": ARNS,
    "ServiceUrl": "https://hello.fake.example",
    "VaultArn": "arn:aws:backup:eu-central-1:111122223333:backup-vault:fake-dr",
    "ReplicationKeyArn": "arn:aws:kms:eu-central-1:111122223333:key/00000000-1111-2222-3333-444444444444",
    "HealthCheckId": "00000000-1111-2222-3333-444444444444",
}
PARAMETERS = {"AppVersion": "0.9.0", "ArtifactSha256": "a" * 64, "HostBundleSha256": "b" * 64}


def opt(args, name):
    return args[args.index(name) + 1] if name in args else None


def main(argv):
    # Parameter files are logged by content: target.sh deletes them after the call.
    logged = [open(a[len("file://"):]).read() if a.startswith("file://") and i and argv[i - 1] == "--parameters"
              else a for i, a in enumerate(argv)]
    with open(os.environ["FAKE_AWS_LOG"], "a") as log:
        log.write(json.dumps(logged) + "\n")
    state_path = os.environ["FAKE_AWS_LOG"] + ".state"
    state = json.load(open(state_path)) if os.path.exists(state_path) else {}
    args = list(argv)
    if args[:1] == ["--region"]:
        args = args[2:]
    stack = opt(args, "--stack-name") or ""
    fail = os.environ.get("FAKE_AWS_FAIL_SUFFIX", "\0")
    cmd = args[:2]
    if cmd == ["cloudformation", "describe-stacks"]:
        query = opt(args, "--query") or ""
        if query == "Stacks[0]":
            params = PARAMETERS
            if stack.endswith("-app") and os.environ.get("FAKE_AWS_APP") == "noparams":
                params = {}
            print(json.dumps({
                "StackName": stack,
                "StackStatus": state.get(stack, "UPDATE_COMPLETE"),
                "Parameters": [{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
            }))
        elif "Outputs" in query:
            print(next(v for k, v in OUTPUTS.items() if f"'{k}'" in query))
        else:
            return 2
    elif cmd == ["cloudformation", "create-change-set"]:
        print(f"arn:aws:cloudformation:eu-west-1:111122223333:changeSet/{opt(args, '--change-set-name')}/1")
    elif cmd == ["cloudformation", "describe-change-set"]:
        replacement = "False"
        if (opt(args, "--change-set-name") or "").startswith("exec-") and os.environ.get("FAKE_AWS_EXEC_CHANGES") == "replace":
            replacement = "True"
        print(json.dumps({"Status": "CREATE_COMPLETE", "ExecutionStatus": "AVAILABLE", "Changes": [{"ResourceChange": {
            "Action": "Modify", "LogicalResourceId": "LaunchTemplate", "ResourceType": "AWS::EC2::LaunchTemplate",
            "Replacement": replacement}}]}))
    elif cmd == ["cloudformation", "execute-change-set"]:
        pass
    elif cmd == ["cloudformation", "wait"]:
        if stack.endswith(fail):
            state[stack] = "UPDATE_ROLLBACK_COMPLETE"
            json.dump(state, open(state_path, "w"))
            print("Waiter StackUpdateComplete failed: Waiter encountered a terminal failure state", file=sys.stderr)
            return 255
    elif cmd == ["cloudformation", "describe-stack-events"]:
        print("AutoScalingGroup\tUPDATE_FAILED\tReceived 0 SUCCESS signal(s) out of 1. "
              "Unable to satisfy 100% MinSuccessfulInstancesPercent requirement")
    elif cmd == ["ssm", "get-parameter"]:
        print("ami-0123456789abcdef0")  # the newest Amazon Linux image
    elif cmd == ["cloudformation", "set-stack-policy"]:
        pass
    elif cmd == ["s3", "cp"]:
        if args[-1].endswith(".sha256") and args[-1].startswith("s3://"):
            with open(args[-2]) as f:
                state[args[-1]] = f.read().strip()
            json.dump(state, open(state_path, "w"))
        if args[-1] == "-":
            if args[-2].endswith("/previous.json") and os.environ.get("FAKE_AWS_RECORD"):
                print(os.environ["FAKE_AWS_RECORD"])
                return 0
            if args[-2] in state:
                print(state[args[-2]])
                return 0
            # Nothing published yet: what the CLI says for a missing key.
            print(f"fatal error: An error occurred (404) when calling the HeadObject operation: Key "
                  f"\"{args[-2].split('/', 3)[-1]}\" does not exist", file=sys.stderr)
            return 1
    else:
        print(f"fake aws: unscripted call {argv}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
